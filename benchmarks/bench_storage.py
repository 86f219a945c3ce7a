#!/usr/bin/env python3
"""Measure the storage actions through `pvc serve` next to the bare Ceph commands they run (issue 9).

The script starts a lab Ceph of its own (scripts/ceph-lab, as the tests do: 1 mon, 1 mgr, 2 memstore
OSDs, on free ports, in a temporary directory; stopped at exit, also on Ctrl-C or SIGTERM, and by
the lab's watchdog when this process is killed). Per store engine it starts a real `pvc serve`
subprocess on a free port: on the embedded store with its local node agent (node hv1 on libvirt's
test driver, `pvc.ceph.config` the lab's ceph.conf, authentication off), or on a throwaway
ZooKeeper with `--no-agent` and a `pvc agent` process for hv1. It waits until hv1 is the primary
coordinator and has published the first Ceph figures, then adds a file-backed OSD through the API
(and one with the bare commands), and for N rounds times, over one keep-alive HTTP connection, each
storage action, and right beside it the bare `ceph`/`rbd` command(s) the agent's handler runs for
that action (pvc/agent/ceph.py: the same arguments, the agent's environment), with
time.perf_counter around subprocess.run. API and bare alternate step by step (on their own pools,
volumes and snapshots; on the same OSD and flag), and which of the two goes first alternates from
round to round, so that the machine's load weighs on both alike.

It prints one markdown table: action, API p50, bare p50, and the overhead (the median of the
per-round differences API − bare), per engine. Every API answer is checked (200 and the handler's
exact message) and every bare command (exit 0, and none of the refusals Ceph reports with exit 0);
a failed step stops the run with the answer shown. Measured, not asserted (DESIGN.md, "Performance
design"). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

from common import (  # beside this script; it puts the repository on sys.path first
    ENGINES,
    PVC,
    ROOT,
    Server,
    Stores,
    code_version,
    command_env,
    engines,
    machine_line,
    quiet_logs,
)

import yaml  # noqa: E402

from pvc.agent.ceph import FILE_OSD_BYTES, IMAGE_FEATURES, POLL, cephx_key  # noqa: E402
from pvc.agent.ceph_exec import environment  # noqa: E402
from pvc.lib.config import Settings  # noqa: E402
from pvc.lib.core import Cluster  # noqa: E402
from pvc.lib.ops.cluster import init_cluster  # noqa: E402
from tests.ceph_fixtures import CephLab, start_lab  # noqa: E402

API = "/api/v1"
S = f"{API}/storage/ceph"
NODE = "hv1"
GIB = 1024**3
PGS = 8
#: The OSDs' CRUSH weight (the lab's memstore OSDs weigh about as much: 1 GiB).
WEIGHT = 0.001
#: Deadlines of the script's own waits (bounded polls, never sleeps for a state).
START_TIMEOUT = 90.0
SETTLE_TIMEOUT = 180.0
NODE_FILE = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>4</active><nodes>1</nodes><sockets>1</sockets>
  <cores>4</cores><threads>1</threads></cpu>
  <memory>16777216</memory>
</node>
"""


class StepFailed(RuntimeError):
    """A step did not do what it must: the run stops, showing the answer."""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the two sides ------------------------------------------------------------------------------


class Api:
    """One keep-alive HTTP connection to `pvc serve`; every answer is checked."""

    def __init__(self, server: Server, timeout: float = 700.0):
        self.server = server
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)

    def _send(self, method: str, path: str, form: dict[str, Any] | None) -> tuple[float, int, bytes, str]:
        body = urlencode(form).encode() if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
        t0 = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        ms = (time.perf_counter() - t0) * 1000
        return ms, response.status, data, response.getheader("Connection", "")

    def _fail(self, method: str, path: str, form: Any, status: int, data: bytes, why: str) -> StepFailed:
        return StepFailed(f"{method} {path} {form or ''}: {why}\n  answer: {status} "
                          f"{data.decode(errors='replace')}\n  the server's log ends:\n{self.server.log_tail(20)}")

    def get(self, path: str) -> Any:
        """An untimed read: the parsed answer, which must be 200."""
        _, status, data, _ = self._send("GET", path, None)
        if status != 200:
            raise self._fail("GET", path, None, status, data, "not 200")
        return json.loads(data)

    def action(self, method: str, path: str, form: dict[str, Any] | None, expect: str) -> float:
        """Milliseconds from sending the request to having read the whole answer, which must be
        200 with exactly the message ``expect``, on a connection kept open."""
        ms, status, data, connection = self._send(method, path, form)
        try:
            message = json.loads(data).get("message")
        except (ValueError, AttributeError):
            message = None
        if status != 200 or message != expect:
            raise self._fail(method, path, form, status, data, f"expected 200 {expect!r}")
        if connection.lower() == "close":
            raise self._fail(method, path, form, status, data, "the server closed the keep-alive connection")
        return ms

    def read(self, path: str, kind: str) -> float:
        """A timed GET of the published Ceph figures (status or df): 200, of ``kind``, with text."""
        ms, status, data, _ = self._send("GET", path, None)
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        if status != 200 or body.get("type") != kind or not body.get("ceph_data"):
            raise self._fail("GET", path, None, status, data, f"expected 200 with {kind} figures")
        return ms

    def close(self) -> None:
        self.conn.close()


#: Ceph's refusals that come with exit code 0 (the agent reads them from stderr too).
EXIT_0_REFUSALS = ("already exists", "does not exist")


class Bare:
    """The bare commands, run as the agent runs them: argument lists, the agent's environment
    (system PATH, C locale, CEPH_CONF = the lab's), their own session, stdin closed or fed."""

    def __init__(self, conf: str):
        self.env = environment(Settings(ceph_config=conf))

    def run(self, argv: Sequence[str], stdin: str | None = None) -> tuple[float, str]:
        """Milliseconds of one command (time.perf_counter around subprocess.run) and its stdout."""
        t0 = time.perf_counter()
        try:
            done = subprocess.run(list(argv), env=self.env, input=stdin, capture_output=True, text=True,
                                  timeout=300, start_new_session=True, close_fds=True,
                                  **({} if stdin is not None else {"stdin": subprocess.DEVNULL}))
        except subprocess.TimeoutExpired as e:
            raise StepFailed(f"{shlex.join(argv)}: no answer in {e.timeout:.0f} s") from None
        ms = (time.perf_counter() - t0) * 1000
        refusal = argv[0] == "ceph" and any(r in done.stderr for r in EXIT_0_REFUSALS)
        if done.returncode != 0 or refusal:
            raise StepFailed(f"{shlex.join(argv)}: exit {done.returncode}\n  stdout: {done.stdout.strip()}\n"
                             f"  stderr: {done.stderr.strip()}")
        return ms, done.stdout

    def seq(self, *commands: Sequence[str]) -> float:
        """The commands one after the other, as the handler runs them: their total milliseconds."""
        return sum(self.run(argv)[0] for argv in commands)

    def json(self, argv: Sequence[str]) -> Any:
        return json.loads(self.run([*argv, "--format", "json"])[1])


# --- the OSD with bare commands: what the handlers osd_add (a file) and osd_remove run -------------


#: The ceph-osd daemons this script started itself (reaped at exit, after the lab's stop killed them).
DAEMONS: list[subprocess.Popen] = []


def bare_osd_add(bare: Bare, path: str, weight: float) -> tuple[float, str, subprocess.Popen]:
    """pvc/agent/ceph.py's osd_add on a file, command for command: the sparse file, `ceph osd new`
    with a new cephx key, the data directory Ceph's configuration names, the keyring, `ceph-osd
    --mkfs`, the daemon, `ceph osd dump` every POLL s until it is up, `ceph osd crush reweight`.
    Milliseconds, the OSD's id, and its process."""
    t0 = time.perf_counter()
    with open(path, "xb") as f:
        f.truncate(FILE_OSD_BYTES)
    osd_uuid = str(uuidlib.uuid4())
    secret = json.dumps({"cephx_secret": cephx_key()})
    osd_id = bare.run(["ceph", "osd", "new", osd_uuid, "-i", "-"], stdin=secret)[1].strip()
    if not osd_id.isdigit():
        raise StepFailed(f"ceph osd new printed {osd_id!r}, not an OSD id")
    data = bare.run(["ceph-osd", "-i", osd_id, "--show-config-value", "osd_data"])[1].strip()
    os.makedirs(data, exist_ok=True)
    keyring = os.path.join(data, "keyring")
    fd = os.open(keyring, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[osd.{osd_id}]\n\tkey = {json.loads(secret)['cephx_secret']}\n")
    store = ["--osd-data", data, "--keyring", keyring, "--osd-objectstore", "bluestore", "--bluestore-block-path", path,
             "--bluestore-block-create", "false", "--bluestore-block-db-create", "false",
             "--bluestore-block-wal-create", "false"]
    bare.run(["ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, *store])
    with open(os.path.join(data, "ceph-osd.out"), "ab") as out:
        proc = subprocess.Popen(["ceph-osd", "-f", "-i", osd_id, *store], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=bare.env, start_new_session=True, close_fds=True)
    DAEMONS.append(proc)
    deadline = time.monotonic() + 120
    pause = threading.Event()
    while not any(o["osd"] == int(osd_id) and o["up"] == 1 for o in bare.json(["ceph", "osd", "dump"])["osds"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            state = "exited" if proc.poll() is not None else "runs"
            raise StepFailed(f"bare OSD {osd_id} did not come up (ceph-osd {state}); see {data}/ceph-osd.out")
        pause.wait(POLL)  # the handler's own pause between two looks (Ceph offers no watch)
    bare.run(["ceph", "osd", "crush", "reweight", f"osd.{osd_id}", f"{weight:g}"])
    return (time.perf_counter() - t0) * 1000, osd_id, proc


def bare_osd_remove(bare: Bare, osd_id: str, proc: subprocess.Popen, path: str) -> float:
    """pvc/agent/ceph.py's osd_remove, command for command: `ceph osd dump`, `ceph osd out`, `ceph pg
    dump pgs_brief` every POLL s until no PG is on it, the data directory, SIGTERM to its daemon
    (watched every 0.05 s until it is gone), `ceph osd down`, `ceph osd purge`, its files removed."""
    t0 = time.perf_counter()
    osds = {o["osd"]: o for o in bare.json(["ceph", "osd", "dump"])["osds"]}
    if osds[int(osd_id)].get("in"):
        bare.run(["ceph", "osd", "out", osd_id])
    deadline = time.monotonic() + 300
    pause = threading.Event()
    while True:
        dump = bare.json(["ceph", "pg", "dump", "pgs_brief"])
        pgs = dump.get("pg_stats", []) if isinstance(dump, dict) else dump
        ready = not (isinstance(dump, dict) and dump.get("pg_ready") is False)
        if ready and not any(int(osd_id) in pg.get("up", []) + pg.get("acting", []) for pg in pgs):
            break
        if time.monotonic() > deadline:
            raise StepFailed(f"bare OSD {osd_id} still holds placement groups after 300 s")
        pause.wait(POLL)
    data = bare.run(["ceph-osd", "-i", osd_id, "--show-config-value", "osd_data"])[1].strip()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    bare.run(["ceph", "osd", "down", osd_id])
    bare.run(["ceph", "osd", "purge", osd_id, "--yes-i-really-mean-it"])
    shutil.rmtree(data, ignore_errors=True)
    os.unlink(path)
    return (time.perf_counter() - t0) * 1000


# --- waiting for states (untimed, bounded polls) ----------------------------------------------------


def until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        pause.wait(interval)


def settled(bare: Bare) -> bool:
    """Every OSD up, every placement group active+clean (Ceph has stopped moving data)."""
    status = bare.json(["ceph", "status"])
    osdmap, pgmap = status["osdmap"], status["pgmap"]
    clean = sum(s["count"] for s in pgmap.get("pgs_by_state", []) if s["state_name"] == "active+clean")
    return osdmap["num_osds"] == osdmap["num_up_osds"] and clean == pgmap["num_pgs"]


# --- one engine ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One action's samples (ms) in one engine: API and bare, paired by round."""

    api: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)


#: The table's rows, in order, with the bare command(s) the handler runs (for the legend).
ACTIONS: list[tuple[str, str]] = [
    ("pool add (8 PGs)", "ceph osd pool create P 8 8 replicated; ceph osd pool application enable P rbd"),
    ("volume add 1G",
     f"rbd create --size 1073741824B --image-feature {IMAGE_FEATURES} P/V; rbd info --format json P/V"),
    ("volume resize 2G", "rbd resize --size 2147483648B P/V; rbd info --format json P/V"),
    ("snapshot add", "rbd snap create P/V@S"),
    ("volume rename", "rbd rename P/V P/W; rbd info --format json P/W"),
    ("snapshot rename", "rbd snap rename P/W@S P/W@T"),
    ("snapshot remove", "rbd snap rm P/W@T"),
    ("volume remove", "rbd snap purge P/W; rbd rm P/W"),
    ("cluster-option set noout", "ceph osd set noout"),
    ("cluster-option unset noout", "ceph osd unset noout"),
    ("OSD out", "ceph osd out ID"),
    ("OSD in", "ceph osd in ID"),
    ("pool remove", "ceph osd pool rm P P --yes-i-really-really-mean-it"),
    ("OSD add, file-backed (once)", "a sparse 10 GiB file; ceph osd new; ceph-osd --show-config-value osd_data; "
     "keyring; ceph-osd --mkfs; ceph-osd -f; ceph osd dump every 0.25 s until up; ceph osd crush reweight"),
    ("OSD remove (once)", "ceph osd dump; ceph osd out; ceph pg dump pgs_brief every 0.25 s until none on it; "
     "ceph-osd --show-config-value osd_data; SIGTERM, wait; ceph osd down; ceph osd purge; rm"),
    ("read: status (GET /storage/ceph)", "ceph status (what the primary publishes; the API reads the tree)"),
    ("read: df (GET /storage/ceph/df)", "rados df (what the primary publishes; the API reads the tree)"),
]


class Engine:
    """`pvc serve` (and on ZooKeeper a `pvc agent`) on a fresh store, node hv1 on the lab."""

    def __init__(self, engine: str, lab: CephLab, stores: Stores, tmp: str):
        self.engine = engine
        self.dir = os.path.join(tmp, engine)
        os.makedirs(self.dir)
        self.agent: subprocess.Popen | None = None
        self.server: Server | None = None
        self.agent_log = os.path.join(self.dir, "agent.log")
        settings = stores.new(engine, self.dir)
        if engine == "zookeeper":
            core = Cluster(settings)
            try:
                init_cluster(core)
            finally:
                core.close()
        node_file = os.path.join(self.dir, "hv1.xml")
        with open(node_file, "w") as f:
            f.write(NODE_FILE)
        config = {"pvc": {
            "debug": False,
            "coordinators": list(settings.coordinators),
            "api": {"listen_address": "127.0.0.1", "authentication": {"enabled": False}, "ssl": {"enabled": False}},
            "store": {"path": settings.store_path} if settings.store_path else {"chroot": settings.zk_chroot},
            "node": {"name": NODE, "libvirt_uri": f"test://{node_file}", "coordinator": True},
            "ceph": {"config": lab.conf},
        }}
        self.config = os.path.join(self.dir, "pvc.yaml")
        with open(self.config, "w") as f:
            yaml.safe_dump(config, f)
        env = command_env(self.dir)
        try:
            if engine == "zookeeper":
                with open(self.agent_log, "wb") as out:
                    self.agent = subprocess.Popen([PVC, "--config", self.config, "agent"], stdin=subprocess.DEVNULL,
                                                  stdout=out, stderr=subprocess.STDOUT, env=env)
            self.server = Server(self.config, self.dir, timeout=60,
                                 args=["--no-agent"] if engine == "zookeeper" else [])
        except BaseException:
            self.stop()
            raise

    def log_tail(self) -> str:
        if self.agent is None:
            return ""
        with open(self.agent_log, "rb") as f:
            return b"".join(f.readlines()[-20:]).decode(errors="replace")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()


def wait_ready(api: Api, engine: Engine) -> None:
    """hv1 running and primary; the first Ceph figures (status and df) published."""
    def primary() -> bool:
        if engine.agent is not None and engine.agent.poll() is not None:
            raise StepFailed(f"pvc agent exited; its log ends:\n{engine.log_tail()}")
        nodes = {n["name"]: n for n in api.get(f"{API}/node")}
        node = nodes.get(NODE, {})
        return node.get("daemon_state") == "run" and node.get("coordinator_state") == "primary"

    until(primary, START_TIMEOUT, f"{NODE} to run as the primary coordinator")

    def figures() -> bool:
        for path in (S, f"{S}/df"):
            _, status, data, _ = api._send("GET", path, None)
            if status == 409:  # "No Ceph status yet": the primary has not published
                return False
            if status != 200:
                raise api._fail("GET", path, None, status, data, "expected 200, or 409 before the first figures")
        return True

    until(figures, START_TIMEOUT, "the first Ceph figures (status, df)")


def measure(engine_name: str, lab: CephLab, stores: Stores, tmp: str, rounds: int) -> dict[str, Row]:
    rows = {name: Row() for name, _ in ACTIONS}
    bare = Bare(lab.conf)
    engine = Engine(engine_name, lab, stores, tmp)
    api = None
    try:
        assert engine.server is not None
        api = Api(engine.server)
        started = time.monotonic()
        wait_ready(api, engine)
        log(f"[{engine_name}] pvc serve on port {engine.server.port}; {NODE} primary with figures after "
            f"{time.monotonic() - started:.1f} s")
        until(lambda: settled(bare), SETTLE_TIMEOUT, "the lab to settle")

        # The OSDs: the bare one first, then the API's (product path), which out/in then use.
        bare_path = os.path.join(engine.dir, "bare-osd.img")
        ms, bare_osd, bare_proc = bare_osd_add(bare, bare_path, WEIGHT)
        rows["OSD add, file-backed (once)"].bare.append(ms)
        until(lambda: settled(bare), SETTLE_TIMEOUT, "the lab to settle after the bare OSD add")
        api_path = os.path.join(engine.dir, "api-osd.img")
        rows["OSD add, file-backed (once)"].api.append(api.action(
            "POST", f"{S}/osd", {"node": NODE, "device": api_path, "weight": WEIGHT},
            f"Created new OSD with block device '{api_path}' on node '{NODE}'."))
        [osd] = [str(o["id"]) for o in api.get(f"{S}/osd") if o["device"] == api_path]
        log(f"[{engine_name}] OSDs added: {osd} (API), {bare_osd} (bare)")
        until(lambda: settled(bare), SETTLE_TIMEOUT, "the lab to settle after the OSD adds")

        for r in range(rounds):
            round_started = time.monotonic()
            one_round(api, bare, rows, engine_name, r, osd)
            log(f"[{engine_name}] round {r + 1}/{rounds} in {time.monotonic() - round_started:.1f} s")

        until(lambda: settled(bare), SETTLE_TIMEOUT, "the lab to settle before the OSD removals")
        rows["OSD remove (once)"].api.append(api.action("DELETE", f"{S}/osd/{osd}", {"yes_i_really_mean_it": "yes"},
                                                         f"Removed OSD '{osd}' from the cluster."))
        until(lambda: settled(bare), SETTLE_TIMEOUT, "the lab to settle after the API's OSD removal")
        rows["OSD remove (once)"].bare.append(bare_osd_remove(bare, bare_osd, bare_proc, bare_path))
        left = {str(o["osd"]) for o in bare.json(["ceph", "osd", "dump"])["osds"]}
        if osd in left or bare_osd in left or api.get(f"{S}/osd") != []:
            raise StepFailed(f"after the removals Ceph still has OSDs {sorted(left)}, the tree {api.get(f'{S}/osd')}")
        return rows
    finally:
        if api is not None:
            api.close()
        engine.stop()


def one_round(api: Api, bare: Bare, rows: dict[str, Row], engine: str, r: int, osd: str) -> None:
    """One round: each action through the API on pool PA and with the bare commands on pool PB,
    step by step; the API goes first in even rounds, the bare commands in odd ones."""
    tag = f"{engine[0]}{r}"
    pa, pb = f"bench-api-{tag}", f"bench-bare-{tag}"
    va, vb, wa, wb = "vol", "vol", "vol-renamed", "vol-renamed"
    sa, sb, ta, tb = "snap", "snap", "snap-renamed", "snap-renamed"
    api_first = r % 2 == 0

    def step(name: str, via_api: Callable[[], float], via_bare: Callable[[], float]) -> None:
        if api_first:
            rows[name].api.append(via_api())
            rows[name].bare.append(via_bare())
        else:
            rows[name].bare.append(via_bare())
            rows[name].api.append(via_api())

    def pair(names: tuple[str, str], via_api: tuple[Callable[[], float], Callable[[], float]],
             via_bare: tuple[Callable[[], float], Callable[[], float]]) -> None:
        """Two actions that undo each other, on the same cluster-wide thing (a flag, an OSD): API
        both, then bare both (or the other way round), the lab settled in between."""
        blocks = [("api", via_api), ("bare", via_bare)]
        for side, (first, second) in (blocks if api_first else blocks[::-1]):
            until(lambda: settled(bare), SETTLE_TIMEOUT, "the lab to settle")
            getattr(rows[names[0]], side).append(first())
            getattr(rows[names[1]], side).append(second())

    step("read: status (GET /storage/ceph)", lambda: api.read(S, "status"), lambda: bare.seq(["ceph", "status"]))
    step("read: df (GET /storage/ceph/df)", lambda: api.read(f"{S}/df", "utilization"),
         lambda: bare.seq(["rados", "df"]))
    step("pool add (8 PGs)",
         lambda: api.action("POST", f"{S}/pool", {"pool": pa, "pgs": PGS},
                            f"Created new RBD pool '{pa}' with '{PGS}' PGs."),
         lambda: bare.seq(["ceph", "osd", "pool", "create", pb, str(PGS), str(PGS), "replicated"],
                          ["ceph", "osd", "pool", "application", "enable", pb, "rbd"]))
    # Untimed: neither volume add must wait for its pool's placement groups to peer.
    until(lambda: settled(bare), SETTLE_TIMEOUT, "the new pools' placement groups to be active+clean")
    step("volume add 1G",
         lambda: api.action("POST", f"{S}/volume", {"pool": pa, "volume": va, "size": "1G"},
                            f"Created new RBD volume '{va}' of size '1G' on pool '{pa}'."),
         lambda: bare.seq(["rbd", "create", "--size", f"{GIB}B", "--image-feature", IMAGE_FEATURES, f"{pb}/{vb}"],
                          ["rbd", "info", "--format", "json", f"{pb}/{vb}"]))
    step("volume resize 2G",
         lambda: api.action("PUT", f"{S}/volume/{pa}/{va}", {"size": "2G"},
                            f"Resized RBD volume '{va}' to size '2G' on pool '{pa}'."),
         lambda: bare.seq(["rbd", "resize", "--size", f"{2 * GIB}B", f"{pb}/{vb}"],
                          ["rbd", "info", "--format", "json", f"{pb}/{vb}"]))
    step("snapshot add",
         lambda: api.action("POST", f"{S}/volume/snapshot", {"pool": pa, "volume": va, "snapshot": sa},
                            f"Created new RBD snapshot '{sa}' of volume '{va}' on pool '{pa}'."),
         lambda: bare.seq(["rbd", "snap", "create", f"{pb}/{vb}@{sb}"]))
    step("volume rename",
         lambda: api.action("PUT", f"{S}/volume/{pa}/{va}", {"name": wa},
                            f"Renamed RBD volume '{va}' to '{wa}' on pool '{pa}'."),
         lambda: bare.seq(["rbd", "rename", f"{pb}/{vb}", f"{pb}/{wb}"],
                          ["rbd", "info", "--format", "json", f"{pb}/{wb}"]))
    step("snapshot rename",
         lambda: api.action("PUT", f"{S}/volume/snapshot/{pa}/{wa}/{sa}", {"name": ta},
                            f"Renamed RBD snapshot '{sa}' to '{ta}' of volume '{wa}' on pool '{pa}'."),
         lambda: bare.seq(["rbd", "snap", "rename", f"{pb}/{wb}@{sb}", f"{pb}/{wb}@{tb}"]))
    step("snapshot remove",
         lambda: api.action("DELETE", f"{S}/volume/snapshot/{pa}/{wa}/{ta}", None,
                            f"Removed RBD snapshot '{ta}' of volume '{wa}' in pool '{pa}'."),
         lambda: bare.seq(["rbd", "snap", "rm", f"{pb}/{wb}@{tb}"]))
    step("volume remove",
         lambda: api.action("DELETE", f"{S}/volume/{pa}/{wa}", None, f"Removed RBD volume '{wa}' in pool '{pa}'."),
         lambda: bare.seq(["rbd", "snap", "purge", f"{pb}/{wb}"], ["rbd", "rm", f"{pb}/{wb}"]))
    pair(("cluster-option set noout", "cluster-option unset noout"),
         (lambda: api.action("POST", f"{S}/cluster-option", {"action": "set", "option": "noout"},
                             "Set OSD property noout on the cluster."),
          lambda: api.action("POST", f"{S}/cluster-option", {"action": "unset", "option": "noout"},
                             "Unset OSD property noout on the cluster.")),
         (lambda: bare.seq(["ceph", "osd", "set", "noout"]), lambda: bare.seq(["ceph", "osd", "unset", "noout"])))
    pair(("OSD out", "OSD in"),
         (lambda: api.action("POST", f"{S}/osd/{osd}/state", {"state": "out"},
                             f"Set OSD {osd} offline in the cluster."),
          lambda: api.action("POST", f"{S}/osd/{osd}/state", {"state": "in"},
                             f"Set OSD {osd} online in the cluster.")),
         (lambda: bare.seq(["ceph", "osd", "out", osd]), lambda: bare.seq(["ceph", "osd", "in", osd])))
    until(lambda: settled(bare), SETTLE_TIMEOUT, "the lab to settle before the pool removals")
    step("pool remove",
         lambda: api.action("DELETE", f"{S}/pool/{pa}", {"yes_i_really_mean_it": "yes"},
                            f"Removed RBD pool '{pa}' and all volumes."),
         lambda: bare.seq(["ceph", "osd", "pool", "rm", pb, pb, "--yes-i-really-really-mean-it"]))
    # Both sides did the same: nothing of the round is left, in Ceph or in the tree.
    pools = bare.json(["ceph", "osd", "pool", "ls"])
    flags = bare.json(["ceph", "osd", "dump"])["flags"].split(",")
    if pa in pools or pb in pools or "noout" in flags or api.get(f"{S}/pool") != []:
        raise StepFailed(f"round {r + 1} left pools {pools}, flags {flags}, tree pools {api.get(f'{S}/pool')}")


# --- the table ------------------------------------------------------------------------------------


def cell(samples: list[float]) -> str:
    return f"{statistics.median(samples):.0f}" if samples else "–"


def overhead(row: Row) -> str:
    """The median of the per-round differences API − bare (paired: same round, same load)."""
    diffs = [a - b for a, b in zip(row.api, row.bare)]
    return f"{statistics.median(diffs):+.0f}" if diffs else "–"


def spread(row: Row) -> str:
    """The lowest and highest per-round difference: how much Ceph's own times vary."""
    diffs = [a - b for a, b in zip(row.api, row.bare)]
    return f"{min(diffs):+.0f} … {max(diffs):+.0f}" if len(diffs) > 1 else "(n = 1)"


def table(results: dict[str, dict[str, Row]]) -> str:
    names = list(results)
    label = {"embedded": "embedded", "zookeeper": "ZooKeeper"}
    head = "| action |" + "".join(
        f" {label[e] + ': ' if len(names) > 1 else ''}API p50 ms | bare command(s) p50 ms | overhead ms | range |"
        for e in names)
    lines = [head, "|---|" + "---:|---:|---:|---:|" * len(names)]
    for name, _ in ACTIONS:
        line = f"| {name} |"
        for e in names:
            row = results[e][name]
            line += f" {cell(row.api)} | {cell(row.bare)} | {overhead(row)} | {spread(row)} |"
        lines.append(line)
    return "\n".join(lines)


def legend() -> str:
    return "\n".join(f"- {name}: `{commands}`" for name, commands in ACTIONS)


# --- main -------------------------------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="both", help="store engines to measure (default both)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every action (default 5; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="2 rounds (unless --rounds is given)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT + os.sep) else sys.executable
    script = os.path.relpath(os.path.abspath(__file__), ROOT)
    command = shlex.join([python, script, *(argv if argv is not None else sys.argv[1:])])
    quiet_logs()
    signal.signal(signal.SIGTERM, _terminate)  # the finally blocks below stop the lab and the servers
    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="pvc-bench-storage-", dir="/tmp")
    lab: CephLab | None = None
    results: dict[str, dict[str, Row]] = {}
    started = time.monotonic()
    try:
        with Stores(tmp) as stores:
            log(f"starting the lab Ceph in {tmp}/ceph ...")
            try:
                lab = start_lab(os.path.join(tmp, "ceph"), watch_pid=os.getpid())
            except BaseException as e:  # pytest.fail (Ceph missing, not healthy) is a BaseException
                if isinstance(e, KeyboardInterrupt):
                    raise
                raise StepFailed(f"the lab Ceph did not start: {e}") from None
            log(f"lab Ceph HEALTH_OK in {lab.start_seconds:.1f} s (mon port {lab.mon_port})")
            for engine in engines(args.engine):
                results[engine] = measure(engine, lab, stores, tmp, rounds)
    except StepFailed as e:
        log(f"\nFAILED: {e}")
        return 1
    except KeyboardInterrupt:
        log("\ninterrupted: stopping the servers and the lab")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if lab is not None:
            try:
                lab.stop()
            except Exception as e:  # noqa: BLE001 - reported; the watchdog stops it anyway
                log(f"stopping the lab failed: {e}")
        for proc in DAEMONS:  # no zombies: the stop killed them
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log(f"ceph-osd {proc.pid} still runs after the lab's stop")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    load_after = os.getloadavg()
    print(f"## Storage actions through `pvc serve` vs the bare Ceph commands ({rounds} rounds)\n")
    print(f"{machine_line()}; commit {code_version()}; load average {load_before[0]:.2f} at the start, "
          f"{load_after[0]:.2f} at the end; {time.monotonic() - started:.0f} s in all\n")
    print(f"`{command}`\n")
    print(table(results))
    print("\nAPI: one keep-alive HTTP connection, from sending the request to having read the whole answer. "
          "Bare: time.perf_counter around subprocess.run of each command the agent's handler runs, summed. "
          "Overhead: the median of the per-round differences (API − bare of the same round); range: their "
          "lowest and highest. "
          "The OSD rows are one sample per engine; the reads are served from the tree, not by Ceph.\n")
    print("Bare command(s) per action (P pool, V/W volume, S/T snapshot):\n")
    print(legend())
    return 0


if __name__ == "__main__":
    sys.exit(main())
