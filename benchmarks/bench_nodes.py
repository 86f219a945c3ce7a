#!/usr/bin/env python3
"""Measure the node list endpoint of a real `pvc serve`, and the start-up cost of the CLI.

For each store engine asked for, this fills a throwaway cluster with N registered nodes (as their
agents would, through pvc.lib.node_reports), starts `pvc serve --listen 127.0.0.1:0` as a
subprocess on it, sends GET /api/v1/node over one keep-alive connection (a warm-up, then the
measured requests) and reports latency percentiles and throughput. It also times `pvc --help`
and `pvc node list` as separate processes, as an administrator runs them.

Measured, not asserted (DESIGN.md, "Performance design"): this prints numbers and exits 0; it
fails only when something does not work at all. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests.zkserver, the throwaway ZooKeeper of the test suite

from pvc.lib.config import Settings  # noqa: E402
from pvc.lib.core import Cluster  # noqa: E402
from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state  # noqa: E402
from pvc.lib.ops.cluster import init_cluster  # noqa: E402
from pvc.lib.store import Create  # noqa: E402

PVC = shutil.which("pvc") or os.path.join(os.path.dirname(sys.executable), "pvc")
LISTENING = re.compile(r"Listening on (https?)://([^/]+):(\d+)/api/v1")


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile of ``samples`` (p from 0 to 100)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass
class Endpoint:
    engine: str
    nodes: int
    requests: int
    samples_ms: list[float]
    elapsed_s: float


@dataclass
class Command:
    label: str
    runs: int
    samples_ms: list[float]


# --- clusters -----------------------------------------------------------------------------------


def fill(settings: Settings, nodes: int, initialise: bool) -> None:
    """Register ``nodes`` nodes with running daemons and plausible figures."""
    with Cluster(settings) as core:
        if initialise:
            init_cluster(core)
        for i in range(1, nodes + 1):
            name = f"hv{i}"
            register_node(core, name, NodeFacts(16, "6.1.0-amd64", "GNU/Linux", "x86_64"), coordinator=i <= 3)
            publish_figures(core, name, NodeFigures(memtotal=64000, memused=16000, memfree=48000, cpuload=0.5),
                            daemon_state="run")
            report_domain_state(core, name, "ready")


def config_for(settings: Settings, directory: str) -> str:
    """A configuration file selecting the same store as ``settings``."""
    lines = [
        "pvc:",
        "  debug: false",
        f"  coordinators: {json.dumps(list(settings.coordinators))}",
        "  api:",
        "    listen_address: 127.0.0.1",
        "    authentication: {enabled: false}",
        "    ssl: {enabled: false}",
        "  store:",
    ]
    if settings.store_path:
        lines.append(f"    path: {json.dumps(settings.store_path)}")
    if settings.zk_chroot:
        lines.append(f"    chroot: {json.dumps(settings.zk_chroot)}")
    path = os.path.join(directory, "pvc-api.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


class ZooKeeper:
    """Either the --zookeeper given (a fresh chroot in it) or a throwaway server of our own."""

    def __init__(self, address: str | None, directory: str):
        self.server = None
        if address is None:
            from tests.zkserver import ZooKeeperServer

            self.server = ZooKeeperServer(os.path.join(directory, "zookeeper"))
            self.server.start()
            address = self.server.hosts
        self.address = address

    def settings(self) -> Settings:
        from pvc.lib.store.zookeeper import ZooKeeperStore

        chroot = f"/bench-{uuid.uuid4().hex[:12]}"
        admin = ZooKeeperStore([self.address])
        try:
            admin.commit([Create(chroot)])
        finally:
            admin.close()
        return Settings(coordinators=(self.address,), zk_chroot=chroot)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# --- the server ---------------------------------------------------------------------------------


class Server:
    """`pvc serve --listen 127.0.0.1:0` on a configuration file, until stop()."""

    def __init__(self, config: str, directory: str, timeout: float = 30.0):
        self.log_path = os.path.join(directory, "serve.log")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen([PVC, "--config", config, "serve", "--listen", "127.0.0.1:0"],
                                        stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:  # keep reading stdout, so the server never blocks on a full pipe
            assert self.process.stdout is not None
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"pvc serve did not start within {timeout} s; see {self.log_path}") from None
            if line is None:
                self.stop()
                raise RuntimeError(f"pvc serve exited; see {self.log_path}")
            match = LISTENING.search(line)
            if match:
                self.host, self.port = match.group(2), int(match.group(3))
                return

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def measure_endpoint(server: Server, path: str, warmup: int, requests: int, expect: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``requests`` GETs over one keep-alive connection, and the total seconds."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:

        def get() -> bytes:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
            if response.getheader("Connection", "").lower() == "close":
                raise RuntimeError(f"GET {path}: the server closed the keep-alive connection")
            return body

        first = json.loads(get())
        if len(first) != expect:
            raise RuntimeError(f"GET {path} returned {len(first)} nodes, not {expect}")
        for _ in range(warmup):
            get()
        samples = []
        started = time.perf_counter()
        for _ in range(requests):
            t0 = time.perf_counter()
            get()
            samples.append((time.perf_counter() - t0) * 1000)
        return samples, time.perf_counter() - started
    finally:
        conn.close()


def time_command(args: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall time (ms) of running ``args`` as a fresh process, ``runs`` times (after one warm-up)."""
    samples = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        result = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        elapsed = (time.perf_counter() - t0) * 1000
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        if i:  # the first run only warms the file cache
            samples.append(elapsed)
    return samples


# --- the run ------------------------------------------------------------------------------------


def engines(choice: str) -> Iterator[str]:
    yield from (("embedded", "zookeeper") if choice == "both" else (choice,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--engine", choices=("embedded", "zookeeper", "both"), default="both")
    parser.add_argument("--zookeeper", metavar="HOST:PORT",
                        help="use this ZooKeeper (in a fresh chroot) instead of starting a throwaway one")
    parser.add_argument("--nodes", type=int, default=3, help="nodes to register")
    parser.add_argument("--requests", type=int, default=500, help="measured GET /api/v1/node requests")
    parser.add_argument("--warmup", type=int, default=50, help="requests sent before measuring")
    parser.add_argument("--runs", type=int, default=20, help="runs of each timed CLI command")
    args = parser.parse_args(argv)
    # This process's own store handles (filling the cluster) log their closing at WARNING; only
    # the numbers matter here.
    logging.getLogger("pvc.store").setLevel(logging.ERROR)
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    if not os.path.exists(PVC):
        parser.error("the `pvc` console script is not installed (pip install -e .)")

    endpoints: list[Endpoint] = []
    commands: list[Command] = []
    with tempfile.TemporaryDirectory(prefix="pvc-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PVC_", "_PVC_"))}
        env.update(HOME=os.path.join(tmp, "home"), XDG_DATA_HOME=os.path.join(tmp, "data"))
        commands.append(Command("pvc --help", args.runs, time_command([PVC, "--help"], args.runs, env)))
        zookeeper = None
        try:
            for engine in engines(args.engine):
                directory = os.path.join(tmp, engine)
                os.makedirs(directory)
                if engine == "embedded":
                    settings = Settings(store_path=os.path.join(directory, "pvc.sqlite"))
                else:
                    zookeeper = zookeeper or ZooKeeper(args.zookeeper, tmp)
                    settings = zookeeper.settings()
                print(f"[{engine}] registering {args.nodes} nodes ...", file=sys.stderr)
                fill(settings, args.nodes, initialise=engine == "zookeeper")
                config = config_for(settings, directory)
                commands.append(Command(f"pvc node list ({engine})", args.runs,
                                        time_command([PVC, "--config", config, "node", "list"], args.runs, env)))
                server = Server(config, directory)
                try:
                    print(f"[{engine}] pvc serve on {server.host}:{server.port}; {args.warmup} warm-up and "
                          f"{args.requests} measured requests ...", file=sys.stderr)
                    samples, elapsed = measure_endpoint(server, "/api/v1/node", args.warmup, args.requests, args.nodes)
                finally:
                    server.stop()
                endpoints.append(Endpoint(engine, args.nodes, args.requests, samples, elapsed))
        finally:
            if zookeeper is not None:
                zookeeper.stop()

    print(f"\npvc benchmark: {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs\n")
    print("GET /api/v1/node, one keep-alive connection:\n")
    print("| engine | nodes | requests | p50 ms | p90 ms | p99 ms | mean ms | req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for e in endpoints:
        s = e.samples_ms
        print(f"| {e.engine} | {e.nodes} | {e.requests} | {percentile(s, 50):.2f} | {percentile(s, 90):.2f} | "
              f"{percentile(s, 99):.2f} | {statistics.fmean(s):.2f} | {e.requests / e.elapsed_s:.0f} |")
    print("\nCLI, one process per run (wall time):\n")
    print("| command | runs | median ms | p90 ms |")
    print("|---|---:|---:|---:|")
    for c in commands:
        print(f"| `{c.label}` | {c.runs} | {statistics.median(c.samples_ms):.1f} | {percentile(c.samples_ms, 90):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
