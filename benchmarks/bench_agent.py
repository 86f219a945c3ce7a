#!/usr/bin/env python3
"""Measure the node agent: VM starts, a flush, the detection of a killed agent, and its memory.

Real agents (pvc.agent.daemon.Agent) on libvirt's test driver, on each store engine (the embedded
SQLite file, and a throwaway ZooKeeper started as the other benchmarks do):

1. start latency: from ``set_vm_state(core, vm, "start")`` (what POST /api/v1/vm/<vm>/state does)
   until the domain is active on its node's hypervisor, and until the node's agent reports it in
   the store (``runningdomains``), for one VM (repeated start/stop) and for 100 VMs started at
   once (one write after another, as 100 POSTs), with where the time of one start goes (write,
   the agent's watch firing, its reconcile, the hypervisor's start) and the test driver's own
   start time for comparison;
2. a flush of a node running 50 VMs to the two other nodes: set_domain_state(flush) until
   ``flushed`` (wait_domain_state) and until every VM runs on another node, then ready back;
3. detection of a killed agent: a `pvc agent` subprocess killed with SIGKILL, until another
   (coordinator) agent has marked its node ``dead``, against the bound interval × fence_intervals
   + interval;
4. the memory (VmRSS) and CPU of a `pvc agent` subprocess idle, with 100 VMs running on it, and
   with 1,000 VMs defined in the cluster.

Parts 1 and 2 run three agents in this process, each with its own store session and its own
private test-driver hypervisor (``test:///<node file>``), as tests/agent_fixtures.py does; parts 3
and 4 run `pvc agent` as a subprocess on a configuration file.

Measured, not asserted (DESIGN.md, "Performance design"): this prints numbers and exits 0; it
fails only when something does not work at all. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from common import ENGINES, PVC, Stores, command_env, engines, machine_line, percentile, quiet_logs  # noqa: I001

from pvc.agent.daemon import Agent
from pvc.agent.hypervisor import HypervisorError
from pvc.agent.libvirt_hv import LibvirtHypervisor
from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.ops import node as node_ops
from pvc.lib.ops import vm as vm_ops
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.store import Create

T = TypeVar("T")

#: The node file of a private test-driver hypervisor (as tests/agent_fixtures.py): 4 CPUs, 16 GiB.
NODE_FILE = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes><sockets>1</sockets>
  <cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>16777216</memory>
</node>
"""
NODES = ("hv1", "hv2", "hv3")
#: VMs written per commit when filling the cluster for the memory figure (each is 8 keys).
FILL_BATCH = 100


def vm_xml(name: str, uuid: str, memory_mib: int = 256, vcpus: int = 1) -> str:
    """A small domain the test driver starts (as tests/agent_fixtures.py's)."""
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>{memory_mib}</memory>"
            f"<vcpu>{vcpus}</vcpu><os><type arch='x86_64'>hvm</type></os><devices></devices></domain>")


def uuid_of(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def until(condition: Callable[[], T], timeout: float, what: str, pause: float = 0.001) -> T:
    """Poll ``condition`` every ``pause`` s until truthy; RuntimeError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what} (last: {result!r})")
        time.sleep(pause)


def is_active(hv: Any, uuid: str) -> bool:
    """Whether the domain is active; False when it vanishes under the look (LibvirtHypervisor.is_active
    raises "Domain not found" when the agent undefines it between its lookup and isActive)."""
    try:
        return hv.is_active(uuid)
    except HypervisorError:
        return False


def ms(seconds: float) -> float:
    return seconds * 1000


def progress(engine: str, text: str) -> None:
    print(f"[{engine}] {text}", file=sys.stderr, flush=True)


# --- results ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of an engine's table: samples (ms or s, as ``unit`` says) or a single value."""

    label: str
    unit: str
    samples: list[float]
    note: str = ""

    def cells(self) -> list[str]:
        s = self.samples
        fmt = (lambda v: f"{v:.1f}") if self.unit in ("ms", "MiB", "%") else (lambda v: f"{v:.2f}")
        if not s:
            return [self.label, "0", "—", "—", "—", self.unit, self.note]
        if len(s) == 1:
            return [self.label, "1", fmt(s[0]), "—", "—", self.unit, self.note]
        return [self.label, str(len(s)), fmt(percentile(s, 50)), fmt(percentile(s, 90)), fmt(max(s)), self.unit,
                self.note]


@dataclass
class Result:
    engine: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, unit: str, samples: list[float] | float, note: str = "") -> None:
        self.rows.append(Row(label, unit, samples if isinstance(samples, list) else [samples], note))

    def table(self) -> list[str]:
        out = ["| measurement | n | p50 | p90 | max | unit | note |", "|---|---:|---:|---:|---:|---|---|"]
        out += ["| " + " | ".join(r.cells()) + " |" for r in self.rows]
        return out


# --- probes inside the in-process agents ----------------------------------------------------------


class Probe:
    """Timestamps (perf_counter) of what the in-process agents do per VM: the watch or event that
    kicks a VM, the reconcile that follows, the hypervisor's start. Wraps the agents' instance
    methods only; the product code is unchanged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: dict[tuple[str, str], list[float]] = {}

    def mark(self, kind: str, uuid: str, *more: str) -> None:
        """Record ``kind`` (and the ``more`` kinds, at the same instant) for ``uuid``, now."""
        t = time.perf_counter()
        with self._lock:
            for k in (kind, *more):
                self.events.setdefault((k, uuid), []).append(t)

    def first_after(self, kind: str, uuid: str, t0: float) -> float | None:
        with self._lock:
            return min((t for t in self.events.get((kind, uuid), ()) if t >= t0), default=None)

    def last_between(self, kind: str, uuid: str, t0: float, t1: float) -> float | None:
        with self._lock:
            return max((t for t in self.events.get((kind, uuid), ()) if t0 <= t <= t1), default=None)

    def kind_at(self, prefix: str, suffix: str, uuid: str, t: float) -> str:
        """The kind of event (``<prefix>...<suffix>``) recorded at exactly ``t``."""
        with self._lock:
            return next((k for (k, u), ts in self.events.items()
                         if u == uuid and k.startswith(prefix) and k.endswith(suffix) and t in ts), "?")

    def instrument(self, agent: Agent) -> None:
        """Wrap one agent's methods; its events are named ``<kind>@<node>``."""
        vms, hv, at = agent.vms, agent.hv, f"@{agent.name}"
        kick, reconcile, start = vms.kick, vms.reconcile, hv.start

        def probed_kick(uuid: str) -> None:
            # The agent's watch on the VM's keys calls kick from a lambda (Agent._sync_vms); the
            # others are the hypervisor's events and the keepalive's look at every VM.
            caller = sys._getframe(1).f_code.co_name
            self.mark("kick" + at, uuid, ("kick:watch" if caller == "<lambda>" else f"kick:{caller}") + at)
            kick(uuid)

        def probed_reconcile(uuid: str, task: Any) -> None:
            self.mark("reconcile" + at, uuid)
            reconcile(uuid, task)

        def probed_start(uuid: str, xml: str) -> None:
            self.mark("hv.start" + at, uuid)
            try:
                start(uuid, xml)
            finally:
                self.mark("hv.started" + at, uuid)

        vms.kick = probed_kick  # type: ignore[method-assign]
        vms.reconcile = probed_reconcile  # type: ignore[method-assign]
        hv.start = probed_start  # type: ignore[method-assign]


class WarningCounter(logging.Handler):
    """Counts the agents' warnings and errors (the full log goes to a file)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


# --- the in-process cluster (parts 1 and 2) -----------------------------------------------------


class InProcess:
    """Three coordinator agents (hv1..hv3) in this process on one cluster, and the admin's handle."""

    def __init__(self, settings: Settings, directory: str, engine: str, flush_parallel: int):
        self.directory = directory
        self.engine = engine
        self.settings = settings.replace(flush_parallel=flush_parallel)  # intervals: the product defaults
        self.core = Cluster(self.settings)
        if engine == "zookeeper":
            init_cluster(self.core)
        self.probe = Probe()
        self.agents: dict[str, Agent] = {}
        self._cores: list[Cluster] = []

    def uri(self, name: str) -> str:
        path = os.path.join(self.directory, f"{name}.xml")
        with open(path, "w") as f:
            f.write(NODE_FILE.format(cpus=4))
        return f"test://{path}"

    def start(self, name: str) -> None:
        core = Cluster(self.settings.replace(node_name=name, libvirt_uri=self.uri(name), node_coordinator=True))
        self._cores.append(core)
        agent = Agent(core)
        self.probe.instrument(agent)
        agent.start()
        self.agents[name] = agent
        until(lambda: self.node(name)["daemon_state"] == "run", 30, f"{name} to run", 0.01)
        node_ops.set_domain_state(self.core, name, "ready")
        node_ops.wait_domain_state(self.core, name, "ready", timeout=30)

    def node(self, name: str) -> dict[str, Any]:
        return node_ops.get_node(self.core, name)[0]

    def running_domains(self, name: str) -> set[str]:
        key = schema.node_key(name, "runningdomains")
        entry = self.core.store.get_many([key])[key]
        return set(entry.value.split()) if entry is not None and entry.value else set()

    def active(self, name: str) -> set[str]:
        return set(self.agents[name].hv.active())

    def quiet(self, timeout: float = 60) -> None:
        """Until no agent acts on any VM (every reconcile thread has ended)."""
        until(lambda: all(a.vms.busy() == 0 for a in self.agents.values()), timeout, "the agents to settle", 0.01)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for core in self._cores:
            core.close()
        self.core.close()


def hypervisor_baseline(directory: str, reps: int) -> tuple[list[float], list[float]]:
    """The test driver's own time (ms) to start a domain as the agent does (LibvirtHypervisor.start:
    look up, define, create) and to stop it (destroy, undefine), on a private hypervisor."""
    path = os.path.join(directory, "baseline.xml")
    with open(path, "w") as f:
        f.write(NODE_FILE.format(cpus=4))
    hv = LibvirtHypervisor(f"test://{path}")
    hv.connect()
    starts, stops = [], []
    uuid = uuid_of(999_999)
    xml = vm_xml("baseline", uuid)
    try:
        for i in range(reps + 2):
            t0 = time.perf_counter()
            hv.start(uuid, xml)
            t1 = time.perf_counter()
            hv.destroy(uuid)
            hv.undefine(uuid)
            t2 = time.perf_counter()
            if i >= 2:
                starts.append(ms(t1 - t0))
                stops.append(ms(t2 - t1))
    finally:
        hv.close()
    return starts, stops


def single_vm(cl: InProcess, result: Result, name: str, uuid: str, reps: int, label: str,
              breakdown: bool, pause: float) -> None:
    """``reps`` times: start the VM (timed until active and until reported), then stop it (timed
    until inactive and no longer reported); ``pause`` s of quiet before each write, so that each
    is a change on its own (the agent publishes its figures at most every FIGURES_SPACING)."""
    agent = cl.agents["hv1"]
    write, active, reported, stop_active, stop_reported = [], [], [], [], []
    to_kick, to_reconcile, to_hv, hv_time, to_seen = [], [], [], [], []
    sources: dict[str, int] = {}
    rng = random.Random(reps)
    for i in range(reps + 2):  # two unmeasured cycles first
        # Quiet before each write, plus a random part, so writes do not fall at one phase of the
        # embedded store's 50 ms watcher poll.
        time.sleep(pause + rng.uniform(0, 0.05))
        t0 = time.perf_counter()
        vm_ops.set_vm_state(cl.core, name, "start")
        tw = time.perf_counter()
        until(lambda: is_active(agent.hv, uuid), 30, f"{name} active", 0.0005)
        ta = time.perf_counter()
        until(lambda: uuid in cl.running_domains("hv1"), 30, f"{name} reported running", 0.0005)
        tr = time.perf_counter()
        state = vm_ops.get_vm_state(cl.core, name)["state"]
        if state != "start":
            raise RuntimeError(f"{name} is {state!r} after its start, not 'start'")
        # The start itself, the reconcile that made it, and the kick that began that reconcile
        # (the watch on the VM's keys, normally; or the keepalive's look, a hypervisor event).
        hv0 = cl.probe.first_after("hv.start@hv1", uuid, t0)
        hv1 = cl.probe.first_after("hv.started@hv1", uuid, hv0) if hv0 is not None else None
        rec = cl.probe.last_between("reconcile@hv1", uuid, t0, hv0) if hv0 is not None else None
        kick = cl.probe.last_between("kick@hv1", uuid, t0, rec) if rec is not None else None
        if kick is not None:
            source = cl.probe.kind_at("kick:", "@hv1", uuid, kick)[len("kick:"):-len("@hv1")]
            sources[source] = sources.get(source, 0) + (i >= 2)
        time.sleep(pause + rng.uniform(0, 0.05))
        s0 = time.perf_counter()
        vm_ops.set_vm_state(cl.core, name, "stop")
        until(lambda: not is_active(agent.hv, uuid), 30, f"{name} inactive", 0.0005)
        s1 = time.perf_counter()
        until(lambda: uuid not in cl.running_domains("hv1"), 30, f"{name} no longer reported", 0.0005)
        s2 = time.perf_counter()
        if i < 2:
            continue
        write.append(ms(tw - t0))
        active.append(ms(ta - t0))
        reported.append(ms(tr - t0))
        stop_active.append(ms(s1 - s0))
        stop_reported.append(ms(s2 - s0))
        if None not in (kick, rec, hv0, hv1):
            to_kick.append(ms(kick - tw))  # type: ignore[operator]
            to_reconcile.append(ms(rec - kick))  # type: ignore[operator]
            to_hv.append(ms(hv0 - rec))  # type: ignore[operator]
            hv_time.append(ms(hv1 - hv0))  # type: ignore[operator]
            to_seen.append(ms(ta - hv1))  # type: ignore[operator]
        cl.quiet()
    result.add(f"{label}: `set_vm_state(start)` returns (the write)", "ms", write)
    result.add(f"{label}: write → domain active on hv1", "ms", active, "from before the write")
    result.add(f"{label}: write → in hv1's `runningdomains`", "ms", reported, "the agent's report in the store")
    if breakdown:
        kicks = ", ".join(f"{k}: {v}" for k, v in sorted(sources.items()) if v)
        result.add("  of which: write returned → hv1's agent is told (kick)", "ms", to_kick,
                   f"by {kicks}" + ("; the embedded watcher polls every 50 ms" if cl.engine == "embedded" else ""))
        result.add("  of which: kick → the reconcile that starts it begins", "ms", to_reconcile,
                   "a new thread per VM action")
        result.add("  of which: reconcile → `hv.start` called", "ms", to_hv, "reads the VM, looks at the domain")
        result.add("  of which: `hv.start` (define + create)", "ms", hv_time)
        result.add("  of which: `hv.start` returned → seen active by this poll", "ms", to_seen)
    result.add(f"{label}: `set_vm_state(stop)` → domain inactive", "ms", stop_active)
    result.add(f"{label}: `set_vm_state(stop)` → gone from `runningdomains`", "ms", stop_reported)


def many_vms(cl: InProcess, result: Result, names: list[str], uuids: list[str]) -> None:
    """Start all VMs at once (one write after another), then stop them all; all on hv1."""
    hv = cl.agents["hv1"].hv
    n = len(names)
    issued: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def poll() -> None:  # on a thread of its own, so that VMs are seen while the writes go on
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            now = time.perf_counter()
            for u in hv.active():
                seen.setdefault(u, now)
            if all(u in seen for u in uuids):
                return
            time.sleep(0.002)

    poller = threading.Thread(target=poll, name="bench-poll", daemon=True)
    poller.start()
    t0 = time.perf_counter()
    try:
        for name, uuid in zip(names, uuids):
            vm_ops.set_vm_state(cl.core, name, "start")
            issued[uuid] = time.perf_counter()
        t_issued = time.perf_counter()
        poller.join(125)
    finally:
        done.set()
    if not all(u in seen for u in uuids):
        raise RuntimeError(f"only {sum(u in seen for u in uuids)} of {n} VMs became active within 120 s")
    t_active = max(seen[u] for u in uuids)
    until(lambda: set(uuids) <= cl.running_domains("hv1"), 120, f"all {n} VMs reported", 0.002)
    t_reported = time.perf_counter()
    failed = [v["name"] for v in vm_ops.list_vms(cl.core, state="failed")]
    if failed:
        raise RuntimeError(f"{len(failed)} VMs failed to start: {failed[:5]}")
    result.add(f"{n} VMs at once: the {n} writes", "ms", ms(t_issued - t0), f"{ms(t_issued - t0) / n:.1f} ms per write")
    each = [ms(seen[u] - issued[u]) for u in uuids]
    result.add(f"{n} VMs at once: each VM's write → active", "ms", each,
               f"polled every 2 ms (a thread); the first VM written {each[0]:.0f} ms, the last {each[-1]:.0f} ms")
    told, begun = [], []
    for u in uuids:
        watch = cl.probe.first_after("kick:watch@hv1", u, issued[u])
        start = cl.probe.first_after("hv.start@hv1", u, issued[u])
        if watch is not None and start is not None:
            told.append(ms(watch - issued[u]))
            begun.append(ms(start - watch))
    result.add("  of which: each VM's write returned → hv1's watch on it fires", "ms", told)
    result.add("  of which: that watch → `hv.start` called", "ms", begun, "threads, store reads, the GIL")
    result.add(f"{n} VMs at once: first write → all {n} active", "ms", ms(t_active - t0))
    result.add(f"{n} VMs at once: first write → all {n} in `runningdomains`", "ms", ms(t_reported - t0))
    cl.quiet()
    t0 = time.perf_counter()
    for name in names:
        vm_ops.set_vm_state(cl.core, name, "stop")
    until(lambda: not (set(uuids) & set(hv.active())), 120, f"all {n} VMs stopped", 0.002)
    t_stopped = time.perf_counter()
    until(lambda: not (set(uuids) & cl.running_domains("hv1")), 120, f"all {n} VMs unreported", 0.002)
    t_unreported = time.perf_counter()
    result.add(f"{n} VMs at once: first stop write → all {n} inactive", "ms", ms(t_stopped - t0))
    result.add(f"{n} VMs at once: first stop write → `runningdomains` empty", "ms", ms(t_unreported - t0))
    cl.quiet()


def flush(cl: InProcess, result: Result, names: list[str], uuids: list[str], timeout: float) -> None:
    """Start the VMs on hv1, flush hv1 (the VMs go to hv2 and hv3), then make it ready again."""
    for name in names:
        vm_ops.set_vm_state(cl.core, name, "start")
    until(lambda: set(uuids) <= cl.active("hv1") and set(uuids) <= cl.running_domains("hv1"), 120,
          f"{len(names)} VMs running on hv1", 0.01)
    cl.quiet()
    n = len(names)
    others = [x for x in NODES if x != "hv1"]

    def elsewhere() -> bool:
        here = cl.active("hv1")
        there = set().union(*(cl.active(x) for x in others))
        return not (set(uuids) & here) and set(uuids) <= there

    t0 = time.perf_counter()
    node_ops.set_domain_state(cl.core, "hv1", "flush")
    node_ops.wait_domain_state(cl.core, "hv1", "flush", timeout=timeout)
    t_flushed = time.perf_counter()
    until(elsewhere, timeout, f"the {n} VMs running on {' and '.join(others)}", 0.005)
    t_moved = time.perf_counter()
    spread = {x: len(set(uuids) & cl.active(x)) for x in others}
    problem = cl.node("hv1")["problem"]
    result.add(f"flush hv1 ({n} VMs): `set_domain_state(flush)` → `flushed`", "s", t_flushed - t0,
               f"flush_parallel {cl.settings.flush_parallel}; cold moves (the test driver cannot migrate)")
    result.add(f"flush hv1 ({n} VMs): → all {n} active on {'/'.join(others)}", "s", t_moved - t0,
               ", ".join(f"{k}: {v}" for k, v in spread.items()) + (f"; problem: {problem}" if problem else ""))
    cl.quiet()
    t0 = time.perf_counter()
    node_ops.set_domain_state(cl.core, "hv1", "ready")
    node_ops.wait_domain_state(cl.core, "hv1", "ready", timeout=timeout)
    t_ready = time.perf_counter()
    until(lambda: set(uuids) <= cl.active("hv1"), timeout, f"the {n} VMs back on hv1", 0.005)
    t_back = time.perf_counter()
    result.add(f"ready hv1 ({n} VMs): `set_domain_state(ready)` → `ready`", "s", t_ready - t0)
    result.add(f"ready hv1 ({n} VMs): → all {n} active on hv1 again", "s", t_back - t0)
    cl.quiet()


def in_process(stores: Stores, engine: str, tmp: str, args: argparse.Namespace, result: Result) -> list[str]:
    directory = os.path.join(tmp, f"{engine}-agents")
    settings = stores.new(engine, directory)
    cl = InProcess(settings, directory, engine, args.flush_parallel)
    profile_out: list[str] = []
    try:
        progress(engine, "starting 3 in-process agents ...")
        for name in NODES:
            cl.start(name)

        progress(engine, f"hypervisor baseline, {args.reps} starts ...")
        base_start, base_stop = hypervisor_baseline(directory, args.reps)
        result.add("test driver alone: `LibvirtHypervisor.start` (define + create)", "ms", base_start,
                   "no agent, no store")
        result.add("test driver alone: destroy + undefine", "ms", base_stop)

        single, single_uuid = "single", uuid_of(1)
        vm_ops.define_vm(cl.core, vm_xml(single, single_uuid), node="hv1")
        cl.quiet()
        progress(engine, f"1 VM: {args.reps} starts and stops ...")
        single_vm(cl, result, single, single_uuid, args.reps, "1 VM", True, args.pause)

        names = [f"b{i:03d}" for i in range(args.batch)]
        uuids = [uuid_of(1000 + i) for i in range(args.batch)]
        progress(engine, f"defining {args.batch} VMs on hv1 ...")
        for name, uuid in zip(names, uuids):
            vm_ops.define_vm(cl.core, vm_xml(name, uuid), node="hv1")
        cl.quiet()
        progress(engine, f"{args.batch} VMs at once ...")
        many_vms(cl, result, names, uuids)

        if not args.quick:
            progress(engine, f"1 VM with {args.batch + 1} defined: {args.reps} starts and stops ...")
            single_vm(cl, result, single, single_uuid, args.reps, f"1 VM of {args.batch + 1}", True, args.pause)

        n = min(args.flush, len(names))
        if "flush" in args.parts_set and n:
            progress(engine, f"flush of hv1 with {n} VMs, and ready ...")
            flush(cl, result, names[:n], uuids[:n], timeout=max(120.0, n * 5.0))
    finally:
        cl.close()
    if args.profile:
        progress(engine, f"profile: {args.batch} VMs at once with every agent thread under cProfile ...")
        profile_out = profile_batch(stores, engine, tmp, args)
    return profile_out


class ThreadProfiles:
    """cProfile in every thread started while installed (threading.setprofile): the agents' control
    loops, store watchers, reconcile and flush threads, the libvirt event loop. Not this thread."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _bootstrap(self, *_args: Any) -> None:
        profiler = cProfile.Profile()
        with self._lock:
            self.profiles.append(profiler)
        profiler.enable()  # replaces this hook in the new thread

    def __enter__(self) -> "ThreadProfiles":
        threading.setprofile(self._bootstrap)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]

    def clear(self) -> None:
        """Forget what was recorded so far. (A profiler can only be enabled and disabled from its
        own thread; clearing it from another is safe under the GIL.)"""
        with self._lock:
            for profiler in self.profiles:
                profiler.clear()  # type: ignore[attr-defined]

    def report(self, sort: str, top: int) -> list[str]:
        text = io.StringIO()
        with self._lock:
            profiles = [p for p in self.profiles if p.getstats()]
        stats = pstats.Stats(*profiles, stream=text) if profiles else None
        if stats is None:
            return ["(nothing profiled)"]
        stats.sort_stats(sort).print_stats(top)
        lines = text.getvalue().splitlines()
        first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        return [line.rstrip() for line in lines[first:] if line.strip()]


def profile_batch(stores: Stores, engine: str, tmp: str, args: argparse.Namespace) -> list[str]:
    """The start of ``args.batch`` VMs at once again, on a new cluster whose 3 agents run with every
    thread under cProfile (so slower than unprofiled); the functions that took the time."""
    directory = os.path.join(tmp, f"{engine}-profile")
    settings = stores.new(engine, directory)
    with ThreadProfiles() as profiles:
        cl = InProcess(settings, directory, engine, args.flush_parallel)
        try:
            for name in NODES:
                cl.start(name)
            names = [f"p{i:03d}" for i in range(args.batch)]
            uuids = [uuid_of(5000 + i) for i in range(args.batch)]
            for name, uuid in zip(names, uuids):
                vm_ops.define_vm(cl.core, vm_xml(name, uuid), node="hv1")
            cl.quiet()
            time.sleep(0.2)
            profiles.clear()  # only the batch: drop what start-up and the defines cost
            hv = cl.agents["hv1"].hv
            t0 = time.perf_counter()
            for name in names:
                vm_ops.set_vm_state(cl.core, name, "start")
            until(lambda: set(uuids) <= set(hv.active()), 300, f"all {args.batch} VMs active", 0.002)
            took = ms(time.perf_counter() - t0)
            cl.quiet()
        finally:
            cl.close()
    head = (f"\n#### Profile ({engine}): {args.batch} VMs started at once, every agent thread under cProfile "
            f"(all active after {took:.0f} ms, slowed by the profiler); top {args.top}")
    return ([head + " by own time\n", "```"] + profiles.report("tottime", args.top) + ["```", "",
            f"Top {args.top} by cumulative time:\n", "```"] + profiles.report("cumulative", args.top) + ["```"])


# --- `pvc agent` subprocesses (parts 3 and 4) ---------------------------------------------------


def agent_config(path: str, settings: Settings, node: dict[str, Any], keepalive: float, fence_intervals: int) -> str:
    """A configuration file for a `pvc agent` on the cluster of ``settings`` (tests/agent_fixtures.py's)."""
    data = {"pvc": {
        "debug": False,
        "coordinators": list(settings.coordinators),
        "api": {"listen_address": "127.0.0.1", "authentication": {"enabled": False}, "ssl": {"enabled": False}},
        "store": {"path": settings.store_path or "", "chroot": settings.zk_chroot or "/"},
        "system": {"intervals": {"keepalive_interval": keepalive},
                   "fencing": {"intervals": {"fence_intervals": fence_intervals}}},
        "node": node,
    }}
    with open(path, "w") as f:
        json.dump(data, f)  # JSON is YAML
    return path


def spawn_agent(config: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(config + ".log", "ab") as log:
        return subprocess.Popen([PVC, "--config", config, "agent"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def daemon_state(core: Cluster, name: str) -> str | None:
    key = schema.node_key(name, "daemonstate")
    entry = core.store.get_many([key])[key]
    return entry.value if entry is not None else None


def wait_running(core: Cluster, proc: subprocess.Popen[bytes], name: str, config: str, timeout: float = 60) -> None:
    def running() -> bool:
        if proc.poll() is not None:
            with open(config + ".log", errors="replace") as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"`pvc agent` for {name} exited ({proc.returncode}):\n{tail}")
        return daemon_state(core, name) == "run"

    until(running, timeout, f"the `pvc agent` of {name} to run", 0.01)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def detection(stores: Stores, engine: str, tmp: str, args: argparse.Namespace, env: dict[str, str],
              result: Result) -> None:
    """SIGKILL a `pvc agent` (node hvk) and time until the coordinator agent hv1 (in this process,
    same intervals) has marked it dead."""
    interval, fences = args.keepalive_interval, args.fence_intervals
    directory = os.path.join(tmp, f"{engine}-detect")
    settings = stores.new(engine, directory).replace(keepalive_interval=interval, fence_intervals=fences)
    core = Cluster(settings)
    if engine == "zookeeper":
        init_cluster(core)
    uri_path = os.path.join(directory, "hv1.xml")
    with open(uri_path, "w") as f:
        f.write(NODE_FILE.format(cpus=4))
    coordinator_core = Cluster(settings.replace(node_name="hv1", libvirt_uri=f"test://{uri_path}", node_coordinator=True))
    coordinator = Agent(coordinator_core)
    killed_path = os.path.join(directory, "hvk.xml")
    with open(killed_path, "w") as f:
        f.write(NODE_FILE.format(cpus=4))
    config = agent_config(os.path.join(directory, "hvk.json"), settings,
                          {"name": "hvk", "libvirt_uri": f"test://{killed_path}", "coordinator": True},
                          interval, fences)
    rng = random.Random(args.seed)
    samples: list[float] = []
    ages: list[float] = []
    bound = interval * fences + interval
    try:
        coordinator.start()
        until(lambda: daemon_state(core, "hv1") == "run", 30, "hv1 to run", 0.01)
        for trial in range(args.kills):
            proc = spawn_agent(config, env)
            try:
                wait_running(core, proc, "hvk", config)
                time.sleep(interval + rng.uniform(0, interval))  # a random point of its keepalive cycle
                stamp = core.store.get(schema.node_key("hvk", "keepalive")).value
                progress(engine, f"kill {trial + 1}/{args.kills}: SIGKILL to the `pvc agent` of hvk; the bound is "
                         f"{interval:g} × {fences} + {interval:g} = {bound:g} s ...")
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                killed = time.monotonic()
                ages.append(time.time() - float(stamp))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            until(lambda: daemon_state(core, "hvk") == "dead", bound + 30, "hvk to be marked dead", 0.005)
            samples.append(time.monotonic() - killed)
    finally:
        coordinator.stop()
        coordinator_core.close()
        core.close()
    result.add(f"killed `pvc agent`: SIGKILL → `dead` (interval {interval:g} s × {fences})", "s", samples,
               f"bound {interval:g} × {fences} + {interval:g} = {bound:g} s; the last keepalive stamp was "
               f"{', '.join(f'{a:.1f}' for a in ages)} s old at the kill (whole-second stamps)")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and Threads of a process, and its open file descriptors (fds)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, quiet_share: float = 0.02, window: float = 1.0, timeout: float = 60) -> float:
    """Wait until the process used less than ``quiet_share`` of a CPU over ``window`` s; seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < quiet_share * window:
            break
    return time.monotonic() - t0


def memory(stores: Stores, engine: str, tmp: str, args: argparse.Namespace, env: dict[str, str],
           result: Result) -> None:
    """RSS and CPU of a `pvc agent` (node hvm, product default intervals) idle, with ``args.running``
    VMs running on it, and with ``args.defined`` VMs defined in the cluster."""
    directory = os.path.join(tmp, f"{engine}-memory")
    settings = stores.new(engine, directory)
    interval = Settings().keepalive_interval
    core = Cluster(settings)
    if engine == "zookeeper":
        init_cluster(core)
    node_path = os.path.join(directory, "hvm.xml")
    with open(node_path, "w") as f:
        f.write(NODE_FILE.format(cpus=64).replace("16777216", str(1 << 30)))  # room for 1,000 VMs
    config = agent_config(os.path.join(directory, "hvm.json"), settings,
                          {"name": "hvm", "libvirt_uri": f"test://{node_path}", "coordinator": True},
                          interval, Settings().fence_intervals)
    proc = spawn_agent(config, env)

    def measure(label: str) -> None:
        waited = settle(proc.pid)
        status = proc_status(proc.pid)
        before = cpu_seconds(proc.pid)
        time.sleep(args.cpu_window)
        share = (cpu_seconds(proc.pid) - before) / args.cpu_window * 100
        result.add(f"`pvc agent` VmRSS, {label}", "MiB", status["VmRSS"] / 1024,
                   f"VmHWM {status['VmHWM'] / 1024:.1f} MiB, {status['Threads']} threads, {status['fds']} open "
                   f"fds; settled after {waited:.0f} s")
        result.add(f"`pvc agent` CPU, {label}", "%", share, f"of one CPU over {args.cpu_window:g} s "
                   f"(keepalive every {interval:g} s)")

    try:
        wait_running(core, proc, "hvm", config)
        if node_ops.get_domain_state(core, "hvm")["domain_state"] != "ready":
            node_ops.set_domain_state(core, "hvm", "ready")
            node_ops.wait_domain_state(core, "hvm", "ready", timeout=30)
        progress(engine, "memory: idle ...")
        measure("idle, no VMs")

        running = args.running
        progress(engine, f"memory: defining and starting {running} VMs ...")
        t0 = time.perf_counter()
        for i in range(running):
            vm_ops.define_vm(core, vm_xml(f"m{i:04d}", uuid_of(10_000 + i)), node="hvm")
        t_defined = time.perf_counter()
        for i in range(running):
            vm_ops.set_vm_state(core, f"m{i:04d}", "start")
        key = schema.node_key("hvm", "runningdomains")

        def all_running() -> bool:
            entry = core.store.get_many([key])[key]
            return entry is not None and len(entry.value.split()) >= running

        until(all_running, 120, f"{running} VMs reported running on hvm", 0.01)
        t_running = time.perf_counter()
        result.add(f"{running} × `define_vm`, one after another", "s", t_defined - t0)
        result.add(f"{running} VMs on the `pvc agent`: first start write → all in `runningdomains`", "s",
                   t_running - t_defined)
        measure(f"{running} VMs running")

        extra = args.defined - running
        if extra > 0:
            progress(engine, f"memory: {extra} more VMs (stopped), written straight into the store ...")
            ops: list[Create] = []
            for i in range(running, args.defined):
                uuid = uuid_of(10_000 + i)
                values = {"state": "stop", "node": "hvm", "lastnode": "", "failedreason": "", "consolelog": "",
                          "rbdlist": "", "xml": vm_xml(f"m{i:04d}", uuid)}
                ops.append(Create(schema.domain(uuid), f"m{i:04d}"))
                ops += [Create(schema.domain_key(uuid, f), values[f]) for f in schema.DOMAIN_FIELDS]
                if len(ops) >= FILL_BATCH * (1 + len(schema.DOMAIN_FIELDS)):
                    core.store.commit(ops)
                    ops = []
            if ops:
                core.store.commit(ops)
            measure(f"{args.defined:,} VMs defined, {running} running")
    finally:
        stop_process(proc)
        core.close()


def code_version() -> str:
    """The commit measured, and whether the work tree differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "pvc"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' with uncommitted changes in pvc/' if dirty else ''}"


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="both")
    parser.add_argument("--zookeeper", metavar="HOST:PORT",
                        help="use this ZooKeeper (a fresh chroot per cluster) instead of starting a throwaway one")
    parser.add_argument("--reps", type=int, default=20, help="measured start/stop cycles of one VM (after 2 unmeasured)")
    parser.add_argument("--pause", type=float, default=0.45,
                        help="quiet (s, plus 0 to 50 ms at random) before each start and stop of one VM, so "
                        "each is a change on its own (the agent publishes its figures at most every 0.2 s, "
                        "and a start is followed by a second publication for its hypervisor events)")
    parser.add_argument("--batch", type=int, default=100, help="VMs started at once")
    parser.add_argument("--flush", type=int, default=50, help="running VMs on the flushed node (at most --batch)")
    parser.add_argument("--flush-parallel", type=int, default=Settings().flush_parallel,
                        help="the agents' flush_parallel (VMs moved at a time)")
    parser.add_argument("--keepalive-interval", type=float, default=None,
                        help="keepalive interval (s) of the killed agent and its coordinator "
                        "(default: the product's, 5; with --quick: 1)")
    parser.add_argument("--fence-intervals", type=int, default=None,
                        help="intervals without a keepalive before a node is dead (default: the product's, 6; "
                        "with --quick: 3)")
    parser.add_argument("--kills", type=int, default=3, help="agents killed per engine")
    parser.add_argument("--running", type=int, default=100, help="VMs running on the measured `pvc agent`")
    parser.add_argument("--defined", type=int, default=1000, help="VMs defined in all for the last memory figure")
    parser.add_argument("--cpu-window", type=float, default=None,
                        help="seconds over which the agent's CPU use is measured (default: one keepalive, 5; "
                        "with --quick: 1)")
    parser.add_argument("--parts", default="start,flush,detect,memory",
                        help="comma-separated parts to run: start (1 and 100 VMs), flush, detect, memory")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill times")
    parser.add_argument("--profile", action="store_true",
                        help="also start --batch VMs at once on a new cluster with every agent thread under "
                        "cProfile, and print the top functions")
    parser.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    parser.add_argument("--log", metavar="FILE", help="keep the in-process agents' log (INFO) in FILE")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (under a minute): 5 cycles of one VM (not repeated with the others "
                        "defined), 50 VMs at once, a flush of 20, one kill at 1 s × 3, memory with 100 and "
                        "1,000 VMs, 1 s CPU windows")
    args = parser.parse_args(argv)
    given = set(a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv))
    if args.quick:
        for option, value in (("--reps", 5), ("--batch", 50), ("--flush", 20), ("--kills", 1)):
            if option not in given:
                setattr(args, option[2:].replace("-", "_"), value)
    if args.keepalive_interval is None:
        args.keepalive_interval = 1.0 if args.quick else Settings().keepalive_interval
    if args.fence_intervals is None:
        args.fence_intervals = 3 if args.quick else Settings().fence_intervals
    if args.cpu_window is None:
        args.cpu_window = 1.0 if args.quick else Settings().keepalive_interval
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - {"start", "flush", "detect", "memory"}:
        parser.error(f"unknown parts: {', '.join(sorted(parts - {'start', 'flush', 'detect', 'memory'}))}")
    args.parts_set = parts
    if "flush" in parts and "start" not in parts:
        parser.error("the flush part runs after the start part (on its cluster): give --parts start,flush")
    if args.reps < 1 or args.batch < 1 or args.flush < 1 or args.kills < 0 or args.running < 1:
        parser.error("--reps, --batch, --flush and --running must be at least 1")
    if not os.path.exists(PVC):
        parser.error("the `pvc` console script is not installed (pip install -e .)")
    quiet_logs()

    command = "python3 benchmarks/bench_agent.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    results: list[Result] = []
    profiles: list[str] = []
    counter = WarningCounter()
    with tempfile.TemporaryDirectory(prefix="pvc-bench-") as tmp, Stores(tmp, args.zookeeper) as stores:
        log_path = args.log or os.path.join(tmp, "agents.log")
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(name)s: %(message)s"))
        pvc_log = logging.getLogger("pvc")
        pvc_log.setLevel(logging.INFO)
        kazoo_log = logging.getLogger("kazoo")  # its errors too: into the log and the count, not stderr
        for logger in (pvc_log, kazoo_log):
            logger.addHandler(handler)
            logger.addHandler(counter)
        kazoo_log.propagate = False
        env = command_env(tmp)
        try:
            for engine in engines(args.engine):
                result = Result(engine)
                results.append(result)
                if "start" in parts:
                    profiles += in_process(stores, engine, tmp, args, result)
                if "detect" in parts and args.kills:
                    detection(stores, engine, tmp, args, env, result)
                if "memory" in parts:
                    memory(stores, engine, tmp, args, env, result)
        finally:
            for logger in (pvc_log, kazoo_log):
                logger.removeHandler(handler)
                logger.removeHandler(counter)
            kazoo_log.propagate = True
            handler.close()

    print(f"\npvc agent benchmark: {machine_line()}; code: {code_version()}")
    print(f"command: `{command}` ({time.monotonic() - started:.0f} s)")
    for result in results:
        print(f"\n### {result.engine}\n")
        print("\n".join(result.table()))
    print("\nTimes of the in-process agents are from before the write (perf_counter), polled every 0.5 ms "
          "(one VM) or 2 ms (many); they run 3 agents, the admin and this poll in one Python process. "
          "Agent intervals: the product defaults, except for the killed agent and its coordinator.")
    if counter.records:
        kinds: dict[str, int] = {}
        for line in counter.records:
            kinds[line] = kinds.get(line, 0) + 1
        print(f"\n{len(counter.records)} warnings or errors logged in this process (the agents, kazoo), "
              f"{len(kinds)} distinct{f'; the full log is in {args.log}' if args.log else ''}:")
        for line, count in list(kinds.items())[:12]:
            print(f"- {count} × {line[:300]}")
    print("\n".join(profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
