"""In-process cost of the API's reads through the read view, and `pvc serve`'s memory.

Per store engine and number of VMs, on a cluster filled as bench_vms.py fills it (3 nodes):

- ``GET /api/v1/node`` and ``GET /api/v1/vm`` through the WSGI app built on a ViewStore, as
  `pvc serve` builds it, each **hit** (nothing changed since the previous request: the response
  cache answers) and **miss** (before each request a keepalive-like write to a node for
  ``/node``, a VM's state for ``/vm``: the answer must be recomputed). Figures per request:
  p50 wall time and CPU time of the thread that answered (``time.thread_time``: the view's own
  thread and the machine's other load are not counted), in ms. ``miss`` includes the catch-up
  with the write, as a request after a write pays it. ``/vm`` after ``/node`` writes shows that
  keepalives do not invalidate the VM list.
- ``--memory``: VmRSS and VmHWM of a real ``pvc serve --no-agent`` subprocess at the largest
  number of VMs: after start, and after ``GET /api/v1/vm`` answered a few times (hits and misses),
  on one keep-alive connection; and, in-process, what Python objects take (tracemalloc): the view
  once built, and what one list answer adds.

```sh
.venv/bin/python benchmarks/bench_view.py                         # 1,000 and 10,000 VMs, embedded, with --memory
.venv/bin/python benchmarks/bench_view.py --vms 1000 --engine both --no-memory
```
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import tracemalloc
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_vms import fill  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Connection,
    Server,
    Stores,
    engines,
    machine_line,
    percentile,
    process_memory,
    quiet_logs,
)
from pvc.lib import schema  # noqa: E402
from pvc.lib.core import Cluster  # noqa: E402
from pvc.lib.store import Set  # noqa: E402
from pvc.lib.store.view import ViewStore  # noqa: E402
from pvc.server.app import create_app  # noqa: E402


def call(app: Any, path: str) -> bytes:
    out: dict[str, str] = {}
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SCRIPT_NAME": "", "SERVER_NAME": "x",
           "SERVER_PORT": "80", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1",
           "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.errors": sys.stderr}
    body = b"".join(app(env, lambda s, h, e=None: out.setdefault("s", s)))
    if not out["s"].startswith("200"):
        raise RuntimeError(f"GET {path}: {out['s']} {body[:200]!r}")
    return body


def timed(app: Any, path: str, n: int, before: Callable[[int], None] | None = None) -> tuple[float, float]:
    """p50 wall ms and mean thread-CPU ms of ``n`` requests (``before(i)`` runs untimed before each)."""
    call(app, path)  # warm-up (the first list parses every XML)
    walls, cpu = [], 0.0
    for i in range(n):
        if before is not None:
            before(i)
        c, t = time.thread_time(), time.perf_counter()
        call(app, path)
        walls.append((time.perf_counter() - t) * 1000)
        cpu += time.thread_time() - c
    return percentile(walls, 50), cpu * 1000 / n


def writer(core: Cluster, paths: list[str], values: tuple[str, str]) -> Callable[[int], None]:
    """A write of one key per call, through ``core``'s store (as the in-process agent writes)."""

    def write(i: int) -> None:
        core.store.commit([Set(paths[i % len(paths)], values[(i // len(paths)) % 2])])

    return write


def in_process(stores: Stores, engine: str, vms: int, tmp: str, rows: list[str]) -> Any:
    setup = fill(stores, engine, vms, 3, os.path.join(tmp, f"{engine}-{vms}"), 1)
    core = Cluster(setup.settings)
    started = time.perf_counter()
    view = ViewStore(core.store, owns=False)
    if not view.wait_ready(300):
        raise RuntimeError("the read view was not built")
    built = time.perf_counter() - started
    app = create_app(Cluster(setup.settings, view))
    nodes = core.store.children(schema.NODES)
    uuids = core.store.children(schema.DOMAINS)[:50]
    keepalive = writer(core, [schema.node_key(n, "keepalive") for n in nodes], ("1700000000", "1700000001"))
    vm_change = writer(core, [schema.domain_key(u, "failedreason") for u in uuids], ("x", ""))
    n_vm = 40 if vms <= 1000 else 8
    cases = [
        ("GET /node", "hit", "/api/v1/node", 500, None),
        ("GET /node", "miss (keepalive)", "/api/v1/node", 300, keepalive),
        ("GET /vm", "hit", "/api/v1/vm", n_vm * 5, None),
        ("GET /vm", "after keepalive", "/api/v1/vm", n_vm * 5, keepalive),
        ("GET /vm", "miss (1 VM changed)", "/api/v1/vm", n_vm, vm_change),
    ]
    for what, kind, path, n, before in cases:
        wall, cpu = timed(app, path, n, before)
        rows.append(f"| {engine} | {vms:,} | {what} | {kind} | {n} | {wall:.3f} | {cpu:.3f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"  ({engine}, {vms:,} VMs: view built in {built:.2f} s)", file=sys.stderr, flush=True)
    view.close()
    core.close()
    return setup


def traced(setup: Any) -> list[str]:
    """What Python objects take: the view once built, and one list answer on top."""
    lines = []
    tracemalloc.start()
    core = Cluster(setup.settings)
    core.store.exists(schema.NODES)
    base = tracemalloc.get_traced_memory()[0]
    view = ViewStore(core.store, owns=False)
    view.wait_ready(300)
    built = tracemalloc.get_traced_memory()[0]
    app = create_app(Cluster(setup.settings, view))
    tracemalloc.reset_peak()
    body = call(app, "/api/v1/vm")
    after, peak = tracemalloc.get_traced_memory()
    lines.append(f"- tracemalloc, {setup.vms:,} VMs: the view {(built - base) / 2**20:.0f} MiB; after one GET /api/v1/vm "
                 f"+{(after - built) / 2**20:.0f} MiB kept (answer {len(body) / 2**20:.0f} MiB), "
                 f"peak during it +{(peak - built) / 2**20:.0f} MiB")
    del body
    view.close()
    core.close()
    tracemalloc.stop()
    return lines


def served(setup: Any, lists: int) -> list[str]:
    """RSS of a real `pvc serve --no-agent` after start and after ``lists`` lists (half of them
    after a VM changed, so recomputed)."""
    lines = []
    with Server(setup.config, setup.directory, timeout=300, args=["--no-agent"]) as server:
        start = process_memory(server.pid)
        core = Cluster(setup.settings)
        uuids = core.store.children(schema.DOMAINS)[:10]
        with Connection(server) as conn:
            walls = []
            for i in range(lists):
                if i % 2:
                    core.store.commit([Set(schema.domain_key(uuids[i % len(uuids)], "failedreason"), f"x{i}")])
                walls.append(conn.timed("GET", "/api/v1/vm")[0])
            after = process_memory(server.pid)
        core.close()
    lines.append(f"- pvc serve --no-agent, {setup.engine}, {setup.vms:,} VMs: VmRSS {start['VmRSS'] / 1024:.0f} MiB after "
                 f"start, {after['VmRSS'] / 1024:.0f} MiB after {lists} x GET /api/v1/vm (peak VmHWM "
                 f"{after['VmHWM'] / 1024:.0f} MiB, {after['Threads']} threads); list over HTTP p50 "
                 f"{percentile(walls, 50):.0f} ms (first {walls[0]:.0f} ms)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="embedded", choices=("embedded", "zookeeper", "both"))
    parser.add_argument("--vms", default="1000,10000", help="numbers of VMs, comma-separated")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="pvc serve's RSS and the tracemalloc figures at the largest number of VMs")
    parser.add_argument("--lists", type=int, default=6, help="GET /api/v1/vm sent to the pvc serve subprocess")
    args = parser.parse_args()
    quiet_logs()
    counts = [int(v) for v in args.vms.split(",")]
    rows: list[str] = []
    notes: list[str] = []
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp, Stores(tmp) as stores:
        for engine in engines(args.engine):
            for vms in counts:
                setup = in_process(stores, engine, vms, tmp, rows)
                if args.memory and vms == max(counts):
                    notes += traced(setup)
                    notes += served(setup, args.lists)
                    print(notes[-1], file=sys.stderr, flush=True)
    print("| engine | VMs | request | case | n | p50 ms | CPU ms/request |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(notes))
    print(machine_line())


if __name__ == "__main__":
    main()
