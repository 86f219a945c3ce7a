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
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

from common import (  # beside this script; it puts the repository on sys.path first
    ENGINES,
    PVC,
    Connection,
    Server,
    Stores,
    add_nodes,
    command_env,
    config_for,
    engines,
    machine_line,
    percentile,
    quiet_logs,
    time_command,
)

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.ops.cluster import init_cluster


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
        add_nodes(core, nodes)


# --- the endpoint -------------------------------------------------------------------------------


def measure_endpoint(server: Server, path: str, warmup: int, requests: int, expect: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``requests`` GETs over one keep-alive connection, and the total seconds."""
    with Connection(server, timeout=30) as conn:
        first = json.loads(conn.request("GET", path))
        if len(first) != expect:
            raise RuntimeError(f"GET {path} returned {len(first)} nodes, not {expect}")
        for _ in range(warmup):
            conn.request("GET", path)
        samples = []
        started = time.perf_counter()
        for _ in range(requests):
            samples.append(conn.timed("GET", path)[0])
        return samples, time.perf_counter() - started


# --- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="both")
    parser.add_argument("--zookeeper", metavar="HOST:PORT",
                        help="use this ZooKeeper (in a fresh chroot) instead of starting a throwaway one")
    parser.add_argument("--nodes", type=int, default=3, help="nodes to register")
    parser.add_argument("--requests", type=int, default=500, help="measured GET /api/v1/node requests")
    parser.add_argument("--warmup", type=int, default=50, help="requests sent before measuring")
    parser.add_argument("--runs", type=int, default=20, help="runs of each timed CLI command")
    args = parser.parse_args(argv)
    quiet_logs()
    if not os.path.exists(PVC):
        parser.error("the `pvc` console script is not installed (pip install -e .)")

    endpoints: list[Endpoint] = []
    commands: list[Command] = []
    with tempfile.TemporaryDirectory(prefix="pvc-bench-") as tmp, Stores(tmp, args.zookeeper) as stores:
        env = command_env(tmp)
        commands.append(Command("pvc --help", args.runs, time_command([PVC, "--help"], args.runs, env)))
        for engine in engines(args.engine):
            directory = os.path.join(tmp, engine)
            settings = stores.new(engine, directory)
            print(f"[{engine}] registering {args.nodes} nodes ...", file=sys.stderr)
            fill(settings, args.nodes, initialise=engine == "zookeeper")
            config = config_for(settings, directory)
            commands.append(Command(f"pvc node list ({engine})", args.runs,
                                    time_command([PVC, "--config", config, "node", "list"], args.runs, env)))
            with Server(config, directory) as server:
                print(f"[{engine}] pvc serve on {server.host}:{server.port}; {args.warmup} warm-up and "
                      f"{args.requests} measured requests ...", file=sys.stderr)
                samples, elapsed = measure_endpoint(server, "/api/v1/node", args.warmup, args.requests, args.nodes)
            endpoints.append(Endpoint(engine, args.nodes, args.requests, samples, elapsed))

    print(f"\npvc benchmark: {machine_line()}\n")
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
