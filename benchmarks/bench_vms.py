#!/usr/bin/env python3
"""Measure the VM endpoints of a real `pvc serve`, and `pvc vm list`, with many VMs.

For each store engine and each number of VMs M asked for, this fills a throwaway cluster with N
ready nodes and M VMs (a realistic libvirt XML of 2-3 KB each, spread over the nodes, most of
them running), written in batches straight into the store with the keys `define_vm` writes. Then,
in each of R rounds, it starts `pvc serve --listen 127.0.0.1:0` on every cluster in turn and
measures over one keep-alive connection:

- GET /api/v1/vm (the whole list; the first answer, with nothing parsed yet, is reported apart),
- GET /api/v1/vm/<name> (a random VM, by exact name),
- POST /api/v1/vm/<name>/state (stop, then start again, of random running VMs: every request
  really writes),

and times `pvc vm list --format json` and `pvc vm list` (the table) as fresh processes. It prints
the median over the rounds of each figure with its min-max. --profile adds, per cluster, an
in-process breakdown of one list (store reads, XML parsing, building the objects, JSON) and the
top functions of one GET /api/v1/vm under cProfile.

Measured, not asserted (DESIGN.md, "Performance design"): this prints numbers and exits 0; it
fails only when something does not work at all. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote as urlquote

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

from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.ops.vm import list_vms
from pvc.lib.store import Create


#: VMs written per store commit while filling (each is 8 keys, ~3 KB: far below ZooKeeper's 1 MB).
FILL_BATCH = 100
#: Share of the VMs that are stopped, and of those migrated (lastnode set); the rest run at home.
STOPPED, MIGRATED = 0.15, 0.05
ROLES = ("web", "db", "app", "cache", "ci", "mail", "proxy", "build", "dns", "git")

LIST = "GET /api/v1/vm"
LIST_COLD = "GET /api/v1/vm, first"
ONE = "GET /api/v1/vm/<name>"
STATE = "POST /api/v1/vm/<name>/state"
CLI_JSON = "pvc vm list --format json"
CLI_TABLE = "pvc vm list"
FIGURES = (LIST, LIST_COLD, ONE, STATE, CLI_JSON, CLI_TABLE)


# --- the VMs ------------------------------------------------------------------------------------


def domain_xml(name: str, uid: str, index: int, nodes: list[str], rng: random.Random) -> tuple[str, list[str]]:
    """A libvirt domain document as `virsh dumpxml` writes them for PVC's VMs, and its RBD volumes."""
    vcpus = rng.choice((1, 2, 2, 4, 4, 8))
    cores = 2 if vcpus >= 2 else 1
    memory = rng.choice((1024, 2048, 4096, 4096, 8192, 16384))
    mac = ":".join(f"{b:02x}" for b in (0x52, 0x54, 0x00, rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    volumes = [f"vms/{name}_disk{d}" for d in range(rng.choice((1, 1, 2)))]
    hosts = "".join(f"\n        <host name='{n}.storage.local' port='6789'/>" for n in nodes[:3])
    disks = "".join(f"""
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
      <auth username='libvirt'>
        <secret type='ceph' uuid='9f3c6b0e-5f43-4a63-8d6a-2c1b2d0f6f51'/>
      </auth>
      <source protocol='rbd' name='{volume}'>{hosts}
      </source>
      <target dev='sd{"abcdefgh"[d]}' bus='scsi'/>
    </disk>""" for d, volume in enumerate(volumes))
    interfaces = "".join(f"""
    <interface type='bridge'>
      <mac address='{mac[:-2]}{(int(mac[-2:], 16) + i) % 256:02x}'/>
      <source bridge='vmbr{vlan}'/>
      <model type='virtio'/>
    </interface>""" for i, vlan in enumerate(rng.sample((100, 101, 200, 300), rng.choice((1, 1, 2)))))
    xml = f"""<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uid}</uuid>
  <description>{ROLES[index % len(ROLES)]} server {index} - benchmark VM, managed by pvc</description>
  <memory unit='MiB'>{memory}</memory>
  <currentMemory unit='MiB'>{memory}</currentMemory>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-2.7'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
    <pae/>
  </features>
  <cpu mode='host-model'>
    <topology sockets='1' cores='{cores}' threads='{vcpus // cores}'/>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>restart</on_crash>
  <devices>
    <emulator>/usr/bin/kvm</emulator>{disks}
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <controller type='usb' index='0' model='piix3-uhci'/>
    <controller type='pci' index='0' model='pci-root'/>{interfaces}
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <input type='tablet' bus='usb'/>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <video>
      <model type='cirrus' vram='16384' heads='1'/>
    </video>
    <memballoon model='virtio'/>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
"""
    return xml, volumes


@dataclass
class Setup:
    """One filled cluster: an engine and a number of VMs."""

    engine: str
    vms: int
    nodes: int
    settings: Settings
    directory: str
    config: str
    names: list[str]
    running: list[str]  # names of the VMs whose state is start
    fill_s: float
    xml_bytes: int
    list_bytes: int = 0
    figures: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)  # per round: p50, p99, n

    @property
    def label(self) -> str:
        return f"{self.engine}, {self.vms:,} VMs on {self.nodes} nodes"

    def record(self, figure: str, samples: list[float]) -> None:
        self.figures.setdefault(figure, []).append((percentile(samples, 50), percentile(samples, 99), len(samples)))


def fill(stores: Stores, engine: str, vms: int, nodes: int, directory: str, seed: int) -> Setup:
    """A new cluster of ``nodes`` ready nodes and ``vms`` VMs, written FILL_BATCH VMs per commit."""
    settings = stores.new(engine, directory)
    rng = random.Random(seed)
    names: list[str] = []
    running: list[str] = []
    xml_bytes = 0
    started = time.perf_counter()
    with Cluster(settings) as core:
        if engine == "zookeeper":
            init_cluster(core)
        hosts = add_nodes(core, nodes)
        ops: list[Create] = []
        for i in range(vms):
            name = f"{ROLES[i % len(ROLES)]}{i:05d}"
            uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            home = hosts[i % len(hosts)]
            state = "stop" if rng.random() < STOPPED else "start"
            away = [h for h in hosts if h != home]
            lastnode = rng.choice(away) if away and rng.random() < MIGRATED else ""
            xml, volumes = domain_xml(name, uid, i, hosts, rng)
            values = {"state": state, "node": home, "lastnode": lastnode, "failedreason": "", "consolelog": "",
                      "rbdlist": ",".join(volumes), "xml": xml}
            # Exactly the keys define_vm writes, without its O(M) name check per VM.
            ops.append(Create(schema.domain(uid), name))
            ops += [Create(schema.domain_key(uid, f), values[f]) for f in schema.DOMAIN_FIELDS]
            names.append(name)
            if state == "start":
                running.append(name)
            xml_bytes += len(xml.encode())
            if len(ops) >= FILL_BATCH * (1 + len(schema.DOMAIN_FIELDS)):
                core.store.commit(ops)
                ops = []
        if ops:
            core.store.commit(ops)
        fill_s = time.perf_counter() - started
        listed = list_vms(core)  # a sanity check of the fill, not a timing
        if len(listed) != vms or (vms and listed[0]["memory"] is None):
            raise RuntimeError(f"list_vms after filling {engine} returned {len(listed)} VMs, not {vms} (or no XML facts)")
    return Setup(engine, vms, nodes, settings, directory, config_for(settings, directory), names, running, fill_s,
                 xml_bytes // max(vms, 1))


# --- the measurements ---------------------------------------------------------------------------


def list_requests(vms: int, wanted: int | None) -> int:
    """Measured GET /api/v1/vm requests: as given, else fewer for bigger lists (200 to 10)."""
    return wanted if wanted is not None else max(10, min(200, 50_000 // max(vms, 1)))


def measure_server(setup: Setup, requests: int, list_count: int, rng: random.Random) -> None:
    """One round of the HTTP figures on a fresh `pvc serve`, recorded into ``setup``."""
    with Server(setup.config, setup.directory) as server, Connection(server) as conn:
        ms, body = conn.timed("GET", "/api/v1/vm")  # nothing parsed yet in this server
        listed = json.loads(body)
        if len(listed) != setup.vms:
            raise RuntimeError(f"GET /api/v1/vm returned {len(listed)} VMs, not {setup.vms}")
        setup.list_bytes = len(body)
        setup.record(LIST_COLD, [ms])
        for _ in range(max(2, list_count // 10)):
            conn.request("GET", "/api/v1/vm")
        setup.record(LIST, [conn.timed("GET", "/api/v1/vm")[0] for _ in range(list_count)])

        def one(name: str) -> float:
            ms, body = conn.timed("GET", f"/api/v1/vm/{urlquote(name)}")
            if json.loads(body)[0]["name"] != name:
                raise RuntimeError(f"GET /api/v1/vm/{name} answered another VM")
            return ms

        for _ in range(min(20, requests)):
            one(rng.choice(setup.names))
        setup.record(ONE, [one(rng.choice(setup.names)) for _ in range(requests)])

        # Stop a running VM, then start it again: every request changes the state (asking for the
        # state a VM is in changes nothing), and the cluster ends as it began.
        samples = []
        for i in range(requests + 2):
            if i % 2 == 0:
                name, state = rng.choice(setup.running), "stop"
            else:
                state = "start"
            ms, body = conn.timed("POST", f"/api/v1/vm/{urlquote(name)}/state", form=f"state={state}")
            if "nothing changed" in body.decode():
                raise RuntimeError(f"POST state={state} to {name} wrote nothing: {body!r}")
            if i >= 2:  # the first pair warms up
                samples.append(ms)
        setup.record(STATE, samples)


def measure_cli(setup: Setup, runs: int, env: dict[str, str]) -> None:
    base = [PVC, "--config", setup.config, "vm", "list"]
    setup.record(CLI_JSON, time_command(base + ["--format", "json"], runs, env, timeout=600))
    setup.record(CLI_TABLE, time_command(base, runs, env, timeout=600))


# --- the in-process profile ---------------------------------------------------------------------


def profile(setup: Setup, top: int) -> list[str]:
    """Where one list spends its time, in this process: the phases of list_vms, then one
    GET /api/v1/vm through the WSGI app (tests/wsgi.py's client) under cProfile."""
    from pvc.lib import vm_records
    from pvc.lib.ops import vm as vm_ops
    from pvc.lib.vm_xml import ParsedCache, read
    from pvc.server.app import create_app
    from pvc.server.errors import dumps
    from tests.wsgi import Client

    out = [f"\n### Profile: {setup.label}\n"]
    vm_records.PARSED = ParsedCache()  # nothing parsed yet, as in a new server
    with Cluster(setup.settings) as core:
        core.store.get_many([schema.DOMAINS])  # connect before timing

        repeat = 5 if setup.vms <= 1000 else 3

        def timed(fn, times: int = repeat):  # type: ignore[no-untyped-def]
            """The value of fn(), the median ms of ``times`` calls and the store round trips of one."""
            samples, trips = [], 0
            for _ in range(times):
                before = core.store.round_trips
                t0 = time.perf_counter()
                value = fn()
                samples.append((time.perf_counter() - t0) * 1000)
                trips = core.store.round_trips - before
            return value, statistics.median(samples), trips

        _, cold_ms, cold_trips = timed(lambda: vm_ops.list_vms(core), 1)
        _, warm_ms, warm_trips = timed(lambda: vm_ops.list_vms(core))
        uuids, uuids_ms, uuids_trips = timed(lambda: vm_records.vm_uuids(core))
        full, full_ms, full_trips = timed(lambda: vm_records.read_vms(core, uuids, vm_records.OBJECT_FIELDS))
        paths, paths_ms, _ = timed(lambda: [schema.domain(u) for u in uuids]
                                   + [schema.domain_key(u, f) for u in uuids for f in vm_records.OBJECT_FIELDS])
        _, check_ms, _ = timed(lambda: [schema.check_path(p) for p in paths])
        _, names_ms, names_trips = timed(lambda: vm_records.read_vms(core, uuids, ()))
        _, parse_ms, _ = timed(lambda: [read(v.value("xml")) for v in full])
        objects, objects_ms, _ = timed(lambda: [vm_records.vm_object(v) for v in sorted(full, key=lambda v: (v.name, v.uuid))])
        body, json_ms, _ = timed(lambda: dumps(objects))
        out += [
            f"Each part called on its own; median ms of {repeat} calls (the first list: one call).\n",
            "| part (in-process) | ms | store round trips |",
            "|---|---:|---:|",
            f"| `list_vms()`, nothing parsed yet | {cold_ms:.1f} | {cold_trips} |",
            f"| `list_vms()`, XML cached | {warm_ms:.1f} | {warm_trips} |",
            f"| children of /domains | {uuids_ms:.1f} | {uuids_trips} |",
            f"| `read_vms`: name + the 5 listed fields of every VM ({len(paths):,} keys) | {full_ms:.1f} | "
            f"{full_trips} |",
            f"| of that: building the key paths (schema.domain, schema.domain_key) | {paths_ms:.1f} | 0 |",
            f"| of that: checking them again (schema.check_path, in get_many) | {check_ms:.1f} | 0 |",
            f"| `read_vms`: the name of every VM (what finding one VM by name reads) | {names_ms:.1f} | "
            f"{names_trips} |",
            f"| build the VM objects (XML cached) | {objects_ms:.1f} | 0 |",
            f"| parse every XML (what a cold cache adds) | {parse_ms:.1f} | 0 |",
            f"| JSON of the list ({len(body) / 1e6:.1f} MB) | {json_ms:.1f} | 0 |",
            "",
        ]
        client = Client(create_app(core))
        client.get("/api/v1/vm")  # warm: the objects' XML is parsed and cached
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        response = client.get("/api/v1/vm")
        profiler.disable()
        wsgi_ms = (time.perf_counter() - t0) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET /api/v1/vm in-process: {response.status}")
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(top)
        out.append(f"One warm GET /api/v1/vm through the WSGI app under cProfile: {wsgi_ms:.0f} ms "
                   f"(profiled; the profiler slows Python code down). Top {top} functions by own time:\n")
        out.append("```")
        lines = text.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        out += [line.rstrip() for line in lines[start:] if line.strip()]
        out.append("```")
    return out


# --- the report ---------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}" if len(values) > 1 else "—"


def report(setups: list[Setup], runs: int) -> list[str]:
    out = []
    for s in setups:
        out += [
            f"\n### {s.label}\n",
            f"Filled in {s.fill_s:.2f} s ({s.vms * (1 + len(schema.DOMAIN_FIELDS)):,} keys; XML {s.xml_bytes:,} bytes "
            f"on average); GET /api/v1/vm answers {s.list_bytes / 1e6:.2f} MB. "
            f"Median over {runs} run{'s' if runs > 1 else ''}, with the min–max of the runs.\n",
            "| measurement | samples per run | p50 ms | p50 min–max | p99 ms | p99 min–max |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for figure in FIGURES:
            rounds = s.figures.get(figure, [])
            if not rounds:
                continue
            p50s, p99s = [r[0] for r in rounds], [r[1] for r in rounds]
            out.append(f"| `{figure}` | {rounds[0][2]} | {statistics.median(p50s):.1f} | {spread(p50s)} | "
                       f"{statistics.median(p99s):.1f} | {spread(p99s)} |")
    out += [
        "\n### Summary: p50 ms, median over the runs\n",
        "| engine | VMs | " + " | ".join(f"`{f}`" for f in FIGURES) + " |",
        "|---|---:|" + "---:|" * len(FIGURES),
    ]
    for s in setups:
        cells = [f"{statistics.median(r[0] for r in s.figures[f]):.1f}" if s.figures.get(f) else "—" for f in FIGURES]
        out.append(f"| {s.engine} | {s.vms:,} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"`{LIST_COLD}` is the first list a new server answers (every XML parsed); the others are warm. "
        "HTTP figures: one keep-alive connection, from sending the request to having read the answer. "
        "CLI figures: wall time of a fresh process, output to /dev/null (p99 there is the slowest run).",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="both")
    parser.add_argument("--zookeeper", metavar="HOST:PORT",
                        help="use this ZooKeeper (a fresh chroot per cluster) instead of starting a throwaway one")
    parser.add_argument("--vms", default=None, help="comma-separated numbers of VMs, one cluster each "
                        "(default: 100,1000,10000; with --quick: 100)")
    parser.add_argument("--nodes", type=int, default=3, help="nodes per cluster")
    parser.add_argument("--runs", type=int, default=1, help="rounds of every measurement (median and min-max printed)")
    parser.add_argument("--requests", type=int, default=200,
                        help="measured GET /api/v1/vm/<name> and POST .../state requests per round")
    parser.add_argument("--list-requests", type=int, default=None,
                        help="measured GET /api/v1/vm requests per round (default: 50000/M, from 10 to 200)")
    parser.add_argument("--cli-runs", type=int, default=5, help="timed runs of each CLI command per round")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated VMs and the request order")
    parser.add_argument("--profile", action="store_true",
                        help="also break one list down in-process and show its top functions under cProfile")
    parser.add_argument("--top", type=int, default=20, help="functions shown by --profile")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round, 20 requests, 10 lists, 2 CLI runs (overrides those options), "
                        "100 VMs unless --vms is given")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.requests, args.list_requests, args.cli_runs = 1, 20, 10, 2
    args.vms = args.vms or ("100" if args.quick else "100,1000,10000")
    try:
        sizes = [int(v.replace("_", "")) for v in args.vms.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--vms must be comma-separated numbers, not {args.vms!r}")
    if not sizes or min(sizes) < 1 or args.nodes < 1 or args.runs < 1 or args.requests < 2 or args.cli_runs < 1:
        parser.error("--vms, --nodes, --runs, --cli-runs must be at least 1 and --requests at least 2")
    quiet_logs()
    if not os.path.exists(PVC):
        parser.error("the `pvc` console script is not installed (pip install -e .)")

    command = "python3 benchmarks/bench_vms.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    rng = random.Random(args.seed)
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pvc-bench-") as tmp, Stores(tmp, args.zookeeper) as stores:
        env = command_env(tmp)
        setups = []
        for engine in engines(args.engine):
            for vms in sizes:
                print(f"[{engine}, {vms} VMs] filling ...", file=sys.stderr, flush=True)
                setups.append(fill(stores, engine, vms, args.nodes, os.path.join(tmp, f"{engine}-{vms}"), args.seed))
                print(f"[{engine}, {vms} VMs] filled in {setups[-1].fill_s:.1f} s", file=sys.stderr, flush=True)
        # Rounds go over every cluster in turn, so a slow patch of the machine spreads over all.
        for run in range(1, args.runs + 1):
            for s in setups:
                count = list_requests(s.vms, args.list_requests)
                print(f"[run {run}/{args.runs}, {s.engine}, {s.vms} VMs] {count} lists, {args.requests} gets and "
                      f"posts, {args.cli_runs} runs of each CLI command ...", file=sys.stderr, flush=True)
                measure_server(s, args.requests, count, rng)
                measure_cli(s, args.cli_runs, env)
        if args.profile:
            for s in setups:
                print(f"[profile, {s.engine}, {s.vms} VMs] ...", file=sys.stderr, flush=True)
                profiles += profile(s, args.top)

    print(f"\npvc VM benchmark: {machine_line()}")
    print(f"command: `{command}` ({time.monotonic() - started:.0f} s)")
    print("\n".join(report(setups, args.runs) + profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
