#!/usr/bin/env python3
"""Measure `pvc serve` side by side with the HTTP ceiling of its own server stack, in one run.

The ceiling is a hello-world Bottle app (one constant JSON body) on the cheroot server class of
`pvc serve` (pvc.server.run._Server: the same connection handling, the same worker threads, the
same limits, read from the same configuration file), started by this script as a subprocess of
its own. For each store engine (the embedded SQLite file, and a throwaway ZooKeeper on loopback)
it fills one cluster per number of VMs (3 ready nodes and 1,000 or 10,000 VMs, as bench_vms.py
fills them: 100 VMs per commit), starts `pvc serve --no-agent` on it as a real subprocess, and
measures:

- GET /api/v1/node under load, 8 keep-alive connections and 1, as a share of the ceiling's
  requests per second measured the same way in the same run (`wrk` when installed, else a client
  of this script's own: keep-alive HTTP/1.1 over raw sockets, one process per core);
- GET /api/v1/vm (the whole list) p50/p90 over one keep-alive connection, at each size;
- GET /api/v1/vm/<vm> and POST /api/v1/vm/<vm>/state p50 over one keep-alive connection;
- the memory of the `pvc serve` process (VmRSS, VmHWM from /proc/<pid>/status) once it has
  served the list of the biggest cluster.

It prints the issue's table (issue 10) with this run's figures, then the details. Measured, not
asserted (DESIGN.md, "Performance design"): it exits 0, and fails only when something does not
work at all. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import selectors
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import quote as urlquote

from common import (  # beside this script; it puts the repository on sys.path first
    ENGINES,
    PVC,
    Connection,
    Server,
    Stores,
    code_version,
    engines,
    machine_line,
    percentile,
    process_memory,
    quiet_logs,
)

SCRIPT = os.path.abspath(__file__)
NODE_PATH = "/api/v1/node"
#: The ceiling's answer to every request: a small constant JSON document.
HELLO = b'{"message": "hello, world"}'
#: The hidden roles this script plays as its own subprocesses (see main()).
ROLES = ("_hello", "_canned", "_load")
#: The issue's goals, printed beside the figures.
GOALS = {
    "c8": "≥ 60 % on both engines",
    "c1": "≥ 70 %",
    "list_small": "≤ 10 ms",
    "list_big": "≤ 100 ms",
    "one": "no worse",
    "memory": "measured, and ≤ 250 MB RSS",
}


# --- the subprocesses: the ceiling, the client's own ceiling, the load client --------------------


def announce(host: str, port: int) -> None:
    """The line common.Server waits for."""
    print(f"Listening on http://{host}:{port}/api/v1", flush=True)


def hello_server(config: str, plain: bool) -> int:
    """Serve HELLO for every GET on pvc serve's server class (or cheroot's own with ``plain``),
    with the worker threads and limits of ``config``, until SIGTERM."""
    import bottle
    from cheroot import wsgi

    from pvc.lib.config import load_settings
    from pvc.server import run

    settings = load_settings(config, os.environ).replace(listen_address="127.0.0.1", listen_port=0)
    app = bottle.Bottle()

    @app.get("/<path:path>")
    def hello(path: str) -> bytes:
        bottle.response.content_type = "application/json"
        return HELLO

    if plain:
        server = wsgi.Server(("127.0.0.1", 0), app, numthreads=settings.threads, max=settings.threads,
                             server_name="hello")
        server.prepare()
    else:
        server = run._Server(settings, app)
        server.max_request_body_size = run.MAX_BODY + run.DRAIN
        server.prepare()
    run.serve_forever(server, lambda: None, on_ready=lambda: announce(*server.bind_addr[:2]))
    return 0


def canned_server() -> int:
    """A single-threaded socket server answering every request with one constant response, with
    no HTTP parsing beyond counting request ends: what the load client manages at most."""
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(HELLO), HELLO))
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    announce(*listener.getsockname()[:2])
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ, b"")
                pending[conn] = b""
                continue
            conn = key.fileobj  # type: ignore[assignment]
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                pending.pop(conn, None)
                conn.close()
                continue
            buf = pending[conn] + data
            ends = buf.count(b"\r\n\r\n")
            pending[conn] = buf[buf.rfind(b"\r\n\r\n") + 4:] if ends else buf
            if ends:
                conn.sendall(response * ends)


def load_worker(host: str, port: int, path: str, conns: int, duration: float) -> int:
    """Keep ``conns`` keep-alive connections busy with GET ``path`` for ``duration`` seconds, one
    request in flight on each; print the latencies (µs) and the CPU time used as JSON.

    Connects, prints "ready", then waits for the start time (an absolute time.time()) on stdin,
    so that every worker of one measurement starts at once, after its Python has started."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench_http\r\n\r\n".encode()
    socks = []
    for _ in range(conns):
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list] = {}  # socket: [buffer, sent at]
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + duration
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        state[s] = [b"", time.perf_counter()]
        s.sendall(request)
    latencies: list[int] = []
    errors: dict[str, int] = {}
    while True:
        now = time.perf_counter()
        if now >= end or not state:
            break
        for key, _ in sel.select(timeout=end - now):
            s = key.fileobj
            entry = state[s]  # type: ignore[index]
            try:
                data = s.recv(262144)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError as e:
                data, errors[type(e).__name__] = b"", errors.get(type(e).__name__, 0) + 1
            if not data:
                errors["closed"] = errors.get("closed", 0) + 1
                sel.unregister(s)
                del state[s]  # type: ignore[arg-type]
                continue
            buf = entry[0] + data
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                entry[0] = buf
                continue
            head = buf[:head_end].decode("latin-1").lower()
            match = re.search(r"\r\ncontent-length:\s*(\d+)", head)
            length = int(match.group(1)) if match else 0
            if len(buf) < head_end + 4 + length:
                entry[0] = buf
                continue
            done = time.perf_counter()
            status = head[9:12]
            if status != "200":
                errors[status] = errors.get(status, 0) + 1
            if "\r\nconnection: close" in head:
                errors["connection: close"] = errors.get("connection: close", 0) + 1
            latencies.append(int((done - entry[1]) * 1e6))
            entry[0], entry[1] = buf[head_end + 4 + length:], time.perf_counter()
            s.sendall(request)  # type: ignore[union-attr]
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for s in socks:
        s.close()
    print(json.dumps({"latencies_us": latencies, "elapsed": elapsed, "cpu": cpu, "errors": errors}), flush=True)
    return 0


# --- load ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Load:
    """One load measurement: requests per second and latency under ``connections`` clients."""

    target: str
    connections: int
    rps: float
    p50: float  # ms
    p90: float
    p99: float
    requests: int
    client_cores: float  # CPU used by the client, in cores (1.0 = one core busy all along)
    server_cores: float  # CPU used by the server process, in cores
    errors: str = ""  # answers other than 200, and socket errors, as the client reports them


#: Share of failed requests (not 200, or a socket error) beyond which a load measurement is an
#: error rather than a figure. A few happen now and then with wrk on the ceiling too: they are shown.
MAX_ERRORS = 0.001


def check_errors(target: str, server: Server, failed: int, requests: int, detail: str) -> str:
    if failed > MAX_ERRORS * max(requests, 1):
        raise RuntimeError(f"{target}: {failed} of {requests} requests failed ({detail}); "
                           f"the server's log ends:\n{server.log_tail()}")
    return detail if failed else ""


WRK_LATENCY = re.compile(r"^\s*(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk_load(server: Server, connections: int, seconds: int, target: str) -> Load:
    url = f"http://{server.host}:{server.port}{NODE_PATH}"
    argv = ["wrk", f"-c{connections}", f"-t{min(connections, 2)}", f"-d{seconds}s", "--latency", url]
    cpu0, server_cpu0, t0 = children_cpu(), cpu_seconds(server.pid), time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    elapsed = time.perf_counter() - t0
    client, server_cpu = children_cpu() - cpu0, cpu_seconds(server.pid) - server_cpu0
    out = result.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if result.returncode != 0 or not rps or not total:
        raise RuntimeError(f"{' '.join(argv)} failed: {out}{result.stderr}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    detail = ", ".join(line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line)
    errors = check_errors(target, server, failed, int(total.group(1)), detail)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    lat = {p: float(v) * scale[u] for p, v, u in WRK_LATENCY.findall(out)}
    return Load(target, connections, float(rps.group(1)), lat.get("50", 0.0), lat.get("90", 0.0), lat.get("99", 0.0),
                int(total.group(1)), client / elapsed, server_cpu / elapsed, errors)


def python_load(server: Server, connections: int, seconds: float, target: str) -> Load:
    """This script's own client: one worker process per core (at most one per connection), the
    connections spread over them."""
    workers = max(1, min(connections, os.cpu_count() or 1))
    shares = [connections // workers + (i < connections % workers) for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, SCRIPT, "_load", server.host, str(server.port), NODE_PATH, str(n),
                               str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n in shares]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a load worker against {target} did not start")
        start_at = time.time() + 0.05
        server_cpu0 = cpu_seconds(server.pid)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start_at}\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            results.append(json.loads(out))
        server_cpu = cpu_seconds(server.pid) - server_cpu0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    latencies = [us / 1000 for r in results for us in r["latencies_us"]]
    if not latencies:
        raise RuntimeError(f"{target}: no request answered in {seconds} s ({errors})")
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
    # "closed" and "connection: close" end a connection; a status other than 200 is counted in latencies too.
    failed = sum(errors.values())
    detail = check_errors(target, server, failed, len(latencies), detail)
    elapsed = max(r["elapsed"] for r in results)
    return Load(target, connections, len(latencies) / elapsed, percentile(latencies, 50), percentile(latencies, 90),
                percentile(latencies, 99), len(latencies), sum(r["cpu"] for r in results) / elapsed,
                server_cpu / (seconds + 0.05), detail)


# --- the clusters -------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one `pvc serve` on one cluster measured."""

    engine: str
    vms: int
    fill_s: float
    loads: dict[int, Load] = field(default_factory=dict)  # connections: the GET /node load
    ceiling: dict[int, list[Load]] = field(default_factory=dict)  # connections: the ceiling just before and after
    samples: dict[str, list[float]] = field(default_factory=dict)  # measure: ms per request
    memory: dict[str, dict[str, int]] = field(default_factory=dict)  # when: /proc/<pid>/status figures
    list_bytes: int = 0


def measure_cluster(setup, figures: Figures, args: argparse.Namespace, rng: random.Random,
                    load_fn, hello: Server | None) -> None:
    """Start `pvc serve --no-agent` on a filled cluster (bench_vms.Setup) and measure it; with the
    ``hello`` server, also GET /api/v1/node under load, each load between two of the ceiling."""
    label = f"{setup.engine}, {setup.vms:,} VMs"
    with Server(setup.config, setup.directory, args=["--no-agent"], log_name=f"serve-{setup.vms}.log") as server:
        figures.memory["started"] = process_memory(server.pid)
        with Connection(server) as conn:
            nodes = json.loads(conn.request("GET", NODE_PATH))
            if len(nodes) != setup.nodes:
                raise RuntimeError(f"{label}: GET {NODE_PATH} answered {len(nodes)} nodes, not {setup.nodes}")
            for _ in range(100):  # warm-up of the node route
                conn.request("GET", NODE_PATH)
        if hello is not None:
            # The ceiling right before and right after each load, so that both see the same
            # machine: other work on it comes and goes over a run.
            for c in (8, 1):
                what = f"{c} connection{'s' if c > 1 else ''}, {args.seconds} s"
                progress(f"[{label}] the ceiling, GET {NODE_PATH}, the ceiling; {what} each ...")
                before = load_fn(hello, c, args.seconds, f"hello-world ceiling (before {setup.engine})")
                figures.loads[c] = load_fn(server, c, args.seconds, f"pvc serve ({setup.engine})")
                after = load_fn(hello, c, args.seconds, f"hello-world ceiling (after {setup.engine})")
                figures.ceiling[c] = [before, after]
            figures.memory["loaded"] = process_memory(server.pid)
        with Connection(server) as conn:
            ms, body = conn.timed("GET", "/api/v1/vm")  # the first list of this server
            listed = json.loads(body)
            if len(listed) != setup.vms:
                raise RuntimeError(f"{label}: GET /api/v1/vm answered {len(listed)} VMs, not {setup.vms}")
            figures.list_bytes = len(body)
            figures.samples["list_first"] = [ms]
            count = args.list_requests or (20 if args.quick else max(15, min(50, 100_000 // setup.vms)))
            progress(f"[{label}] GET /api/v1/vm x {count} ...")
            for _ in range(max(2, count // 10)):
                conn.request("GET", "/api/v1/vm")
            figures.samples["list"] = [conn.timed("GET", "/api/v1/vm")[0] for _ in range(count)]
            figures.memory["listed"] = process_memory(server.pid)

            def one(name: str) -> float:
                ms, body = conn.timed("GET", f"/api/v1/vm/{urlquote(name)}")
                if json.loads(body)[0]["name"] != name:
                    raise RuntimeError(f"{label}: GET /api/v1/vm/{name} answered another VM")
                return ms

            progress(f"[{label}] GET /api/v1/vm/<vm> and POST .../state x {args.requests} ...")
            for _ in range(20):
                one(rng.choice(setup.names))
            figures.samples["one"] = [one(rng.choice(setup.names)) for _ in range(args.requests)]
            # Stop a running VM, then start it again: every request writes, and the cluster ends
            # as it began (as bench_vms.py does).
            posts = []
            for i in range(args.requests + 2):
                if i % 2 == 0:
                    name, state = rng.choice(setup.running), "stop"
                else:
                    state = "start"
                ms, body = conn.timed("POST", f"/api/v1/vm/{urlquote(name)}/state", form=f"state={state}")
                if "nothing changed" in body.decode():
                    raise RuntimeError(f"{label}: POST state={state} to {name} wrote nothing: {body!r}")
                if i >= 2:
                    posts.append(ms)
            figures.samples["state"] = posts
        figures.memory["end"] = process_memory(server.pid)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the report ---------------------------------------------------------------------------------


def mib(kb: int) -> str:
    return f"{kb / 1024:.0f} MiB"


def report(figs: list[Figures], ceilings: dict[str, list[Load]], client_ceiling: dict[int, Load],
           client: str, args: argparse.Namespace, command: str, elapsed: float, fills: list[str]) -> list[str]:
    engine_names = [e for e in ("embedded", "zookeeper") if any(f.engine == e for f in figs)]
    titles = {"embedded": "embedded", "zookeeper": "ZooKeeper"}
    sizes = sorted({f.vms for f in figs})
    small, big = sizes[0], sizes[-1]

    def fig(engine: str, vms: int) -> Figures | None:
        return next((f for f in figs if f.engine == engine and f.vms == vms), None)

    def ceiling_rps(f: Figures, c: int) -> float:
        return statistics.fmean(load.rps for load in f.ceiling[c])

    def pct(engine: str, c: int) -> str:
        f = fig(engine, small)
        if f is None or c not in f.loads:
            return "—"
        return f"{100 * f.loads[c].rps / ceiling_rps(f, c):.0f} % ({f.loads[c].rps:,.0f} of {ceiling_rps(f, c):,.0f} req/s)"

    def p50_90(engine: str, vms: int, key: str) -> str:
        f = fig(engine, vms)
        if f is None or key not in f.samples:
            return "—"
        s = f.samples[key]
        return f"p50 {percentile(s, 50):.1f} ms, p90 {percentile(s, 90):.1f} ms"

    def one_state(engine: str) -> str:
        f = fig(engine, small)
        if f is None:
            return "—"
        return (f"p50 {percentile(f.samples['one'], 50):.2f} ms / {percentile(f.samples['state'], 50):.2f} ms")

    def memory(engine: str) -> str:
        f = fig(engine, big)
        if f is None:
            return "—"
        m = f.memory["listed"]
        return f"VmRSS {mib(m['VmRSS'])} (VmHWM {mib(m['VmHWM'])})"

    load_word = (f"`wrk -c8 -t2 -d{args.seconds}s`" if client == "wrk"
                 else f"own client, 8 connections, {args.seconds} s")
    rows = [
        (f"`GET /api/v1/node`, 3 nodes, 8 keep-alive clients ({load_word})", lambda e: pct(e, 8), GOALS["c8"]),
        ("the same, 1 client", lambda e: pct(e, 1), GOALS["c1"]),
        (f"`GET /api/v1/vm`, {small:,} VMs, one keep-alive connection", lambda e: p50_90(e, small, "list"),
         GOALS["list_small"] if small == 1000 else "—"),
    ]
    if big != small:
        rows.append((f"`GET /api/v1/vm`, {big:,} VMs", lambda e: p50_90(e, big, "list"),
                     GOALS["list_big"] if big == 10000 else "—"))
    rows += [
        (f"`GET /api/v1/vm/<vm>`, `POST .../state` ({small:,} VMs)", one_state, GOALS["one"]),
        (f"`pvc serve` memory at {big:,} VMs, after serving the list", memory,
         GOALS["memory"] if big == 10000 else "—"),
    ]
    out = [
        f"\n## `pvc serve` against the HTTP ceiling: {machine_line()}\n",
        f"command: `{command}` ({elapsed:.0f} s); code: {code_version()}; load average (1 min) "
        f"{args.load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n",
        "| measure | " + " | ".join(titles[e] for e in engine_names) + " | goal |",
        "|---|" + "---|" * len(engine_names) + "---|",
    ]
    for title, cell, goal in rows:
        out.append(f"| {title} | " + " | ".join(cell(e) for e in engine_names) + f" | {goal} |")

    out += [
        "",
        f"The ceiling: a hello-world Bottle app (a constant {len(HELLO)}-byte JSON body) on `pvc serve`'s cheroot "
        f"server class (`pvc.server.run._Server`, {args.threads} worker threads, the same limits), started by this "
        "script as a process of its own; measured right before and right after each `pvc serve` load, the mean "
        f"of the two taken as 100 %. Load client: {client_description(client)}.",
        "",
        "### Load, `GET /api/v1/node` (3 nodes)\n",
        "| server | connections | req/s | of the ceiling | p50 ms | p90 ms | p99 ms | server CPU (cores) | "
        "client CPU (cores) | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def load_row(load: Load, share: str) -> str:
        return (f"| {load.target} | {load.connections} | {load.rps:,.0f} | {share} | {load.p50:.2f} | {load.p90:.2f} | "
                f"{load.p99:.2f} | {load.server_cores:.2f} | {load.client_cores:.2f} | {load.errors or '—'} |")

    for c in (8, 1):
        for load in client_ceiling.values():
            if load.connections == c:
                out.append(load_row(load, "—"))
        first = next((f for f in figs if c in f.loads), None)
        for load in ceilings.get("plain", []):
            if load.connections == c and first is not None:
                out.append(load_row(load, f"{100 * load.rps / ceiling_rps(first, c):.0f} %"))
        for f in figs:
            if c in f.loads:
                before, after = f.ceiling[c]
                out.append(load_row(before, "100 %"))
                out.append(load_row(f.loads[c], f"**{100 * f.loads[c].rps / ceiling_rps(f, c):.0f} %**"))
                out.append(load_row(after, "100 %"))
    out += [
        "",
        "Rows in the order measured within each number of connections: the client's own ceiling (a "
        "single-threaded socket server answering one canned response, no HTTP parsing), the hello-world app on "
        "cheroot's own `wsgi.Server` with the same threads (without `pvc serve`'s connection handling; compared "
        "with the first engine's ceiling), then per engine the ceiling, `pvc serve`, the ceiling (\"100 %\": "
        "their mean is the 100 % of the `pvc serve` row between them). CPU: seconds of CPU per second of the "
        "run, all threads (1.00 = one core busy; the server's Python code runs one thread at a time).",
        "",
        "### One keep-alive connection (ms)\n",
        "| engine | VMs | measure | n | p50 | p90 | p99 |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    names = {"list_first": "`GET /api/v1/vm`, first of the server", "list": "`GET /api/v1/vm`",
             "one": "`GET /api/v1/vm/<vm>`", "state": "`POST /api/v1/vm/<vm>/state`"}
    for f in figs:
        for key, title in names.items():
            s = f.samples.get(key)
            if s:
                out.append(f"| {titles[f.engine]} | {f.vms:,} | {title} | {len(s)} | {percentile(s, 50):.2f} | "
                           f"{percentile(s, 90):.2f} | {percentile(s, 99):.2f} |")
    out += [
        "",
        "### `pvc serve` memory (/proc/<pid>/status)\n",
        "| engine | VMs | list size | VmRSS at start | after the node load | after the lists | at the end | "
        "VmHWM at the end | threads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figs:
        m = f.memory
        out.append(f"| {titles[f.engine]} | {f.vms:,} | {f.list_bytes / 1e6:.1f} MB | {mib(m['started']['VmRSS'])} | "
                   f"{mib(m['loaded']['VmRSS']) if 'loaded' in m else '—'} | {mib(m['listed']['VmRSS'])} | {mib(m['end']['VmRSS'])} | {mib(m['end']['VmHWM'])} | "
                   f"{m['end']['Threads']} |")
    out += ["", "Filling (3 ready nodes, then 100 VMs per store commit): " + "; ".join(fills) + "."]
    return out


def client_description(client: str) -> str:
    if client == "wrk":
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
        return f"`{version or 'wrk'}` (`-t2` for 8 connections, `-t1` for 1)"
    return (f"this script's own (keep-alive HTTP/1.1 over raw sockets, one request in flight per connection, "
            f"{min(8, os.cpu_count() or 1)} worker processes for 8 connections, 1 for 1)")


# --- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:  # this script as its own subprocess
        role, rest = argv[0], argv[1:]
        if role == "_hello":
            return hello_server(rest[0], plain=len(rest) > 1 and rest[1] == "plain")
        if role == "_canned":
            return canned_server()
        return load_worker(rest[0], int(rest[1]), rest[2], int(rest[3]), float(rest[4]))

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="both")
    parser.add_argument("--zookeeper", metavar="HOST:PORT",
                        help="use this ZooKeeper (a fresh chroot per cluster) instead of starting a throwaway one")
    parser.add_argument("--vms", default=None,
                        help="comma-separated numbers of VMs, one cluster each (default: 1000,10000; --quick: 1000)")
    parser.add_argument("--seconds", type=int, default=None, help="seconds of each load measurement (default 5; "
                        "--quick: 2)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load client: wrk, this script's own, or wrk when installed")
    parser.add_argument("--requests", type=int, default=None,
                        help="measured GET /api/v1/vm/<vm> and POST .../state requests (default 200; --quick: 50)")
    parser.add_argument("--list-requests", type=int, default=None,
                        help="measured GET /api/v1/vm requests (default: 100000/M, from 15 to 50; --quick: 20)")
    parser.add_argument("--no-plain", action="store_true", help="skip cheroot's own wsgi.Server as a second ceiling")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated VMs and of the request order")
    parser.add_argument("--quick", action="store_true",
                        help="a run under a minute: 1,000 VMs, 2 s per load, 20 lists, 50 gets and posts")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2 if args.quick else 5)
    args.requests = args.requests or (50 if args.quick else 200)
    try:
        sizes = sorted({int(v.replace("_", "")) for v in (args.vms or ("1000" if args.quick else "1000,10000")).split(",")
                        if v.strip()})
    except ValueError:
        parser.error(f"--vms must be comma-separated numbers, not {args.vms!r}")
    if not sizes or sizes[0] < 1 or args.seconds < 1 or args.requests < 2:
        parser.error("--vms and --seconds must be at least 1, --requests at least 2")
    client = "wrk" if args.client == "auto" and shutil.which("wrk") else args.client
    client = "python" if client == "auto" else client
    if client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (apt-get install wrk)")
    if not os.path.exists(PVC):
        parser.error("the `pvc` console script is not installed (pip install -e .)")
    load_fn = wrk_load if client == "wrk" else python_load
    quiet_logs()

    from bench_vms import fill  # beside this script: the same VMs as bench_vms.py

    from pvc.lib.config import load_settings

    command = "python3 benchmarks/bench_http.py " + " ".join(shlex.quote(a) for a in argv)
    started = time.monotonic()
    args.load_before = os.getloadavg()[0]  # other work on the machine skews every figure: said in the report
    rng = random.Random(args.seed)
    figs: list[Figures] = []
    fills: list[str] = []
    ceilings: dict[str, list[Load]] = {"plain": []}
    client_ceiling: dict[int, Load] = {}
    with tempfile.TemporaryDirectory(prefix="pvc-bench-") as tmp, Stores(tmp, args.zookeeper) as stores:
        setups = []
        for engine in engines(args.engine):
            for vms in sizes:
                progress(f"[{engine}, {vms:,} VMs] filling ...")
                setup = fill(stores, engine, vms, 3, os.path.join(tmp, f"{engine}-{vms}"), args.seed)
                setups.append(setup)
                fills.append(f"{engine} {vms:,} VMs in {setup.fill_s:.1f} s")
        # The ceiling reads the same configuration file as the first `pvc serve`: the same threads and limits.
        config = setups[0].config
        args.threads = load_settings(config, os.environ).threads

        def start_server(name: str, argv_of: list[str]) -> Server:
            server = Server("", tmp, command=argv_of, log_name=f"{name}.log")
            with Connection(server) as conn:
                for _ in range(100):  # warm-up, and a check that it answers 200
                    conn.request("GET", NODE_PATH)
            return server

        for name, argv_of in (("canned", [sys.executable, SCRIPT, "_canned"]),
                              ("plain", [sys.executable, SCRIPT, "_hello", config, "plain"])):
            if name == "plain" and args.no_plain:
                continue
            with start_server(name, argv_of) as server:
                for c in (8, 1):
                    progress(f"[{name}] {c} connection{'s' if c > 1 else ''}, {args.seconds} s ...")
                    if name == "canned":
                        client_ceiling[c] = load_fn(server, c, args.seconds, "canned-response socket server")
                    else:
                        ceilings[name].append(load_fn(server, c, args.seconds, "hello-world, cheroot's wsgi.Server"))
        with start_server("hello", [sys.executable, SCRIPT, "_hello", config]) as hello:
            for setup in setups:
                figures = Figures(setup.engine, setup.vms, setup.fill_s)
                measure_cluster(setup, figures, args, rng, load_fn, hello if setup.vms == sizes[0] else None)
                figs.append(figures)

    print("\n".join(report(figs, ceilings, client_ceiling, client, args, command, time.monotonic() - started, fills)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
