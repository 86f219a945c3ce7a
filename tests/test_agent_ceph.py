"""The node agent's Ceph side against the session's lab Ceph, on both store engines: each handler of
pvc/agent/ceph.py changes Ceph and returns the tree change the table says (checked with ceph/rbd
themselves); Ceph's refusals are clear errors that write nothing; the executor kills what runs past
the deadline or when the agent stops; the figures come in the original's shapes."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import subprocess
import threading
import time
import uuid
from typing import Any, Callable

import pytest

import pvc.agent.ceph  # noqa: F401  # registers the handlers
from pvc.agent import ceph_exec
from pvc.agent.ceph import OSD_SET_FLAGS, OSD_UNSET_FLAGS
from pvc.agent.ceph_figures import POOL_STATS, CephFigures
from pvc.agent.commands import HANDLERS, CommandWorker, Context, Outcome
from pvc.lib import commands as channel
from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import CommandFailed, InvalidArgument, PvcError, Timeout
from pvc.lib.store import Create
from tests.agent_fixtures import until
from tests.ceph_fixtures import CephLab

NODE = "hv1"
MiB = 1024**2


# --- helpers ------------------------------------------------------------------------------------

def context(core: Cluster, lab: CephLab, timeout: float = 60.0, stopping: threading.Event | None = None,
            conf: str | None = None, node: str = NODE) -> Context:
    settings = dataclasses.replace(core.settings, ceph_config=conf or lab.conf)
    return Context(node=node, settings=settings, deadline=time.monotonic() + timeout,
                   stopping=stopping or threading.Event(), core=core)


def run(core: Cluster, lab: CephLab, command: str, **args: Any) -> Outcome:
    """Run a handler and commit its ops, as the command channel does after a success."""
    outcome = HANDLERS[command](context(core, lab), args)
    core.store.commit(list(outcome.ops))
    return outcome


def tree(core: Cluster) -> dict[str, str]:
    store = core.store
    return {p: store.get(p).value for p in store.subtree(schema.CEPH)}


def refused(core: Cluster, lab: CephLab, command: str, error: type[PvcError] = CommandFailed, **args: Any) -> str:
    """Run a handler that must fail; check that it wrote nothing; return its message."""
    before = tree(core)
    with pytest.raises(error) as caught:
        run(core, lab, command, **args)
    assert tree(core) == before
    return caught.value.message


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def pools(lab: CephLab) -> list[str]:
    return lab.ceph("osd", "pool", "ls")


def osd_map(lab: CephLab) -> dict[int, dict]:
    return {o["osd"]: o for o in lab.ceph("osd", "dump")["osds"]}


def drop_pool(lab: CephLab, pool: str) -> None:
    if pool in pools(lab):
        lab.run("ceph", "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")


@pytest.fixture
def pool(core: Cluster, ceph_lab: CephLab) -> Any:
    """A pool made through the handler (in Ceph and in the tree), removed from Ceph afterwards."""
    name = unique("p")
    run(core, ceph_lab, "pool_add", pool=name, pgs=8)
    yield name
    drop_pool(ceph_lab, name)


def dead_conf(lab: CephLab, directory: Any) -> str:
    """A copy of the lab's ceph.conf whose monitor address nobody listens on: every call hangs."""
    with open(lab.conf) as f:
        text = f.read()
    text = re.sub(r"mon host = .*", "mon host = [v2:127.0.0.1:9,v1:127.0.0.1:9]", text)
    path = os.path.join(str(directory), f"dead-{uuid.uuid4().hex[:6]}.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def processes_with_conf(conf: str) -> list[int]:
    """Processes whose environment has CEPH_CONF=conf (the executor's children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if b"CEPH_CONF=" + conf.encode() in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


# --- pools, volumes, snapshots --------------------------------------------------------------------

def test_pool_add_and_remove(core: Cluster, ceph_lab: CephLab) -> None:
    name = unique("p")
    try:
        outcome = run(core, ceph_lab, "pool_add", pool=name, pgs=8)
        assert outcome.message == f"Created new RBD pool '{name}' with '8' PGs."
        detail = {p["pool_name"]: p for p in ceph_lab.ceph("osd", "pool", "ls", "detail")}
        assert detail[name]["pg_num"] == 8 and "rbd" in detail[name]["application_metadata"]
        t = tree(core)
        assert t[schema.pool(name)] == "" and t[schema.pool_key(name, "pgs")] == "8"
        assert t[schema.pool_key(name, "stats")] == "{}"
        assert schema.pool_volumes(name) in t and schema.pool_snapshots(name) in t

        assert "already exists" in refused(core, ceph_lab, "pool_add", pool=name, pgs=8)

        outcome = run(core, ceph_lab, "pool_remove", pool=name)
        assert outcome.message == f"Removed RBD pool '{name}' and all volumes."
        assert name not in pools(ceph_lab)
        assert not [p for p in tree(core) if f"/{name}" in p]
        assert "does not exist" in refused(core, ceph_lab, "pool_remove", pool=name)
    finally:
        drop_pool(ceph_lab, name)


def test_volume_and_snapshot_lifecycle(core: Cluster, ceph_lab: CephLab, pool: str) -> None:
    run(core, ceph_lab, "volume_add", pool=pool, volume="v1", size=64 * MiB)
    info = ceph_lab.rbd("info", "--format", "json", f"{pool}/v1")
    assert info["size"] == 64 * MiB and info["features"] == ["layering", "exclusive-lock"]
    assert json.loads(core.store.get(schema.volume_stats(pool, "v1")).value)["size"] == 64 * MiB
    assert core.store.exists(schema.volume_snapshots(pool, "v1"))

    outcome = run(core, ceph_lab, "volume_resize", pool=pool, volume="v1", size=128 * MiB)
    assert outcome.message == f"Resized RBD volume 'v1' to size '128M' on pool '{pool}'."
    assert ceph_lab.rbd("info", "--format", "json", f"{pool}/v1")["size"] == 128 * MiB
    assert json.loads(core.store.get(schema.volume_stats(pool, "v1")).value)["size"] == 128 * MiB

    run(core, ceph_lab, "snapshot_add", pool=pool, volume="v1", snapshot="s1")
    assert [s["name"] for s in ceph_lab.rbd("snap", "ls", "--format", "json", f"{pool}/v1")] == ["s1"]
    assert core.store.get(schema.snapshot_stats(pool, "v1", "s1")).value == "{}"

    run(core, ceph_lab, "snapshot_rename", pool=pool, volume="v1", snapshot="s1", new="s2")
    assert [s["name"] for s in ceph_lab.rbd("snap", "ls", "--format", "json", f"{pool}/v1")] == ["s2"]
    assert core.store.children(schema.volume_snapshots(pool, "v1")) == ["s2"]
    assert core.store.get(schema.snapshot_stats(pool, "v1", "s2")).value == "{}"

    # a rename moves the volume's keys and its snapshots' in one commit
    outcome = run(core, ceph_lab, "volume_rename", pool=pool, volume="v1", new="v2")
    assert outcome.message == f"Renamed RBD volume 'v1' to 'v2' on pool '{pool}'."
    assert ceph_lab.rbd("ls", "--format", "json", pool) == ["v2"]
    assert core.store.children(schema.pool_volumes(pool)) == ["v2"]
    assert json.loads(core.store.get(schema.volume_stats(pool, "v2")).value)["name"] == "v2"
    assert core.store.children(schema.pool_snapshots(pool)) == ["v2"]
    assert core.store.get(schema.snapshot_stats(pool, "v2", "s2")).value == "{}"

    run(core, ceph_lab, "snapshot_add", pool=pool, volume="v2", snapshot="s3")
    run(core, ceph_lab, "snapshot_remove", pool=pool, volume="v2", snapshot="s3")
    assert [s["name"] for s in ceph_lab.rbd("snap", "ls", "--format", "json", f"{pool}/v2")] == ["s2"]
    assert core.store.children(schema.volume_snapshots(pool, "v2")) == ["s2"]

    # a volume with a snapshot is removed with it
    outcome = run(core, ceph_lab, "volume_remove", pool=pool, volume="v2")
    assert outcome.message == f"Removed RBD volume 'v2' in pool '{pool}'."
    assert ceph_lab.rbd("ls", "--format", "json", pool) == []
    assert core.store.children(schema.pool_volumes(pool)) == []
    assert core.store.children(schema.pool_snapshots(pool)) == []


def test_ceph_refusals_write_nothing(core: Cluster, ceph_lab: CephLab, pool: str) -> None:
    run(core, ceph_lab, "volume_add", pool=pool, volume="v1", size=64 * MiB)
    run(core, ceph_lab, "volume_add", pool=pool, volume="v2", size=64 * MiB)
    assert "File exists" in refused(core, ceph_lab, "volume_add", pool=pool, volume="v1", size=64 * MiB)
    assert "--allow-shrink" in refused(core, ceph_lab, "volume_resize", pool=pool, volume="v1", size=32 * MiB)
    assert "error opening pool" in refused(core, ceph_lab, "volume_add", pool=unique("none"), volume="v", size=MiB)
    assert "No such file" in refused(core, ceph_lab, "volume_remove", pool=pool, volume="nothere")
    assert "File exists" in refused(core, ceph_lab, "volume_rename", pool=pool, volume="v1", new="v2")
    assert "No such file" in refused(core, ceph_lab, "snapshot_add", pool=pool, volume="nothere", snapshot="s")
    run(core, ceph_lab, "snapshot_add", pool=pool, volume="v1", snapshot="s")
    assert "File exists" in refused(core, ceph_lab, "snapshot_add", pool=pool, volume="v1", snapshot="s")
    assert "No such file" in refused(core, ceph_lab, "snapshot_remove", pool=pool, volume="v1", snapshot="x")
    message = refused(core, ceph_lab, "osd_out", osd="999")
    assert message.startswith("Ceph refused") and "osd.999 does not exist" in message
    assert "does not exist" in refused(core, ceph_lab, "osd_in", osd="999")
    assert "OSD 999 does not exist" in refused(core, ceph_lab, "osd_remove", osd="999")
    # nothing of the failures reached Ceph either
    assert sorted(ceph_lab.rbd("ls", "--format", "json", pool)) == ["v1", "v2"]
    assert ceph_lab.rbd("info", "--format", "json", f"{pool}/v1")["size"] == 64 * MiB


@pytest.mark.parametrize(("command", "args"), [
    ("pool_add", {"pool": "a/b", "pgs": 8}),
    ("pool_add", {"pool": "-x", "pgs": 8}),
    ("pool_add", {"pool": "ok", "pgs": 0}),
    ("pool_add", {"pool": "ok", "pgs": True}),
    ("volume_add", {"pool": "p", "volume": "a b", "size": MiB}),
    ("volume_add", {"pool": "p", "volume": "v", "size": -1}),
    ("volume_add", {"pool": "p", "volume": "v", "size": "1G"}),
    ("volume_rename", {"pool": "p", "volume": "v", "new": "x@y"}),
    ("snapshot_add", {"pool": "p", "volume": "v", "snapshot": "--help"}),
    ("osd_in", {"osd": "1; rm -rf /"}),
    ("osd_remove", {"osd": "-1"}),
    ("osd_set", {"option": "bogus"}),
    ("osd_set", {"option": "sortbitwise"}),
    ("osd_unset", {"option": "pglog_hardlimit"}),
    ("osd_add", {"node": NODE, "device": "relative/path", "weight": 1.0}),
    ("osd_add", {"node": NODE, "device": "/tmp/../etc/x", "weight": 1.0}),
    ("osd_add", {"node": NODE, "device": "/tmp/x", "weight": "heavy"}),
    ("osd_add", {"node": "hv2", "device": "/tmp/x", "weight": 1.0}),
])
def test_invalid_arguments_never_reach_ceph(core: Cluster, ceph_lab: CephLab, command: str, args: dict) -> None:
    before = pools(ceph_lab)
    refused(core, ceph_lab, command, InvalidArgument, **args)
    assert pools(ceph_lab) == before


def test_osd_flags(core: Cluster, ceph_lab: CephLab) -> None:
    assert OSD_UNSET_FLAGS == tuple(f for f in OSD_SET_FLAGS if f != "pglog_hardlimit")
    # the list is Ceph's own: its grammar names exactly these
    usage = ceph_lab.run("ceph", "osd", "set", check=False)
    grammar = re.search(r"key\(([a-z_|-]+)\)", usage.stdout + usage.stderr).group(1).split("|")
    assert tuple(grammar) == OSD_SET_FLAGS
    try:
        assert run(core, ceph_lab, "osd_set", option="noout").message == "Set OSD property noout on the cluster."
        assert "noout" in ceph_lab.ceph("osd", "dump")["flags"].split(",")
        assert run(core, ceph_lab, "osd_unset", option="noout").message == "Unset OSD property noout on the cluster."
        assert "noout" not in ceph_lab.ceph("osd", "dump")["flags"].split(",")
        assert "unrecognized flag 'full'" in refused(core, ceph_lab, "osd_set", option="full")
    finally:
        ceph_lab.run("ceph", "osd", "unset", "noout")


def test_osd_out_and_in(core: Cluster, ceph_lab: CephLab) -> None:
    try:
        assert run(core, ceph_lab, "osd_out", osd="1").message == "Set OSD 1 offline in the cluster."
        assert osd_map(ceph_lab)[1]["in"] == 0
        assert run(core, ceph_lab, "osd_in", osd=1).message == "Set OSD 1 online in the cluster."
        assert osd_map(ceph_lab)[1]["in"] == 1
    finally:
        ceph_lab.run("ceph", "osd", "in", "1")


# --- OSDs on files and devices ---------------------------------------------------------------------

def _osd_pid(lab: CephLab, osd_id: int) -> int | None:
    """The ceph-osd the agent started for this lab's OSD (its --osd-data is in the lab's directory)."""
    data = os.path.join(lab.dir, f"osd.{osd_id}").encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as f:
                    zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
            except (OSError, IndexError):
                continue
            if os.path.basename(argv[0]) == b"ceph-osd" and not zombie and data in argv:
                return int(entry)
    return None


@pytest.mark.timeout(240)
def test_osd_add_on_a_file_then_remove(core: Cluster, ceph_lab: CephLab, tmp_path: Any) -> None:
    device = str(tmp_path / "osd.img")  # does not exist yet: made a sparse file
    before = set(osd_map(ceph_lab))
    osd_id = None
    try:
        outcome = run(core, ceph_lab, "osd_add", node=NODE, device=device, weight=0.001)
        osd_id = outcome.data["osd"]
        assert outcome.message == f"Created new OSD with block device '{device}' on node '{NODE}'."
        assert int(osd_id) not in before and osd_map(ceph_lab)[int(osd_id)]["up"] == 1
        tree_osd = {o["id"]: o for o in ceph_lab.ceph("osd", "df")["nodes"]}[int(osd_id)]
        assert tree_osd["crush_weight"] == pytest.approx(0.001, abs=1e-4)
        assert stat.S_ISREG(os.stat(device).st_mode) and os.stat(device).st_blocks * 512 < os.stat(device).st_size
        t = tree(core)
        assert t[schema.osd(osd_id)] == "" and t[schema.osd_key(osd_id, "node")] == NODE
        assert t[schema.osd_key(osd_id, "device")] == device and t[schema.osd_key(osd_id, "stats")] == "{}"
        pid = _osd_pid(ceph_lab, int(osd_id))
        assert pid is not None

        outcome = run(core, ceph_lab, "osd_remove", osd=osd_id)
        assert outcome.message == f"Removed OSD '{osd_id}' from the cluster."
        assert int(osd_id) not in osd_map(ceph_lab)
        until(lambda: _osd_pid(ceph_lab, int(osd_id)) is None, 10, "the OSD's daemon to end")
        assert not os.path.exists(device)
        assert not os.path.exists(os.path.join(ceph_lab.dir, f"osd.{osd_id}"))
        assert not any(p.startswith(schema.osd(osd_id)) for p in tree(core))
        osd_id = None
    finally:
        if osd_id is not None:  # leave the shared lab as it was
            pid = _osd_pid(ceph_lab, int(osd_id))
            if pid:
                os.kill(pid, 9)
            ceph_lab.run("ceph", "osd", "purge", osd_id, "--yes-i-really-mean-it", check=False)


def test_osd_add_on_a_block_device_runs_ceph_volume(core: Cluster, ceph_lab: CephLab, tmp_path: Any) -> None:
    """The production path is not faked: ceph-volume runs, and its error comes back (these machines
    have no device-mapper, so `ceph-volume lvm` cannot work here whatever the device). The disk is
    a loop device of our own over a sparse file, so that nothing else's data is ever at stake."""
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    attached = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, timeout=30)
    assert attached.returncode == 0, f"cannot attach a loop device (root and losetup are needed): {attached.stderr}"
    device = attached.stdout.strip()
    try:
        assert stat.S_ISBLK(os.stat(device).st_mode)
        before = set(osd_map(ceph_lab))
        message = refused(core, ceph_lab, "osd_add", node=NODE, device=device, weight=1.0)
        assert "'ceph-volume lvm zap'" in message or "'ceph-volume lvm create'" in message
        assert set(osd_map(ceph_lab)) == before
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True, timeout=30)


# --- the executor ------------------------------------------------------------------------------------

def test_timeout_kills_the_child(core: Cluster, ceph_lab: CephLab, tmp_path: Any) -> None:
    conf = dead_conf(ceph_lab, tmp_path)
    ctx = context(core, ceph_lab, timeout=1.0, conf=conf)
    started = time.monotonic()
    with pytest.raises(Timeout, match="'ceph osd set noout' did not finish in time on node 'hv1'; it was killed"):
        HANDLERS["osd_set"](ctx, {"option": "noout"})
    assert time.monotonic() - started < 3.0
    assert processes_with_conf(conf) == []


def test_stopping_agent_kills_the_child(core: Cluster, ceph_lab: CephLab, tmp_path: Any) -> None:
    conf = dead_conf(ceph_lab, tmp_path)
    stopping = threading.Event()
    ctx = context(core, ceph_lab, timeout=60.0, stopping=stopping, conf=conf)
    timer = threading.Timer(0.5, stopping.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="agent stopped while 'rbd create' ran"):
        HANDLERS["volume_add"](ctx, {"pool": "p", "volume": "v", "size": MiB})
    assert time.monotonic() - started < 2.5
    assert processes_with_conf(conf) == []
    timer.join()


def test_missing_tool_is_a_clear_error(core: Cluster, ceph_lab: CephLab) -> None:
    with pytest.raises(CommandFailed, match="Ceph is not installed on node 'hv1': ceph-nonexistent was not found"):
        ceph_exec.run(context(core, ceph_lab), ["ceph-nonexistent", "status"])


def test_tools_get_a_clean_environment(core: Cluster, ceph_lab: CephLab, monkeypatch: pytest.MonkeyPatch) -> None:
    # a venv's Python settings would break `ceph` (a script of the system's python3)
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    env = ceph_exec.environment(context(core, ceph_lab).settings)
    assert not [k for k in env if k.startswith("PYTHON")] and env["CEPH_CONF"] == ceph_lab.conf
    assert ".venv" not in env["PATH"]
    status = ceph_exec.run(context(core, ceph_lab), ["ceph", "health"], json_out=True)
    assert status["status"].startswith("HEALTH_")


def test_error_text_is_trimmed_and_bounded() -> None:
    stderr = ("Removing image: 0% complete...failed.\n"
              "2026-11-30T10:12:15.048+0000 7f4f24491380 -1 librbd: rbd image v1 already exists\n\n"
              "rbd: create error: (17) File exists\n")
    assert ceph_exec.error_text(stderr) == "librbd: rbd image v1 already exists rbd: create error: (17) File exists"
    long = ceph_exec.error_text("x" * 5000 + "\nthe reason")
    assert len(long) <= ceph_exec.MAX_ERROR_CHARS + 3 and long.endswith("the reason")


# --- through the command channel ---------------------------------------------------------------------

def test_through_the_command_channel(core: Cluster, ceph_lab: CephLab, add_node: Callable[..., str]) -> None:
    """The handlers' ops are committed by the channel with the result: the caller sees the tree."""
    add_node(NODE, coordinator=True)
    agent_core = Cluster(dataclasses.replace(core.settings, ceph_config=ceph_lab.conf))
    stopping = threading.Event()
    worker = CommandWorker(agent_core, NODE, stopping)
    worker.start()
    name = unique("p")
    try:
        result = channel.run(core, NODE, "pool_add", {"pool": name, "pgs": 8})
        assert result.message == f"Created new RBD pool '{name}' with '8' PGs."
        assert core.store.get(schema.pool_key(name, "pgs")).value == "8" and name in pools(ceph_lab)
        with pytest.raises(CommandFailed, match="already exists"):
            channel.run(core, NODE, "pool_add", {"pool": name, "pgs": 8})
    finally:
        stopping.set()
        worker.stop(10)
        agent_core.close()
        drop_pool(ceph_lab, name)


# --- figures --------------------------------------------------------------------------------------------

def _own_osd(core: Cluster, osd_id: str, node: str) -> None:
    core.store.commit([Create(schema.osd(osd_id)), Create(schema.osd_key(osd_id, "node"), node),
                       Create(schema.osd_key(osd_id, "device"), f"/dev/lab{osd_id}"),
                       Create(schema.osd_key(osd_id, "stats"), "{}")])


OSD_TYPES = {"uuid": str, "up": int, "in": int, "primary_affinity": float, "utilization": float, "var": float,
             "pgs": int, "kb": int, "weight": float, "reweight": float, "node": str, "used": str, "avail": str,
             "wr_ops": str, "wr_data": str, "rd_ops": str, "rd_data": str, "state": str}


def test_figures_round(core: Cluster, ceph_lab: CephLab, pool: str) -> None:
    settings = dataclasses.replace(core.settings, ceph_config=ceph_lab.conf)
    _own_osd(core, "0", NODE)
    _own_osd(core, "1", "hv2")
    uuids = {o["osd"]: o["uuid"] for o in ceph_lab.ceph("osd", "dump")["osds"]}

    primary = CephFigures(core, NODE, settings, lambda: True)
    store = core.store
    # the mgr lists a new pool in `rados df` about a second after it was made: poll
    until(lambda: primary.round() and store.get(schema.pool_key(pool, "stats")).value != "{}", 30,
          "the new pool's stats")
    assert "cluster:" in store.get(schema.CEPH).value and "health: HEALTH_" in store.get(schema.CEPH).value
    assert store.get(schema.CEPH_RADOSDF).value.startswith("POOL_NAME")
    stats = json.loads(store.get(schema.pool_key(pool, "stats")).value)
    assert list(stats) == list(POOL_STATS) and all(type(v) is int for v in stats.values())
    assert stats["id"] == {p["pool_name"]: p["pool_id"] for p in ceph_lab.ceph("osd", "pool", "ls", "detail")}[pool]
    osd0 = json.loads(store.get(schema.osd_key("0", "stats")).value)
    assert {k: type(v) for k, v in osd0.items()} == OSD_TYPES
    assert osd0["uuid"] == uuids[0] and osd0["up"] == 1 and osd0["state"] == "exists,up"
    assert osd0["kb"] > 0 and re.fullmatch(r"[\d.]+[kMGTP]?", osd0["avail"])
    assert store.get(schema.osd_key("1", "stats")).value == "{}"  # hv2's, not this node's

    # another node, not primary: only its own OSDs, /ceph untouched
    status_text = store.get(schema.CEPH).value
    secondary = CephFigures(core, "hv2", settings, lambda: False)
    assert secondary.round() is True
    assert json.loads(store.get(schema.osd_key("1", "stats")).value)["uuid"] == uuids[1]
    assert store.get(schema.CEPH).value == status_text
    # a node with nothing to publish calls no Ceph at all (a dead conf would cost a round)
    idle = CephFigures(core, "hv3", dataclasses.replace(settings, ceph_config="/nonexistent.conf"), lambda: False)
    assert idle.round() is False and idle._problem is None


def test_figures_loop_and_one_log_line_per_problem(core: Cluster, ceph_lab: CephLab, tmp_path: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    _own_osd(core, "0", NODE)
    settings = dataclasses.replace(core.settings, ceph_config=ceph_lab.conf, ceph_figures_interval=0.1)
    figures = CephFigures(core, NODE, settings, lambda: True)
    stop = threading.Event()
    thread = threading.Thread(target=figures.loop, args=(stop,), daemon=True)
    thread.start()
    until(lambda: figures.rounds >= 2, 30, "two rounds of figures")
    stop.set()
    thread.join(10)
    assert not thread.is_alive()

    broken = CephFigures(core, NODE, dataclasses.replace(settings, ceph_config=dead_conf(ceph_lab, tmp_path)),
                         lambda: True)
    broken.round_timeout = 0.5
    caplog.set_level("WARNING", logger="pvc.agent.ceph")
    for _ in range(3):
        assert broken.round() is False
    assert len([r for r in caplog.records if "not published" in r.getMessage()]) == 1


# --- timings (re-measure: pytest tests/test_agent_ceph.py -k timings -s) -----------------------------

def test_timings_handler_next_to_bare_command(core: Cluster, ceph_lab: CephLab) -> None:
    """Each handler's time (Ceph and its tree commit) next to the bare ceph/rbd commands it runs."""
    env = ceph_exec.environment(context(core, ceph_lab).settings)

    def bare(*argvs: list[str]) -> float:
        started = time.monotonic()
        for argv in argvs:
            ceph_lab.run(*argv)
        return time.monotonic() - started

    def handler(command: str, **args: Any) -> float:
        started = time.monotonic()
        run(core, ceph_lab, command, **args)
        return time.monotonic() - started

    assert env["CEPH_CONF"] == ceph_lab.conf
    p, q = unique("m"), unique("b")
    rows = []
    try:
        rows.append(("pool_add", handler("pool_add", pool=p, pgs=8),
                     bare(["ceph", "osd", "pool", "create", q, "8", "8", "replicated"],
                          ["ceph", "osd", "pool", "application", "enable", q, "rbd"])))
        rows.append(("volume_add", handler("volume_add", pool=p, volume="v", size=1 << 30),
                     bare(["rbd", "create", "--size", f"{1 << 30}B", "--image-feature", "layering,exclusive-lock",
                           f"{q}/v"], ["rbd", "info", "--format", "json", f"{q}/v"])))
        rows.append(("volume_resize", handler("volume_resize", pool=p, volume="v", size=2 << 30),
                     bare(["rbd", "resize", "--size", f"{2 << 30}B", f"{q}/v"],
                          ["rbd", "info", "--format", "json", f"{q}/v"])))
        rows.append(("snapshot_add", handler("snapshot_add", pool=p, volume="v", snapshot="s"),
                     bare(["rbd", "snap", "create", f"{q}/v@s"])))
        rows.append(("snapshot_rename", handler("snapshot_rename", pool=p, volume="v", snapshot="s", new="t"),
                     bare(["rbd", "snap", "rename", f"{q}/v@s", f"{q}/v@t"])))
        rows.append(("volume_rename", handler("volume_rename", pool=p, volume="v", new="w"),
                     bare(["rbd", "rename", f"{q}/v", f"{q}/w"], ["rbd", "info", "--format", "json", f"{q}/w"])))
        rows.append(("snapshot_remove", handler("snapshot_remove", pool=p, volume="w", snapshot="t"),
                     bare(["rbd", "snap", "rm", f"{q}/w@t"])))
        rows.append(("volume_remove", handler("volume_remove", pool=p, volume="w"),
                     bare(["rbd", "snap", "purge", f"{q}/w"], ["rbd", "rm", f"{q}/w"])))
        rows.append(("osd_set", handler("osd_set", option="noout"), bare(["ceph", "osd", "set", "noout"])))
        rows.append(("osd_unset", handler("osd_unset", option="noout"), bare(["ceph", "osd", "unset", "noout"])))
        rows.append(("osd_out", handler("osd_out", osd="1"), bare(["ceph", "osd", "in", "1"])))
        rows.append(("osd_in", handler("osd_in", osd="1"), bare(["ceph", "osd", "out", "1"])))
        rows.append(("pool_remove", handler("pool_remove", pool=p),
                     bare(["ceph", "osd", "pool", "rm", q, q, "--yes-i-really-really-mean-it"])))
    finally:
        ceph_lab.run("ceph", "osd", "in", "1")
        ceph_lab.run("ceph", "osd", "unset", "noout")
        drop_pool(ceph_lab, p)
        drop_pool(ceph_lab, q)
    print(f"\n[{core.settings.engine}] handler ms / bare command(s) ms")
    for name, mine, theirs in rows:
        ceph_lab.record(f"{name} ({core.settings.engine}) handler {mine * 1000:.0f} ms, bare", theirs)
    # the executor adds no waiting of its own: a handler costs its commands plus a store commit
    assert all(mine < theirs * 2 + 1.0 for _, mine, theirs in rows), rows
