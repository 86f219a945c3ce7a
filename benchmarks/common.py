"""Pieces the benchmark scripts share: stores, nodes, a `pvc serve` subprocess, an HTTP client,
timing of CLI commands and percentiles.

Measured, not asserted (DESIGN.md, "Performance design"): nothing here judges a number; a helper
raises only when something does not work at all. See benchmarks/README.md.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Iterator, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # tests.zkserver, the throwaway ZooKeeper of the test suite

from pvc.lib.config import Settings  # noqa: E402
from pvc.lib.core import Cluster  # noqa: E402
from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state  # noqa: E402
from pvc.lib.store import Create  # noqa: E402

#: The `pvc` of this Python's environment (the virtualenv's), else the first on PATH.
_BESIDE = os.path.join(os.path.dirname(sys.executable), "pvc")
PVC = _BESIDE if os.path.exists(_BESIDE) else (shutil.which("pvc") or _BESIDE)
LISTENING = re.compile(r"Listening on (https?)://([^/]+):(\d+)/api/v1")
ENGINES = ("embedded", "zookeeper", "both")


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile of ``samples`` (p from 0 to 100)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


def engines(choice: str) -> Iterator[str]:
    yield from (("embedded", "zookeeper") if choice == "both" else (choice,))


def quiet_logs() -> None:
    """This process's own store handles (filling the cluster) log their closing at WARNING; only
    the numbers matter here."""
    logging.getLogger("pvc.store").setLevel(logging.ERROR)
    logging.getLogger("kazoo").setLevel(logging.ERROR)


def command_env(tmp: str) -> dict[str, str]:
    """The environment for `pvc` subprocesses: no PVC_* settings of the caller, a throwaway home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PVC_", "_PVC_"))}
    env.update(HOME=os.path.join(tmp, "home"), XDG_DATA_HOME=os.path.join(tmp, "data"))
    return env


def machine_line() -> str:
    return (f"{platform.python_implementation()} {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")


# --- clusters -----------------------------------------------------------------------------------


def add_nodes(core: Cluster, nodes: int) -> list[str]:
    """Register ``nodes`` nodes (hv1, hv2, ...) with running daemons, ready, with plausible figures."""
    names = []
    for i in range(1, nodes + 1):
        name = f"hv{i}"
        register_node(core, name, NodeFacts(16, "6.1.0-amd64", "GNU/Linux", "x86_64"), coordinator=i <= 3)
        publish_figures(core, name, NodeFigures(memtotal=64000, memused=16000, memfree=48000, cpuload=0.5),
                        daemon_state="run")
        report_domain_state(core, name, "ready")
        names.append(name)
    return names


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
        """Settings for a fresh chroot of its own, so clusters never mix."""
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


class Stores:
    """Fresh, empty stores on demand: an SQLite file per embedded cluster, a chroot per ZooKeeper one
    (one ZooKeeper server for all, started on first use)."""

    def __init__(self, tmp: str, zookeeper_address: str | None = None):
        self.tmp = tmp
        self.zookeeper_address = zookeeper_address
        self.zookeeper: ZooKeeper | None = None

    def new(self, engine: str, directory: str) -> Settings:
        """Settings for a new cluster; the caller initialises it (init_cluster) when it is ZooKeeper."""
        os.makedirs(directory, exist_ok=True)
        if engine == "embedded":
            return Settings(store_path=os.path.join(directory, "pvc.sqlite"))
        self.zookeeper = self.zookeeper or ZooKeeper(self.zookeeper_address, self.tmp)
        return self.zookeeper.settings()

    def stop(self) -> None:
        if self.zookeeper is not None:
            self.zookeeper.stop()
            self.zookeeper = None

    def __enter__(self) -> "Stores":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the server ---------------------------------------------------------------------------------


class Server:
    """`pvc serve --listen 127.0.0.1:0` on a configuration file, until stop().

    ``args`` are added to `pvc serve`'s (e.g. ``["--no-agent"]``). ``command`` replaces the whole
    command line (``config`` is then unused): any server that prints the same "Listening on
    http://HOST:PORT/api/v1" line once it accepts connections, e.g. bench_http.py's ceiling."""

    def __init__(self, config: str, directory: str, timeout: float = 30.0, args: Sequence[str] = (),
                 command: Sequence[str] | None = None, log_name: str = "serve.log"):
        self.log_path = os.path.join(directory, log_name)
        self.log = open(self.log_path, "wb")
        argv = list(command) if command is not None else [PVC, "--config", config, "serve", "--listen", "127.0.0.1:0",
                                                          *args]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
                                        text=True)
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

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log (its errors and access log so far)."""
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return b"".join(f.readlines()[-lines:]).decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Connection:
    """One keep-alive HTTP connection to a Server; every answer must be 200 and keep it open."""

    def __init__(self, server: Server, timeout: float = 120.0):
        self.server = server
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)

    def request(self, method: str, path: str, form: str | None = None) -> bytes:
        """The body of the answer to ``method path`` (with an urlencoded ``form`` body if given)."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
        self.conn.request(method, path, body=form.encode() if form is not None else None, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            log = f"; the server's log ends:\n{self.server.log_tail()}" if response.status >= 500 else ""
            raise RuntimeError(f"{method} {path}: {response.status} {body[:200]!r}{log}")
        if response.getheader("Connection", "").lower() == "close":
            raise RuntimeError(f"{method} {path}: the server closed the keep-alive connection")
        return body

    def timed(self, method: str, path: str, form: str | None = None) -> tuple[float, bytes]:
        """Milliseconds from sending the request to having read the whole answer, and the answer."""
        t0 = time.perf_counter()
        body = self.request(method, path, form)
        return (time.perf_counter() - t0) * 1000, body

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def time_command(args: list[str], runs: int, env: dict[str, str], timeout: float = 60.0) -> list[float]:
    """Wall time (ms) of running ``args`` as a fresh process, ``runs`` times (after one warm-up),
    its output going to /dev/null."""
    samples = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        result = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        elapsed = (time.perf_counter() - t0) * 1000
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        if i:  # the first run only warms the file cache
            samples.append(elapsed)
    return samples


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), VmSize and Threads of process ``pid``, from /proc/<pid>/status
    (memory in kB, as the kernel gives it)."""
    figures = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize", "Threads"):
                figures[key] = int(value.split()[0])
    return figures


def code_version() -> str:
    """The commit measured, and whether the work tree's pvc/ differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "pvc"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' with uncommitted changes in pvc/' if dirty else ''}"
