"""Storage end to end (issue 9): the HTTP API and the CLI against the lab Ceph, with real node agents
carrying out the commands, on both engines.

A pool, a 1 GiB volume, a resize, a snapshot, renames, the lists, and the removal of it all; each
answer in the manual's shape and `ceph`/`rbd` showing the same; Ceph's refusals as clear 510s with
the tree unchanged; 20 volume adds at once from 20 clients of a real cheroot server; the tree read
the way the original's API reads it; `pvc vm remove` removing the VM's volumes.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid as uuidlib
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner

import pvc.agent.ceph  # noqa: F401  (registers the agent's Ceph handlers in this process's agents)
from pvc.lib import commands, schema
from pvc.lib.core import Cluster
from pvc.lib.ops.vm import define_vm
from pvc.lib.store import Store
from pvc.server.app import create_app
from pvc.server.run import build_server, url_of
from tests.agent_fixtures import AgentCluster, agents, until  # noqa: F401
from tests.ceph_fixtures import CephCommandError, CephLab
from tests.vm_fixtures import new_uuid, snapshot, vm_xml
from tests.wsgi import Client

API = "/api/v1/storage/ceph"
GIB = 1024**3
#: Ceph commands are slow on a loaded machine; an end-to-end test does a few dozen.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def lab(agents: AgentCluster, ceph_lab: CephLab) -> Iterator[AgentCluster]:
    """Node hv1 (the primary coordinator) with its agent on the lab Ceph."""
    agents.start("hv1", ceph_config=ceph_lab.conf, ceph_figures_interval=1.0)
    until(lambda: _primary(agents.core) == "hv1", what="hv1 to be primary")
    yield agents


def _primary(core: Cluster) -> str | None:
    try:
        return commands.primary(core)
    except Exception:
        return None


def unique(prefix: str) -> str:
    return f"{prefix}{uuidlib.uuid4().hex[:8]}"


def ok(r: Any) -> Any:
    assert r.status == 200, (r.status, r.body)
    return r.json()


def failed(r: Any, *fragments: str) -> str:
    body = r.json()
    assert r.status == 510 and body["status"] == 510, (r.status, body)
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
    return body["message"]


def rbd_images(ceph: CephLab, pool: str) -> list[str]:
    return sorted(ceph.rbd("ls", "--format", "json", pool) or [])


def rbd_snaps(ceph: CephLab, spec: str) -> list[str]:
    return sorted(s["name"] for s in ceph.rbd("snap", "ls", "--format", "json", spec) or [])


def ceph_pools(ceph: CephLab) -> list[str]:
    return list(ceph.ceph("osd", "pool", "ls") or [])


def original_reads(store: Store) -> dict[str, Any]:
    """The pools, volumes and snapshots as the original's API reads them (its §2.7.6-2.7.8, §3.7):
    children of /ceph/pools, each pool's stats JSON, the children of /ceph/volumes/<p>, each volume's
    stats JSON, the children of /ceph/snapshots/<p>/<v>. The paths are spelled here on purpose: the
    original's, independent of pvc's schema module."""
    out: dict[str, Any] = {}
    for pool in store.children("/ceph/pools"):
        stats = json.loads(store.get(f"/ceph/pools/{pool}/stats").value)
        volumes = {}
        for volume in store.children(f"/ceph/volumes/{pool}"):
            volumes[volume] = {"stats": json.loads(store.get(f"/ceph/volumes/{pool}/{volume}/stats").value),
                               "snapshots": store.children(f"/ceph/snapshots/{pool}/{volume}")}
        out[pool] = {"stats": stats, "pgs": store.get(f"/ceph/pools/{pool}/pgs").value, "volumes": volumes}
    return out


def objects(keys: Any) -> set[str]:
    """The Ceph object keys among ``keys``: not the figures the agents publish by themselves."""
    return {k for k in keys if k.startswith("/ceph/") and k != schema.CEPH_RADOSDF and not k.endswith("/stats")}


def test_pool_volume_snapshot_lifecycle(lab: AgentCluster, ceph_lab: CephLab) -> None:
    core = lab.core
    client = Client(create_app(core))
    pool = unique("p")
    try:
        # A pool.
        message = ok(client.post(f"{API}/pool", data={"pool": pool, "pgs": "8"}))["message"]
        assert pool in message
        assert pool in ceph_pools(ceph_lab)
        assert ok(client.get(f"{API}/pool/{pool}"))[0]["name"] == pool
        assert ok(client.get(f"{API}/pool/{pool}"))[0]["pgs"] == 8
        # Ceph refuses a pool it has (here made behind pvc's back): its words, nothing written.
        other = unique("q")
        ceph_lab.ceph("osd", "pool", "create", other, "8")
        try:
            before = snapshot(core)
            failed(client.post(f"{API}/pool", data={"pool": other, "pgs": "8"}), other, "exists")
            assert not core.store.exists(schema.pool(other))
            # The primary's figures (/ceph/radosdf, stats) may appear meanwhile; no object may.
            assert objects(snapshot(core)) == objects(before)
        finally:
            ceph_lab.ceph("osd", "pool", "rm", other, other, "--yes-i-really-really-mean-it")

        # A 1 GiB volume, the manual's plain bytes.
        ok(client.post(f"{API}/volume", data={"pool": pool, "volume": "disk0", "size": "1073741824"}))
        assert rbd_images(ceph_lab, pool) == ["disk0"]
        assert ceph_lab.rbd("info", "--format", "json", f"{pool}/disk0")["size"] == GIB
        [volume] = ok(client.get(f"{API}/volume/{pool}/disk0"))
        assert (volume["name"], volume["pool"], volume["stats"]["size"]) == ("disk0", pool, "1024M")
        assert volume["stats"]["name"] == "disk0" and "layering" in volume["stats"]["features"]

        # Resize up; a shrink is Ceph's to refuse, with nothing written.
        ok(client.put(f"{API}/volume/{pool}/disk0", data={"size": "2G"}))
        assert ceph_lab.rbd("info", "--format", "json", f"{pool}/disk0")["size"] == 2 * GIB
        assert ok(client.get(f"{API}/volume/{pool}/disk0"))[0]["stats"]["size"] == "2048M"
        before = snapshot(core)
        failed(client.put(f"{API}/volume/{pool}/disk0", data={"size": "1G"}), "shrink")
        assert ceph_lab.rbd("info", "--format", "json", f"{pool}/disk0")["size"] == 2 * GIB
        assert {k: v for k, v in snapshot(core).items() if k.startswith("/ceph/")} == \
            {k: v for k, v in before.items() if k.startswith("/ceph/")}

        # A snapshot, then renames of the volume (its snapshots follow) and of the snapshot.
        ok(client.post(f"{API}/volume/snapshot", data={"pool": pool, "volume": "disk0", "snapshot": "snap1"}))
        assert rbd_snaps(ceph_lab, f"{pool}/disk0") == ["snap1"]
        ok(client.put(f"{API}/volume/{pool}/disk0", data={"name": "disk1"}))
        assert rbd_images(ceph_lab, pool) == ["disk1"]
        assert not core.store.exists(schema.volume(pool, "disk0"))
        assert not core.store.exists(schema.volume_snapshots(pool, "disk0"))
        assert ok(client.get(f"{API}/volume/snapshot", query={"pool": pool})) == [f"{pool}/disk1@snap1"]
        ok(client.put(f"{API}/volume/snapshot/{pool}/disk1/snap1", data={"name": "snap2"}))
        assert rbd_snaps(ceph_lab, f"{pool}/disk1") == ["snap2"]

        # Everything listed, in the manual's shapes; the original's reads find the same.
        assert [v["name"] for v in ok(client.get(f"{API}/volume", query={"pool": pool}))] == ["disk1"]
        assert ok(client.get(f"{API}/volume/snapshot", query={"volume": "disk1", "pool": pool})) == [f"{pool}/disk1@snap2"]
        assert pool in [p["name"] for p in ok(client.get(f"{API}/pool"))]
        seen = original_reads(core.store)[pool]
        assert seen["pgs"] == "8" and isinstance(seen["stats"], dict)
        assert list(seen["volumes"]) == ["disk1"]
        assert seen["volumes"]["disk1"]["stats"]["size"] == 2 * GIB  # bytes in the tree, as rbd info gives them
        assert seen["volumes"]["disk1"]["snapshots"] == ["snap2"]

        # Remove it all.
        ok(client.delete(f"{API}/volume/snapshot/{pool}/disk1/snap2"))
        assert rbd_snaps(ceph_lab, f"{pool}/disk1") == []
        ok(client.delete(f"{API}/volume/{pool}/disk1"))
        assert rbd_images(ceph_lab, pool) == []
        failed(client.delete(f"{API}/pool/{pool}"), "yes_i_really_mean_it")
        ok(client.delete(f"{API}/pool/{pool}", data={"yes_i_really_mean_it": ""}))
        assert pool not in ceph_pools(ceph_lab)
        assert not any(core.store.exists(p) for p in (schema.pool(pool), schema.pool_volumes(pool),
                                                        schema.pool_snapshots(pool)))
        assert ok(client.get(f"{API}/pool", query={"limit": f"^{pool}$"})) == []
    finally:
        if pool in ceph_pools(ceph_lab):
            ceph_lab.ceph("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")


def test_cluster_option_and_osd_state(lab: AgentCluster, ceph_lab: CephLab) -> None:
    core = lab.core
    client = Client(create_app(core))

    def flags() -> str:
        return ceph_lab.ceph("osd", "dump")["flags"]

    try:
        ok(client.post(f"{API}/cluster-option", data={"action": "set", "option": "noout"}))
        assert "noout" in flags().split(",")
    finally:
        ok(client.post(f"{API}/cluster-option", data={"action": "unset", "option": "noout"}))
    assert "noout" not in flags().split(",")
    # An OSD the tree knows but Ceph does not: Ceph's refusal, nothing written.
    core.store.write({schema.osd("77"): "", schema.osd_key("77", "node"): "hv1", schema.osd_key("77", "device"): "/x",
                      schema.osd_key("77", "stats"): "{}"})
    before = snapshot(core)
    failed(client.post(f"{API}/osd/77/state", data={"state": "out"}), "77")
    assert {k: v for k, v in snapshot(core).items() if k.startswith("/ceph/osds")} == \
        {k: v for k, v in before.items() if k.startswith("/ceph/osds")}


def test_cli_lifecycle(lab: AgentCluster, ceph_lab: CephLab) -> None:
    from pvc.cli import cli as root

    runner = CliRunner()

    def pvc(*args: str, input: str | None = None, code: int = 0) -> str:
        result = runner.invoke(root, list(args), obj=lab.core, input=input, catch_exceptions=False)
        assert result.exit_code == code, (args, result.output)
        return result.stdout if code == 0 else result.stderr

    pool = unique("c")
    try:
        pvc("storage", "ceph", "pool", "add", pool, "8")
        pvc("storage", "ceph", "volume", "add", pool, "v1", "64M")
        assert ceph_lab.rbd("info", "--format", "json", f"{pool}/v1")["size"] == 64 * 1024**2
        pvc("storage", "ceph", "volume", "resize", pool, "v1", "128M")
        assert ceph_lab.rbd("info", "--format", "json", f"{pool}/v1")["size"] == 128 * 1024**2
        assert "Error:" in pvc("storage", "ceph", "volume", "resize", pool, "v1", "64M", code=1)
        pvc("storage", "ceph", "volume", "snapshot", "add", pool, "v1", "s1")
        table = pvc("storage", "ceph", "volume", "list", "-p", pool)
        assert "v1" in table and "128M" in table
        assert pvc("storage", "ceph", "volume", "snapshot", "list", "--pool", pool, "--format", "json") == \
            json.dumps([f"{pool}/v1@s1"]) + "\n"
        # Destructive commands ask; --yes does not.
        assert "Aborted" in pvc("storage", "ceph", "volume", "snapshot", "remove", pool, "v1", "s1", input="n\n", code=1)
        assert rbd_snaps(ceph_lab, f"{pool}/v1") == ["s1"]
        pvc("storage", "ceph", "volume", "snapshot", "remove", pool, "v1", "s1", input="y\n")
        pvc("storage", "ceph", "volume", "remove", "--yes", pool, "v1")
        assert rbd_images(ceph_lab, pool) == []
        pvc("storage", "ceph", "pool", "remove", "--yes", pool)
        assert pool not in ceph_pools(ceph_lab)
    finally:
        if pool in ceph_pools(ceph_lab):
            ceph_lab.ceph("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")


def test_vm_remove_removes_its_volumes(lab: AgentCluster, ceph_lab: CephLab) -> None:
    core = lab.core
    client = Client(create_app(core))
    pool = unique("v")
    try:
        ok(client.post(f"{API}/pool", data={"pool": pool, "pgs": "8"}))
        for name in ("web1_disk0", "web1_disk1"):
            ok(client.post(f"{API}/volume", data={"pool": pool, "volume": name, "size": "64M"}))
        uuid = new_uuid()
        define_vm(core, vm_xml("web1", uuid, rbd=(f"{pool}/web1_disk0", f"{pool}/web1_disk1")), node="hv1")
        # In use: refused, naming the VM.
        failed(client.delete(f"{API}/volume/{pool}/web1_disk0"), "is a disk of VM 'web1'")
        assert rbd_images(ceph_lab, pool) == ["web1_disk0", "web1_disk1"]
        message = ok(client.delete("/api/v1/vm/web1", data={"delete_disks": "1"}))["message"]
        assert message == (f"Undefined VM 'web1' ({uuid}) and removed its volume(s) '{pool}/web1_disk0', "
                           f"'{pool}/web1_disk1'.")
        assert rbd_images(ceph_lab, pool) == []
        assert not core.store.exists(schema.domain(uuid))
        assert core.store.children(schema.pool_volumes(pool)) == []
    finally:
        if pool in ceph_pools(ceph_lab):
            ceph_lab.ceph("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")


# --- 20 clients at once on a real server --------------------------------------------------------


def post(url: str, path: str, values: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One request on its own connection."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", path, body=urlencode(values), headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_twenty_concurrent_volume_adds(lab: AgentCluster, ceph_lab: CephLab) -> None:
    # 20 clients on one address (127.0.0.1): above the default cap of connections per address, of
    # waiting commands and of worker threads.
    settings = lab.settings.replace(listen_port=0, threads=32, command_waiters=32, per_client_connections=32)
    server_core = Cluster(settings)
    server = build_server(server_core)
    thread = threading.Thread(target=server.serve, name="test-cheroot", daemon=True)
    thread.start()
    pool = unique("z")
    try:
        url = url_of(server, server_core.settings)
        assert post(url, f"{API}/pool", {"pool": pool, "pgs": "8"})[0] == 200
        answers: dict[int, tuple[int, dict[str, Any]]] = {}
        start = threading.Barrier(20)

        def add(i: int) -> None:
            start.wait(30)
            answers[i] = post(url, f"{API}/volume", {"pool": pool, "volume": f"vol{i:02d}", "size": "16M"})

        workers = [threading.Thread(target=add, args=(i,)) for i in range(20)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(240)
        assert not any(w.is_alive() for w in workers)
        assert {i: status for i, (status, _) in answers.items()} == {i: 200 for i in range(20)}, answers
        names = [f"vol{i:02d}" for i in range(20)]
        assert rbd_images(ceph_lab, pool) == names
        assert lab.core.store.children(schema.pool_volumes(pool)) == names
        assert lab.core.store.children(schema.COMMANDS) == []  # every entry cleaned up
    finally:
        server.stop()
        thread.join(15)
        server_core.close()
        try:
            ceph_lab.ceph("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")
        except CephCommandError:
            pass


def test_file_backed_osd_add_out_in_remove(lab: AgentCluster, ceph_lab: CephLab, tmp_path: Any) -> None:
    """An OSD on a file (BlueStore, the lab's way; ceph-volume on a block device cannot run here), taken
    out and in, then removed; Ceph and the tree agree at each step."""
    core = lab.core
    client = Client(create_app(core))
    device = str(tmp_path / "osd.img")
    before = {o["osd"] for o in ceph_lab.ceph("osd", "dump")["osds"]}
    ok(client.post(f"{API}/osd", data={"node": "hv1", "device": device, "weight": "0.001"}))
    [new] = [o for o in ceph_lab.ceph("osd", "dump")["osds"] if o["osd"] not in before]
    osd = str(new["osd"])
    try:
        [listed] = ok(client.get(f"{API}/osd/{osd}"))
        assert (listed["id"], listed["node"], listed["device"]) == (new["osd"], "hv1", device)
        # The same node and device again: refused before Ceph is asked.
        failed(client.post(f"{API}/osd", data={"node": "hv1", "device": device, "weight": "1"}), "is used by OSD")

        def ceph_in() -> int:
            return next(o["in"] for o in ceph_lab.ceph("osd", "dump")["osds"] if o["osd"] == new["osd"])

        ok(client.post(f"{API}/osd/{osd}/state", data={"state": "out"}))
        assert ceph_in() == 0
        ok(client.post(f"{API}/osd/{osd}/state", data={"state": "in"}))
        assert ceph_in() == 1
        # The figures of its node follow (the agent publishes its OSDs' stats).
        until(lambda: ok(client.get(f"{API}/osd/{osd}/state")) == {"id": new["osd"], "in": 1, "up": 1}, timeout=30,
              what=f"OSD {osd}'s figures")
        failed(client.delete(f"{API}/osd/{osd}"), "yes_i_really_mean_it")
        ok(client.delete(f"{API}/osd/{osd}", data={"yes_i_really_mean_it": "yes"}))
        assert new["osd"] not in {o["osd"] for o in ceph_lab.ceph("osd", "dump")["osds"]}
        assert not core.store.exists(schema.osd(osd))
        failed(client.delete(f"{API}/osd/{osd}", data={"yes_i_really_mean_it": "1"}), f"OSD '{osd}' not found")
    finally:
        if new["osd"] in {o["osd"] for o in ceph_lab.ceph("osd", "dump")["osds"]}:
            ceph_lab.run("ceph", "osd", "purge", osd, "--yes-i-really-mean-it", check=False)
