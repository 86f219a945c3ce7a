"""Storage operations (issue 9, item 4) through the library and the HTTP API, on both engines:
the reads, on records written into the tree as the node agents write them (§3.7 of the
original), and every check an action makes before it sends a command to a node (each refusal
leaves the whole tree unchanged). The actions against a real Ceph are in tests/test_api_storage.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pvc.lib import schema
from pvc.lib.ceph_records import OSD_FLAGS
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument, PvcError
from pvc.lib.ops.storage import list_osds, list_pools, list_snapshots, list_volumes
from pvc.lib.registry import convert, load_all
from pvc.lib.store import Set
from tests.test_ops_vm import VIA, Refused
from tests.vm_fixtures import define, snapshot
from pvc.server.errors import status_for
from pvc.server.routes import PREFIX
from tests.wsgi import Client

GIB = 1024**3
OPS = load_all()
STATUS_TEXT = "  cluster:\n    id:     1f6c\n    health: HEALTH_OK\n \n"
RADOSDF_TEXT = "POOL_NAME  USED  OBJECTS\nvms  14 GiB  3521\n"


def run(via: str, core: Cluster, client: Client, op: str, values: dict[str, Any] | None = None, **more: Any) -> Any:
    """Run operation ``op`` through the library or over HTTP (as tests.test_ops_vm.run, with the values
    as a dict: storage operations take a `name`); its result, or Refused."""
    declared = OPS[op]
    values = {**(values or {}), **more}
    if via == "lib":
        try:
            return declared.func(core, **values)
        except PvcError as e:
            raise Refused(status_for(e, declared.mutating), e.kind, e.message) from None
    path = PREFIX + (declared.path or "")
    for wildcard in declared.path_params:
        path = path.replace(f"<{wildcard}>", values.pop(wildcard))
    sent = {declared.param(k).http_name: (("true" if v else "false") if isinstance(v, bool) else v)
            for k, v in values.items() if v is not None}
    r = client.request(declared.method, path, query=sent) if declared.method == "GET" else \
        client.request(declared.method, path, data=sent)
    if r.status != 200:
        body = r.json()
        assert body["status"] == r.status
        raise Refused(r.status, body["error"], body["message"])
    body = r.json()
    return body["message"] if declared.result == "message" else body


def refused(via: str, core: Cluster, client: Client, op: str, status: int, kind: str, *fragments: str,
            values: dict[str, Any] | None = None, **more: Any) -> Refused:
    """The operation fails with this status, kind and message fragments, and the tree is unchanged."""
    before = snapshot(core)
    with pytest.raises(Refused) as caught:
        run(via, core, client, op, values, **more)
    failure = caught.value
    assert (failure.status, failure.kind) == (status, kind), failure.message
    for fragment in fragments:
        assert fragment in failure.message, failure.message
    assert snapshot(core) == before
    return failure


def osd_stats(node: str, up: int = 1, inn: int = 1, pgs: int = 64) -> dict[str, Any]:
    return {"uuid": "5b5c", "up": up, "in": inn, "primary_affinity": 1.0, "utilization": 1.52, "var": 1.0, "pgs": pgs,
            "kb": 976762584, "weight": 0.9097, "reweight": 1.0, "node": node, "used": "14.2G", "avail": "917G",
            "wr_ops": "0", "wr_data": "0", "rd_ops": "0", "rd_data": "0", "state": "exists,up"}


def rbd_info(name: str, size: int) -> str:
    return json.dumps({"name": name, "size": size, "objects": size // 4194304, "order": 22, "object_size": 4194304,
                       "block_name_prefix": "rbd_data.1234", "format": 2, "features": ["layering", "exclusive-lock"],
                       "op_features": [], "flags": [], "create_timestamp": "Mon Jul 29 12:00:00 2019"})


POOL_STATS = {"id": 1, "size_bytes": 14763950080, "num_objects": 3521, "num_object_clones": 0,
              "num_object_copies": 10563, "num_objects_missing_on_primary": 0, "num_objects_unfound": 0,
              "num_objects_degraded": 0, "read_ops": 45678, "read_bytes": 1234567890, "write_ops": 23456,
              "write_bytes": 987654321}

VOLUMES = {("vms", "web1_disk0"): 10 * GIB, ("vms", "web1_disk1"): GIB, ("vms", "test1_disk0"): 20 * GIB,
           ("backup", "web1_disk0"): 4 * GIB, ("test1", "x"): 1024}
SNAPSHOTS = [("vms", "web1_disk0", "snap1"), ("vms", "web1_disk0", "snap2"), ("backup", "web1_disk0", "snap1"),
             ("vms", "test1_disk0", "daily")]


def write_osd(core: Cluster, osd: str, node: str, device: str, stats: dict[str, Any] | None = None) -> None:
    core.store.write({schema.osd(osd): "", schema.osd_key(osd, "node"): node, schema.osd_key(osd, "device"): device,
                      schema.osd_key(osd, "stats"): json.dumps(stats or {})})


def write_pool(core: Cluster, pool: str, pgs: int = 128, stats: dict[str, Any] | None = None) -> None:
    core.store.write({schema.pool(pool): "", schema.pool_key(pool, "pgs"): str(pgs),
                      schema.pool_key(pool, "stats"): json.dumps(stats or {}), schema.pool_volumes(pool): "",
                      schema.pool_snapshots(pool): ""})


def write_volume(core: Cluster, pool: str, volume: str, size: int) -> None:
    core.store.write({schema.volume(pool, volume): "", schema.volume_stats(pool, volume): rbd_info(volume, size),
                      schema.volume_snapshots(pool, volume): ""})


def write_snapshot(core: Cluster, pool: str, volume: str, name: str) -> None:
    core.store.write({schema.snapshot(pool, volume, name): "", schema.snapshot_stats(pool, volume, name): "{}"})


def seed(core: Cluster) -> Cluster:
    """OSDs 0, 1, 2, 10 (1 without figures yet), pools backup, test1, vms, their volumes and snapshots, as
    the agents write them; the primary's figures are not published."""
    write_osd(core, "10", "hv2", "/dev/sdc", osd_stats("hv2", pgs=12))
    write_osd(core, "2", "hv2", "/dev/sdb", osd_stats("hv2", inn=0, pgs=0))
    write_osd(core, "0", "hv1", "/dev/sdb", osd_stats("hv1"))
    write_osd(core, "1", "hv1", "/dev/sdc")
    write_pool(core, "vms", 128, POOL_STATS)
    write_pool(core, "backup", 64)
    write_pool(core, "test1", 8)
    for (pool, volume), size in VOLUMES.items():
        write_volume(core, pool, volume, size)
    for pool, volume, name in SNAPSHOTS:
        write_snapshot(core, pool, volume, name)
    return core


@pytest.fixture
def ceph(nodes: Cluster) -> Cluster:
    """The nodes of conftest (hv1 primary-capable, no primary yet) with the records of :func:`seed`."""
    return seed(nodes)


def ids(osds: list[dict[str, Any]]) -> list[int]:
    return [o["id"] for o in osds]


def specs(volumes: list[dict[str, Any]]) -> list[str]:
    return [f"{v['pool']}/{v['name']}" for v in volumes]


# --- reads ----------------------------------------------------------------------------------------


@VIA
def test_osds(via: str, ceph: Cluster, client: Client) -> None:
    osds = run(via, ceph, client, "storage.ceph.osd.list")
    assert ids(osds) == [0, 1, 2, 10]  # numerically
    assert osds[0] == {"id": 0, "node": "hv1", "device": "/dev/sdb", "stats": osd_stats("hv1")}
    assert osds[1]["stats"] == {}  # before its node's first figures
    assert ids(run(via, ceph, client, "storage.ceph.osd.list", limit="1")) == [1, 10]  # fuzzy, as the original
    assert ids(run(via, ceph, client, "storage.ceph.osd.list", limit="^1$")) == [1]
    assert run(via, ceph, client, "storage.ceph.osd.list", limit="7") == []
    # The element is exact: 1 is not 10 (the original's bug A18).
    assert ids(run(via, ceph, client, "storage.ceph.osd.info", osd="1")) == [1]
    assert run(via, ceph, client, "storage.ceph.osd.info", osd="10")[0]["stats"]["pgs"] == 12
    refused(via, ceph, client, "storage.ceph.osd.info", 404, "not_found", "OSD '5' not found.", osd="5")
    refused(via, ceph, client, "storage.ceph.osd.info", 400, "invalid_argument", "Invalid OSD id 'osd.1'", osd="osd.1")
    refused(via, ceph, client, "storage.ceph.osd.list", 400, "invalid_argument", "Invalid limit", limit="(")


@VIA
def test_osd_state(via: str, ceph: Cluster, client: Client) -> None:
    assert run(via, ceph, client, "storage.ceph.osd.state", osd="2") == {"id": 2, "in": 0, "up": 1}
    assert run(via, ceph, client, "storage.ceph.osd.state", osd="0") == {"id": 0, "in": 1, "up": 1}
    # No figures yet: unknown, not a 500 (the original's KeyError, its A17).
    assert run(via, ceph, client, "storage.ceph.osd.state", osd="1") == {"id": 1, "in": None, "up": None}
    refused(via, ceph, client, "storage.ceph.osd.state", 404, "not_found", "OSD '3' not found.", osd="3")


@VIA
def test_pools(via: str, ceph: Cluster, client: Client) -> None:
    pools = run(via, ceph, client, "storage.ceph.pool.list")
    assert [p["name"] for p in pools] == ["backup", "test1", "vms"]
    assert pools[2] == {"name": "vms", "pgs": 128, "stats": POOL_STATS}
    assert pools[0] == {"name": "backup", "pgs": 64, "stats": {}}
    assert [p["name"] for p in run(via, ceph, client, "storage.ceph.pool.list", limit="^b")] == ["backup"]
    assert [p["name"] for p in run(via, ceph, client, "storage.ceph.pool.info", pool="vms")] == ["vms"]
    refused(via, ceph, client, "storage.ceph.pool.info", 404, "not_found", "Pool 'vm' not found.", pool="vm")
    refused(via, ceph, client, "storage.ceph.pool.info", 400, "invalid_argument", "must not contain '@'", pool="a@b")


@VIA
def test_volumes(via: str, ceph: Cluster, client: Client) -> None:
    volumes = run(via, ceph, client, "storage.ceph.volume.list")
    assert specs(volumes) == ["backup/web1_disk0", "test1/x", "vms/test1_disk0", "vms/web1_disk0", "vms/web1_disk1"]
    web1 = volumes[3]
    assert web1["name"] == "web1_disk0" and web1["pool"] == "vms"
    assert web1["stats"] == {**json.loads(rbd_info("web1_disk0", 10 * GIB)), "size": "10G"}  # humanised (§2.7.7)
    assert volumes[4]["stats"]["size"] == "1024M" and volumes[1]["stats"]["size"] == "1024B"
    # pool and limit combine; limit matches the name (the manual) or pool/name (the original).
    assert specs(run(via, ceph, client, "storage.ceph.volume.list", pool="vms")) == [
        "vms/test1_disk0", "vms/web1_disk0", "vms/web1_disk1"]
    assert specs(run(via, ceph, client, "storage.ceph.volume.list", limit="^web1")) == [
        "backup/web1_disk0", "vms/web1_disk0", "vms/web1_disk1"]
    assert specs(run(via, ceph, client, "storage.ceph.volume.list", limit="^vms/web1_disk0$")) == ["vms/web1_disk0"]
    assert specs(run(via, ceph, client, "storage.ceph.volume.list", limit="disk0$", pool="backup")) == [
        "backup/web1_disk0"]
    assert run(via, ceph, client, "storage.ceph.volume.list", pool="nope") == []
    assert run(via, ceph, client, "storage.ceph.volume.list", limit="^zzz") == []
    # The element is exact, in its pool (the original: always 500, its L19).
    assert specs(run(via, ceph, client, "storage.ceph.volume.info", pool="backup", volume="web1_disk0")) == [
        "backup/web1_disk0"]
    refused(via, ceph, client, "storage.ceph.volume.info", 404, "not_found", "Volume 'web1' not found in pool 'vms'.",
            pool="vms", volume="web1")
    refused(via, ceph, client, "storage.ceph.volume.list", 400, "invalid_argument", "Invalid pool name", pool="a b")


@VIA
def test_snapshots(via: str, ceph: Cluster, client: Client) -> None:
    everything = ["backup/web1_disk0@snap1", "vms/test1_disk0@daily", "vms/web1_disk0@snap1", "vms/web1_disk0@snap2"]
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.list") == everything
    # pool, volume and limit combine freely (the manual): a volume alone matches it in every pool.
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.list", volume="web1_disk0") == [
        "backup/web1_disk0@snap1", "vms/web1_disk0@snap1", "vms/web1_disk0@snap2"]
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.list", pool="vms") == everything[1:]
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.list", pool="vms", volume="web1_disk0") == everything[2:]
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.list", pool="vms", limit="^snap1$") == [
        "vms/web1_disk0@snap1"]
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.list", limit="snap1") == [
        "backup/web1_disk0@snap1", "vms/web1_disk0@snap1"]
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.list", limit="^backup/") == ["backup/web1_disk0@snap1"]
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.list", volume="nope") == []
    assert run(via, ceph, client, "storage.ceph.volume.snapshot.info", pool="vms", volume="web1_disk0",
               snapshot="snap2") == ["vms/web1_disk0@snap2"]
    refused(via, ceph, client, "storage.ceph.volume.snapshot.info", 404, "not_found",
            "Snapshot 'snap1' of volume 'vms/test1_disk0' not found.", pool="vms", volume="test1_disk0", snapshot="snap1")


@VIA
def test_status_and_df(via: str, ceph: Cluster, client: Client) -> None:
    # Nothing published yet: a clear 409, never a 500 (the original's NoNodeError).
    for name, what in (("storage.ceph.status", "ceph status"), ("storage.ceph.df", "rados df")):
        failure = refused(via, ceph, client, name, 409, "invalid_state", f"has not published `{what}`")
        assert "there is none now" in failure.message
    ceph.store.write({schema.CEPH: STATUS_TEXT, schema.CEPH_RADOSDF: RADOSDF_TEXT, schema.PRIMARY_NODE: "hv1"})
    assert run(via, ceph, client, "storage.ceph.status") == {"ceph_data": STATUS_TEXT.rstrip(), "primary_node": "hv1",
                                                             "type": "status"}
    assert run(via, ceph, client, "storage.ceph.df") == {"ceph_data": RADOSDF_TEXT.rstrip(), "primary_node": "hv1",
                                                         "type": "utilization"}
    if via == "http":  # the manual's alias, and the section's root
        assert client.get("/api/v1/storage/ceph/status").json() == client.get("/api/v1/storage/ceph").json()
        r = client.get("/api/v1/storage")
        assert r.status == 200 and r.json() == {"message": "Manage the storage of the PVC cluster."}


def test_lists_read_whole_subtrees_not_key_by_key(ceph: Cluster) -> None:
    """The round trips of a list do not grow with the number of objects."""
    def trips(read: Any) -> int:
        before = ceph.store.round_trips
        read(ceph)
        return ceph.store.round_trips - before

    small = {f: trips(f) for f in (list_osds, list_pools, list_volumes, list_snapshots)}
    for i in range(40):
        write_osd(ceph, str(100 + i), "hv1", f"/dev/x{i}")
        write_pool(ceph, f"p{i:02d}")
        write_volume(ceph, f"p{i:02d}", f"v{i}", GIB)
        write_volume(ceph, "vms", f"extra{i}", GIB)
        write_snapshot(ceph, "vms", f"extra{i}", "s")
    large = {f: trips(f) for f in small}
    assert large == small, (small, large)
    assert max(large.values()) <= 6
    assert len(list_volumes(ceph)) == len(VOLUMES) + 80 and len(list_snapshots(ceph)) == len(SNAPSHOTS) + 40


def test_foreign_keys_are_left_out(ceph: Cluster) -> None:
    """Keys another tool left under /ceph that are no Ceph names are not listed (nor a 500)."""
    ceph.store.write({schema.CEPH_OSDS + "/osd.x": "", schema.CEPH_POOLS + "/bad name": "",
                      schema.CEPH_VOLUMES + "/vms/has space": "", schema.CEPH_VOLUMES + "/vms/web1_disk0/extra": ""})
    assert ids(list_osds(ceph)) == [0, 1, 2, 10]
    assert [p["name"] for p in list_pools(ceph)] == ["backup", "test1", "vms"]
    assert specs(list_volumes(ceph)) == sorted(f"{p}/{v}" for p, v in VOLUMES)


# --- checks before any command is sent ------------------------------------------------------------


BAD_ACTIONS = [
    # (operation, values, status kind, fragments)
    ("storage.ceph.cluster-option.change", {"action": "reset", "option": "noout"}, "invalid_argument",
     ("'reset' is not one of set, unset",)),
    ("storage.ceph.cluster-option.change", {"action": "set", "option": "sortbitwise"}, "invalid_argument",
     ("'sortbitwise' is not one of full, pause",)),
    ("storage.ceph.osd.add", {"node": "nope", "device": "/dev/sdd", "weight": 1.0}, "not_found", ("Node 'nope' not found",)),
    ("storage.ceph.osd.add", {"node": "hv9", "device": "/dev/sdd", "weight": 1.0}, "invalid_state",
     ("Node 'hv9' cannot add an OSD: its daemon is dead",)),
    ("storage.ceph.osd.add", {"node": "hv1", "device": "/dev/sdb", "weight": 1.0}, "already_exists",
     ("Device '/dev/sdb' on node 'hv1' is used by OSD '0' already",)),
    ("storage.ceph.osd.add", {"node": "hv1", "device": "sdd", "weight": 1.0}, "invalid_argument", ("Invalid device",)),
    ("storage.ceph.osd.add", {"node": "hv1", "device": "/dev/sdd", "weight": -1.0}, "invalid_argument",
     ("Invalid weight -1",)),
    ("storage.ceph.osd.remove", {"osd": "0"}, "invalid_argument", ("Not removing OSD '0'", "yes_i_really_mean_it")),
    ("storage.ceph.osd.remove", {"osd": "0", "yes_i_really_mean_it": False}, "invalid_argument",
     ("yes_i_really_mean_it",)),
    ("storage.ceph.osd.remove", {"osd": "5", "yes_i_really_mean_it": True}, "not_found", ("OSD '5' not found",)),
    ("storage.ceph.osd.remove", {"osd": "-1", "yes_i_really_mean_it": True}, "invalid_argument", ("Invalid OSD id",)),
    ("storage.ceph.osd.set-state", {"osd": "5", "state": "out"}, "not_found", ("OSD '5' not found",)),
    ("storage.ceph.osd.set-state", {"osd": "0", "state": "inside"}, "invalid_argument", ("is not one of in, out",)),
    ("storage.ceph.pool.add", {"pool": "vms", "pgs": 64}, "already_exists", ("Pool 'vms' already exists",)),
    ("storage.ceph.pool.add", {"pool": "a/b", "pgs": 64}, "invalid_argument", ("must not contain '/'",)),
    ("storage.ceph.pool.add", {"pool": "new", "pgs": 0}, "invalid_argument", ("Invalid pgs 0",)),
    ("storage.ceph.pool.remove", {"pool": "vms"}, "invalid_argument", ("Not removing pool 'vms'",)),
    ("storage.ceph.pool.remove", {"pool": "nope", "yes_i_really_mean_it": True}, "not_found", ("Pool 'nope' not found",)),
    ("storage.ceph.volume.add", {"pool": "nope", "volume": "v", "size": "1G"}, "not_found", ("Pool 'nope' not found",)),
    ("storage.ceph.volume.add", {"pool": "vms", "volume": "web1_disk0", "size": "1G"}, "already_exists",
     ("Volume 'web1_disk0' already exists in pool 'vms'",)),
    ("storage.ceph.volume.add", {"pool": "vms", "volume": "v", "size": "10g"}, "invalid_argument",
     ("units are upper case: 10G",)),
    ("storage.ceph.volume.add", {"pool": "vms", "volume": "-v", "size": "1G"}, "invalid_argument",
     ("must not start with '-'",)),
    ("storage.ceph.volume.add", {"pool": "vms", "volume": "a b", "size": "1G"}, "invalid_argument",
     ("must not contain ' '",)),
    ("storage.ceph.volume.modify", {"pool": "vms", "volume": "web1_disk0"}, "invalid_argument",
     ("Give exactly one of 'name'",)),
    ("storage.ceph.volume.modify", {"pool": "vms", "volume": "web1_disk0", "name": "x", "size": "2G"},
     "invalid_argument", ("Give exactly one of 'name'",)),
    ("storage.ceph.volume.modify", {"pool": "vms", "volume": "nope", "size": "2G"}, "not_found", ("Volume 'nope' not found",)),
    ("storage.ceph.volume.modify", {"pool": "vms", "volume": "web1_disk0", "name": "web1_disk1"}, "already_exists",
     ("Volume 'web1_disk1' already exists",)),
    ("storage.ceph.volume.modify", {"pool": "vms", "volume": "web1_disk0", "size": "1.5G"}, "invalid_argument",
     ("a whole number is needed",)),
    ("storage.ceph.volume.remove", {"pool": "vms", "volume": "nope"}, "not_found", ("Volume 'nope' not found in pool 'vms'",)),
    ("storage.ceph.volume.snapshot.add", {"pool": "vms", "volume": "nope", "snapshot": "s"}, "not_found",
     ("Volume 'nope' not found",)),
    ("storage.ceph.volume.snapshot.add", {"pool": "vms", "volume": "web1_disk0", "snapshot": "snap1"}, "already_exists",
     ("Snapshot 'snap1' of volume 'vms/web1_disk0' already exists",)),
    ("storage.ceph.volume.snapshot.add", {"pool": "vms", "volume": "web1_disk0", "snapshot": "a@b"}, "invalid_argument",
     ("must not contain '@'",)),
    ("storage.ceph.volume.snapshot.rename", {"pool": "vms", "volume": "web1_disk0", "snapshot": "snap1", "name": "snap2"},
     "already_exists", ("Snapshot 'snap2' of volume 'vms/web1_disk0' already exists",)),
    ("storage.ceph.volume.snapshot.remove", {"pool": "vms", "volume": "web1_disk0", "snapshot": "nope"}, "not_found",
     ("Snapshot 'nope' of volume 'vms/web1_disk0' not found",)),
]


@VIA
@pytest.mark.parametrize("name, values, kind, fragments", BAD_ACTIONS,
                         ids=[f"{n.split('.', 2)[2]}-{i}" for i, (n, *_) in enumerate(BAD_ACTIONS)])
def test_bad_actions_are_refused_before_any_command(via: str, ceph: Cluster, client: Client, name: str,
                                                     values: dict[str, Any], kind: str, fragments: tuple[str, ...]) -> None:
    if via == "lib" and any("is not one of" in f for f in fragments):
        # A choice is checked by the converter the CLI and the API share, before the function.
        bad = [k for k, v in values.items() if OPS[name].param(k).kind == "choice" and v not in OPS[name].param(k).choices]
        with pytest.raises(InvalidArgument) as caught:
            convert(OPS[name].param(bad[0]), values[bad[0]])
        assert fragments[0] in caught.value.message
        return
    refused(via, ceph, client, name, 510, kind, *fragments, values=values)


@VIA
def test_a_volume_a_vm_uses_is_not_removed(via: str, ceph: Cluster, client: Client) -> None:
    define(ceph, "web1", rbd=("vms/web1_disk0", "vms/web1_disk1"))
    define(ceph, "web2", rbd=("vms/web1_disk0",))
    refused(via, ceph, client, "storage.ceph.volume.remove", 510, "invalid_state",
            "Cannot remove volume 'web1_disk0': volume 'vms/web1_disk0' is a disk of VM 'web1', 'web2'",
            "pvc vm remove", pool="vms", volume="web1_disk0")
    refused(via, ceph, client, "storage.ceph.volume.modify", 510, "invalid_state", "is a disk of VM 'web1'",
            values={"pool": "vms", "volume": "web1_disk1", "name": "renamed"})
    refused(via, ceph, client, "storage.ceph.pool.remove", 510, "invalid_state", "Cannot remove pool 'vms'",
            "is a disk of VM", pool="vms", yes_i_really_mean_it=True)


@VIA
def test_without_a_primary_nothing_is_sent(via: str, ceph: Cluster, client: Client) -> None:
    """Valid requests reach the command channel, which finds no primary coordinator: a clear 510."""
    for name, values in [("storage.ceph.pool.add", {"pool": "new", "pgs": 8}),
                         ("storage.ceph.volume.add", {"pool": "vms", "volume": "new", "size": "1073741824"}),
                         ("storage.ceph.volume.modify", {"pool": "vms", "volume": "web1_disk0", "size": "20G", "name": ""}),
                         ("storage.ceph.cluster-option.change", {"action": "set", "option": "noout"}),
                         ("storage.ceph.volume.snapshot.add", {"pool": "vms", "volume": "web1_disk0", "snapshot": "s3"})]:
        refused(via, ceph, client, name, 510, "invalid_state", "No node is the primary coordinator", values=values)
    # An OSD's node must be alive: hv9's daemon is dead.
    write_osd(ceph, "3", "hv9", "/dev/sdb")
    refused(via, ceph, client, "storage.ceph.osd.set-state", 510, "invalid_state", "hv9", osd="3", state="out")


def test_flags_accept_the_originals_presence_value(ceph: Cluster, client: Client) -> None:
    """`yes_i_really_mean_it` given empty (the original only looked for the key) acknowledges."""
    r = client.delete("/api/v1/storage/ceph/pool/nope?yes_i_really_mean_it=")
    assert r.status == 510 and "Pool 'nope' not found" in r.json()["message"]
    r = client.delete("/api/v1/storage/ceph/pool/vms", data={"yes_i_really_mean_it": "no"})
    assert r.status == 510 and "Not removing pool 'vms'" in r.json()["message"]


def test_osd_flags_are_offered() -> None:
    from pvc.lib.config import Settings
    from pvc.server.openapi import openapi_document

    body = openapi_document(Settings())
    option = body["paths"]["/api/v1/storage/ceph/cluster-option"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["option"]
    assert option["enum"] == list(OSD_FLAGS)


def test_osd_states_change_in_place(ceph: Cluster) -> None:
    """OSD stats are read as their node rewrites them."""
    ceph.store.commit([Set(schema.osd_key("1", "stats"), json.dumps(osd_stats("hv1", up=0, inn=0)))])
    from pvc.lib.ops.storage import get_osd_state

    assert get_osd_state(ceph, "1") == {"id": 1, "in": 0, "up": 0}
    assert snapshot(ceph)[schema.osd_key("1", "node")][0] == "hv1"
