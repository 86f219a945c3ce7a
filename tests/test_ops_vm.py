"""VM operations (issue 3) through the library and the HTTP API, on both store engines.

Most tests run each case twice more: through the library (``via="lib"``) and through the real
app with the in-process HTTP client (``via="http"``); :func:`run` does the one or the other and
:func:`refused` checks a failure's status, kind and message and that the whole tree, values and
versions, is unchanged. The node agent is simulated by writing the VM's state through
``core.store``, as the agent will (:func:`tests.vm_fixtures.agent_writes_state`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pvc.lib import schema
from pvc.lib.config import Settings, load_settings
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, ConfigError, InvalidArgument, NotFound, PvcError, quote
from pvc.lib.ops.vm import define_vm, get_vm, list_vms, modify_vm, set_vm_state, undefine_vm
from pvc.lib.placement import select_node
from pvc.lib.registry import load_all
from pvc.lib.store import Set
from pvc.lib.vm_records import PARSED, vms_using_bridge
from pvc.server.app import create_app
from pvc.server.errors import status_for
from pvc.server.routes import PREFIX
from tests.vm_fixtures import (
    SELECTOR_CHOICE,
    SELECTOR_NODES,
    agent_writes_state,
    bad_documents,
    changed_keys,
    define,
    field,
    minimal_xml,
    new_uuid,
    pretty_xml,
    snapshot,
    vm_keys,
    vm_xml,
)
from tests.wsgi import Client

VIA = pytest.mark.parametrize("via", ["lib", "http"])
OPS = load_all()
VM_OBJECT_KEYS = {"name", "uuid", "state", "node", "last_node", "migrated", "failed_reason", "description", "memory",
                  "vcpu", "vcpu_topology", "networks", "type", "arch", "machine", "console", "emulator", "features",
                  "disks", "controllers", "xml"}
BAD = [pytest.param(xml, fragment, id=name) for name, xml, fragment in bad_documents(new_uuid())]
EXAMPLE = Path(__file__).resolve().parent.parent / "pvc-api.example.yaml"


# --- helpers -------------------------------------------------------------------------------------


class Refused(Exception):
    """An operation that failed, as its caller sees it: HTTP status, error kind and message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(f"{status} {kind}: {message}")
        self.status, self.kind, self.message = status, kind, message


def run(via: str, core: Cluster, client: Client, name: str, **values: Any) -> Any:
    """Run operation ``name`` through the library or over HTTP; its result (the message of an
    action), or Refused."""
    op = OPS[name]
    if via == "lib":
        try:
            return op.func(core, **values)
        except PvcError as e:
            raise Refused(status_for(e, op.mutating), e.kind, e.message) from None
    path = PREFIX + op.path
    for wildcard in op.path_params:
        path = path.replace(f"<{wildcard}>", values.pop(wildcard))
    sent = {op.param(k).http_name: (("true" if v else "false") if isinstance(v, bool) else v)
            for k, v in values.items() if v is not None}
    if op.method == "GET":
        r = client.request("GET", path, query=sent)
    else:
        r = client.request(op.method, path, data=sent)
    if r.status != 200:
        body = r.json()
        assert body["status"] == r.status
        raise Refused(r.status, body["error"], body["message"])
    if op.result == "document":
        assert r.headers["Content-Type"] == op.content_type
        return r.body.decode("utf-8")
    body = r.json()
    return body["message"] if op.result == "message" else body


def refused(via: str, core: Cluster, client: Client, name: str, status: int, kind: str, *fragments: str,
            **values: Any) -> Refused:
    """Run an operation that must fail; check how, and that the tree is unchanged."""
    before = snapshot(core)
    with pytest.raises(Refused) as caught:
        run(via, core, client, name, **values)
    failure = caught.value
    assert (failure.status, failure.kind) == (status, kind), failure.message
    for fragment in fragments:
        assert fragment in failure.message, failure.message
    assert snapshot(core) == before
    return failure


def schema_set(uuid: str, name: str, value: str) -> Set:
    """Write one of a VM's keys as another tool (or the agent) would."""
    return Set(schema.domain_key(uuid, name), value)


def names(vms: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vms]


@pytest.fixture
def web1(nodes: Cluster) -> str:
    """A stopped VM `web1` on hv1; its UUID."""
    return define(nodes, "web1", node="hv1")


@pytest.fixture
def selector_cluster(core: Cluster, add_node: Callable[..., str]) -> Cluster:
    """SELECTOR_NODES with one VM on each of hv1, hv2 and hv3."""
    for name, figures in SELECTOR_NODES.items():
        add_node(name, **figures)
    for vm, node in (("a", "hv1"), ("b", "hv2"), ("c", "hv3")):
        define(core, vm, node=node)
    return core


# --- define --------------------------------------------------------------------------------------


@VIA
def test_define_writes_the_original_layout_in_one_commit(via: str, nodes: Cluster, client: Client) -> None:
    uuid = new_uuid()
    xml = vm_xml("web1", uuid, rbd=("vms/web1_disk0", "ssd/web1_data"))
    before = snapshot(nodes)
    message = run(via, nodes, client, "vm.define", xml=xml, node="hv2")
    assert message == f"Defined VM 'web1' with UUID '{uuid}' on node 'hv2'."
    after = snapshot(nodes)
    vm_paths = {schema.domain(uuid)} | {schema.domain_key(uuid, f) for f in schema.DOMAIN_FIELDS}
    # /domains is bumped (that is what makes concurrent defines of one name conflict).
    assert changed_keys(before, after) == vm_paths | {schema.DOMAINS}
    assert after[schema.DOMAINS] == (before[schema.DOMAINS][0], before[schema.DOMAINS][1] + 1)
    assert vm_keys(nodes, uuid) == {"": "web1", "state": "stop", "node": "hv2", "lastnode": "", "failedreason": "",
                                    "consolelog": "", "rbdlist": "vms/web1_disk0,ssd/web1_data", "xml": xml}
    assert all(after[p][1] == 0 for p in vm_paths)


@VIA
def test_define_without_rbd_disks_has_an_empty_rbdlist(via: str, nodes: Cluster, client: Client) -> None:
    uuid = new_uuid()
    run(via, nodes, client, "vm.define", xml=pretty_xml("files", uuid), node="hv1")
    assert field(nodes, uuid, "rbdlist") == "vms/files_data"  # the file disk is not an RBD volume
    other = new_uuid()
    run(via, nodes, client, "vm.define", xml=minimal_xml("bare", other), node="hv1")
    assert field(nodes, other, "rbdlist") == ""


@VIA
def test_define_canonicalises_the_uuid(via: str, nodes: Cluster, client: Client) -> None:
    uuid = new_uuid()
    xml = vm_xml("web1", uuid.upper())
    assert run(via, nodes, client, "vm.define", xml=xml, node="hv1") == (
        f"Defined VM 'web1' with UUID '{uuid}' on node 'hv1'.")
    assert nodes.store.children(schema.DOMAINS) == [uuid]
    assert field(nodes, uuid, "xml") == xml  # the document itself is kept as given
    for spelling in (uuid, uuid.upper(), uuid.replace("-", ""), "{" + uuid + "}", "urn:uuid:" + uuid):
        (vm,) = run(via, nodes, client, "vm.info", vm=spelling)
        assert (vm["name"], vm["uuid"]) == ("web1", uuid)
        assert run(via, nodes, client, "vm.state", vm=spelling) == {"name": "web1", "state": "stop"}


@VIA
@pytest.mark.parametrize("xml, fragment", BAD)
def test_define_refuses_bad_and_hostile_xml(via: str, nodes: Cluster, client: Client, xml: str, fragment: str) -> None:
    failure = refused(via, nodes, client, "vm.define", 510, "invalid_argument", fragment, xml=xml, node="hv1")
    assert "root:" not in failure.message  # nothing of /etc/passwd, whatever the document asked for
    assert nodes.store.children(schema.DOMAINS) == []


@VIA
def test_define_refuses_a_duplicate_uuid(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    for spelling in (web1, web1.upper()):
        refused(via, nodes, client, "vm.define", 510, "already_exists", f"A VM with UUID '{web1}' already exists.",
                xml=vm_xml("other", spelling), node="hv2")


@VIA
def test_define_refuses_a_duplicate_name(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    refused(via, nodes, client, "vm.define", 510, "already_exists",
            f"A VM named 'web1' already exists (UUID {web1}).", xml=vm_xml("web1", new_uuid()))
    # Names are exact: these are other names.
    for name in ("web10", "Web1", "web"):
        run(via, nodes, client, "vm.define", xml=vm_xml(name, new_uuid()))
    assert names(list_vms(nodes)) == ["Web1", "web", "web1", "web10"]


@VIA
@pytest.mark.parametrize("node", ["hv3", "hv8", "hv9"])
def test_define_on_an_existing_node_uses_it_in_any_state(via: str, nodes: Cluster, client: Client, node: str) -> None:
    uuid = new_uuid()
    message = run(via, nodes, client, "vm.define", xml=vm_xml("web1", uuid), node=node, selector="vcpus")
    assert message == f"Defined VM 'web1' with UUID '{uuid}' on node '{node}'."
    assert (field(nodes, uuid, "node"), field(nodes, uuid, "state")) == (node, "stop")


@VIA
@pytest.mark.parametrize("node", ["hv7", "HV1", "hv1 ", "a/b", "..", ".", "hv\n1", "x" * 300])
def test_define_on_a_missing_or_invalid_node_selects_one(via: str, nodes: Cluster, client: Client, node: str) -> None:
    uuid = new_uuid()
    message = run(via, nodes, client, "vm.define", xml=vm_xml("web1", uuid), node=node)
    assert message == (f"Defined VM 'web1' with UUID '{uuid}' on node 'hv1' "
                       f"(node {quote(node)} does not exist; chosen by mem).")
    assert field(nodes, uuid, "node") == "hv1"
    assert not nodes.store.exists("/nodes/a")


@VIA
@pytest.mark.parametrize("node", [None, ""])
def test_define_without_a_node_selects_one(via: str, nodes: Cluster, client: Client, node: str | None) -> None:
    uuid = new_uuid()
    message = run(via, nodes, client, "vm.define", xml=vm_xml("web1", uuid), node=node)
    assert message == f"Defined VM 'web1' with UUID '{uuid}' on node 'hv1'."
    assert field(nodes, uuid, "node") == "hv1"


@VIA
@pytest.mark.parametrize("selector", sorted(SELECTOR_CHOICE))
def test_define_selector_choice(via: str, selector_cluster: Cluster, client: Client, selector: str) -> None:
    core = selector_cluster
    uuid = new_uuid()
    message = run(via, core, client, "vm.define", xml=vm_xml("new", uuid), selector=selector)
    expected = SELECTOR_CHOICE[selector]
    assert message == f"Defined VM 'new' with UUID '{uuid}' on node '{expected}'."
    assert field(core, uuid, "node") == expected
    undefine_vm(core, "new")  # so that the VM count per node is as before
    other = new_uuid()
    message = run(via, core, client, "vm.define", xml=vm_xml("new2", other), node="nowhere", selector=selector)
    assert message.endswith(f"on node '{expected}' (node 'nowhere' does not exist; chosen by {selector}).")


@pytest.mark.parametrize("selector", sorted(SELECTOR_CHOICE))
def test_select_node(selector_cluster: Cluster, selector: str) -> None:
    assert select_node(selector_cluster, selector) == SELECTOR_CHOICE[selector]
    # Excluding the winner gives the next best, never the flushed hv0 or the dead hv9.
    winner = SELECTOR_CHOICE[selector]
    assert select_node(selector_cluster, selector, exclude=winner) not in (winner, "hv0", "hv9")


@VIA
@pytest.mark.parametrize("selector", sorted(SELECTOR_CHOICE))
def test_the_cluster_default_selector(via: str, settings: Settings, selector_cluster: Cluster, selector: str) -> None:
    cluster = Cluster(dataclasses.replace(settings, target_selector=selector))
    try:
        assert select_node(cluster, None) == SELECTOR_CHOICE[selector]
        uuid = new_uuid()
        message = run(via, cluster, Client(create_app(cluster)), "vm.define", xml=vm_xml("new", uuid), node="nowhere")
        assert message.endswith(f"(node 'nowhere' does not exist; chosen by {selector}).")
        assert field(cluster, uuid, "node") == SELECTOR_CHOICE[selector]
    finally:
        cluster.close()


def test_select_node_ties_go_to_the_first_name(core: Cluster, add_node: Callable[..., str]) -> None:
    for name in ("hvc", "hvb", "hva", "hv10", "hvz"):
        add_node(name, memalloc=512 if name != "hvz" else 256, vcpualloc=2, cpuload=0.5)
    add_node("hv0", memalloc=512, domain_state="flushed")
    assert select_node(core, "mem") == "hvz"
    assert select_node(core, "mem", exclude="hvz") == "hv10"  # "hv10" sorts before "hva"
    assert select_node(core, "vcpus") == "hv10"
    assert select_node(core, "load") == "hv10"
    assert select_node(core, "vms") == "hv10"


def test_select_node_refuses_an_unknown_selector(nodes: Cluster) -> None:
    with pytest.raises(InvalidArgument, match="^Invalid selector 'most': it must be one of mem, vcpus, load, vms.$"):
        select_node(nodes, "most")


@VIA
def test_define_without_a_candidate_node(via: str, core: Cluster, client: Client, add_node: Callable[..., str]) -> None:
    add_node("hv7", daemon_state="stop")
    add_node("hv8", domain_state="flushed")
    add_node("hv9", daemon_state="dead", domain_state="flushed")
    add_node("hv6", daemon_state="init")
    reasons = ("No node can take the VM: hv6: its daemon is init; hv7: its daemon is stop; hv8: it is flushed; "
               "hv9: its daemon is dead.")
    for node in (None, "nowhere"):
        refused(via, core, client, "vm.define", 510, "invalid_state", reasons, xml=vm_xml("web1", new_uuid()),
                node=node)


@VIA
def test_define_on_a_cluster_without_nodes(via: str, core: Cluster, client: Client) -> None:
    refused(via, core, client, "vm.define", 510, "invalid_state", "No node can take the VM: the cluster has no nodes.",
            xml=vm_xml("web1", new_uuid()))


def test_define_http_values(nodes: Cluster, client: Client) -> None:
    before = snapshot(nodes)
    r = client.post(PREFIX + "/vm")
    assert r.status == 510 and r.json()["message"].startswith("Missing value 'xml'")
    r = client.post(PREFIX + "/vm", data={"xml": vm_xml("web1", new_uuid()), "selector": "most"})
    assert r.status == 510
    assert r.json()["message"] == "Invalid value for 'selector': 'most' is not one of mem, vcpus, load, vms."
    r = client.post(PREFIX + "/vm", data={"xml": vm_xml("web1", new_uuid()), "target": "hv2"})
    assert r.status == 510 and r.json()["message"].startswith("Unknown value 'target'")
    assert snapshot(nodes) == before
    # A JSON body and the query string carry values as well as a form.
    uuid = new_uuid()
    r = client.post(PREFIX + "/vm", json={"xml": pretty_xml("web1", uuid), "node": "hv3"})
    assert r.status == 200, r.body
    assert field(nodes, uuid, "node") == "hv3" and field(nodes, uuid, "xml") == pretty_xml("web1", uuid)


def define_at_once(settings: Settings, names: list[str]) -> list[Any]:
    """Define a VM of each name from its own store session, all released together by a barrier;
    each define's message, or the error it raised."""
    barrier = threading.Barrier(len(names))
    results: list[Any] = []

    def worker(name: str) -> None:
        cluster = Cluster(settings)
        try:
            cluster.store.exists(schema.DOMAINS)  # open the session before the race
            barrier.wait(timeout=10)
            results.append(define_vm(cluster, vm_xml(name, new_uuid()), node="hv1"))
        except PvcError as e:
            results.append(e)
        finally:
            cluster.close()

    threads = [threading.Thread(target=worker, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == len(names), results
    return results


def test_concurrent_defines_of_one_name_land_once(settings: Settings, nodes: Cluster) -> None:
    """Two writers with their own store sessions: exactly one defines the name."""
    for round_ in range(5):
        name = f"race{round_}"
        results = define_at_once(settings, [name, name])
        landed = [r for r in results if isinstance(r, str)]
        lost = [r for r in results if not isinstance(r, str)]
        assert len(landed) == 1, results
        assert len(lost) == 1 and isinstance(lost[0], AlreadyExists), results
        assert f"A VM named '{name}' already exists" in lost[0].message
        assert names(list_vms(nodes, f"^{name}$")) == [name]


def test_concurrent_defines_of_different_names_both_land(settings: Settings, nodes: Cluster) -> None:
    results = define_at_once(settings, [f"vm{i}" for i in range(4)])
    assert all(isinstance(r, str) for r in results), results
    assert names(list_vms(nodes)) == ["vm0", "vm1", "vm2", "vm3"]


# --- list and info -------------------------------------------------------------------------------


@VIA
def test_list_shape_and_json_types(via: str, nodes: Cluster, client: Client) -> None:
    uuid = new_uuid()
    xml = vm_xml("web1", uuid, memory="2", unit="GiB", vcpu="4", bridges=("vmbr1001", "brcluster"),
                 description="Web server")
    define_vm(nodes, xml, node="hv2")
    agent_writes_state(nodes, uuid, "failed")
    nodes.store.commit([schema_set(uuid, "failedreason", "libvirt said no")])
    (vm,) = run(via, nodes, client, "vm.list")
    assert vm == {
        "name": "web1",
        "uuid": uuid,
        "state": "failed",
        "node": "hv2",
        "last_node": "",
        "migrated": "no",
        "failed_reason": "libvirt said no",
        "description": "Web server",
        "memory": 2048,
        "vcpu": 4,
        "vcpu_topology": "1/2/1",
        "networks": [
            {"type": "bridge", "mac": "52:54:00:00:00:00", "source": "vmbr1001", "model": "virtio"},
            {"type": "bridge", "mac": "52:54:00:00:00:01", "source": "brcluster", "model": "virtio"},
        ],
        "type": "hvm",
        "arch": "x86_64",
        "machine": "pc-i440fx-2.7",
        "console": "pty",
        "emulator": "/usr/bin/kvm",
        "features": ["acpi", "apic"],
        "disks": [{"type": "rbd", "name": "vms/web1_disk0", "dev": "sda", "bus": "scsi"}],
        "controllers": [{"type": "usb", "model": "none"}],
        "xml": xml,
    }
    assert type(vm["memory"]) is int and type(vm["vcpu"]) is int
    assert json.loads(json.dumps(vm)) == vm


@VIA
def test_missing_optional_parts_are_null_or_empty(via: str, nodes: Cluster, client: Client) -> None:
    uuid = new_uuid()
    define_vm(nodes, minimal_xml("bare", uuid), node="hv1")
    (vm,) = run(via, nodes, client, "vm.info", vm="bare")
    assert set(vm) == VM_OBJECT_KEYS
    for key in ("description", "memory", "vcpu", "vcpu_topology", "type", "arch", "machine", "console", "emulator"):
        assert vm[key] is None, key
    for key in ("networks", "features", "disks", "controllers"):
        assert vm[key] == [], key
    assert (vm["state"], vm["node"], vm["last_node"], vm["migrated"], vm["failed_reason"]) == (
        "stop", "hv1", "", "no", "")


def test_partial_devices_do_not_break_the_list(nodes: Cluster) -> None:
    """Disks and interfaces without their optional parts (the original's 500s, its L4/L5)."""
    uuid = new_uuid()
    xml = (f"<domain><name>odd</name><uuid>{uuid}</uuid><memory>1048576</memory><vcpu>x</vcpu><devices>"
           "<disk type='block'><source dev='/dev/sdb'/></disk><disk type='network'/><disk/>"
           "<interface type='network'><source network='default'/></interface><interface/>"
           "<controller type='pci'/></devices><cpu><topology sockets='1'/></cpu></domain>")
    define_vm(nodes, xml, node="hv1")
    define(nodes, "web1")
    odd, web = list_vms(nodes)
    assert odd["memory"] == 1024 and odd["vcpu"] is None and odd["vcpu_topology"] is None
    assert odd["disks"] == [{"type": "block", "name": "/dev/sdb", "dev": None, "bus": None},
                            {"type": None, "name": None, "dev": None, "bus": None},
                            {"type": None, "name": None, "dev": None, "bus": None}]
    assert odd["networks"] == [{"type": "network", "mac": None, "source": "default", "model": None},
                               {"type": None, "mac": None, "source": None, "model": None}]
    assert odd["controllers"] == [{"type": "pci", "model": None}]
    assert field(nodes, uuid, "rbdlist") == ""
    assert web["name"] == "web1"


def test_unreadable_xml_in_a_foreign_tree_does_not_break_the_list(nodes: Cluster, web1: str) -> None:
    nodes.store.commit([schema_set(web1, "xml", "<domain><name>web1")])
    (vm,) = list_vms(nodes)
    assert (vm["name"], vm["memory"], vm["disks"], vm["xml"]) == ("web1", None, [], "<domain><name>web1")


@pytest.mark.parametrize("memory, unit, expected", [
    ("1048576", "KiB", 1024),
    ("1048576", None, 1024),  # libvirt's default unit is KiB
    ("1048576", "k", 1024),
    ("1024", "MiB", 1024),
    ("1024", "M", 1024),
    ("2", "GiB", 2048),
    ("2", "G", 2048),
    ("1", "TiB", 1048576),
    ("1073741824", "bytes", 1024),
    ("1073741824", "b", 1024),
    ("1536", "KiB", 1.5),
    ("1024000", "KB", 976.562),
    ("1000", "MB", 953.674),
    (" 512 ", "MiB", 512),
    ("lots", "MiB", None),
    ("1024", "parsecs", None),
])
def test_memory_is_mib_whatever_the_unit(nodes: Cluster, memory: str, unit: str | None,
                                         expected: int | float | None) -> None:
    define(nodes, "web1", memory=memory, unit=unit)
    (vm,) = list_vms(nodes)
    assert vm["memory"] == expected
    assert type(vm["memory"]) is type(expected)


@pytest.fixture
def three(nodes: Cluster) -> dict[str, str]:
    """web1 (hv1, start), web2 (hv1, stop), db1 (hv2, start), with UUIDs made for limit tests."""
    uuids = {"web1": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "web2": "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
             "db1": "cccccccc-cccc-4ccc-8ccc-cccccccccccc"}
    for name, node, state in (("web2", "hv1", "stop"), ("db1", "hv2", "start"), ("web1", "hv1", "start")):
        define_vm(nodes, vm_xml(name, uuids[name]), node=node)
        agent_writes_state(nodes, uuids[name], state)
    return uuids


@VIA
@pytest.mark.parametrize("limit, expected", [
    (None, ["db1", "web1", "web2"]),
    ("", ["db1", "web1", "web2"]),
    ("web", ["web1", "web2"]),
    ("1", ["db1", "web1"]),
    ("1$", ["db1", "web1"]),
    ("^web1$", ["web1"]),
    ("^bbbb", ["web2"]),  # by UUID
    ("a", ["web1"]),  # only web1's UUID has an "a"
    ("b", ["db1", "web1", "web2"]),  # web2 matches by name and by UUID: listed once
    ("cccc-4ccc", ["db1"]),
    ("^(db|web2)", ["db1", "web2"]),
    ("WEB", []),
    ("nothing", []),
])
def test_list_limit_is_fuzzy_on_name_and_uuid(via: str, nodes: Cluster, client: Client, three: dict[str, str],
                                               limit: str | None, expected: list[str]) -> None:
    assert names(run(via, nodes, client, "vm.list", limit=limit)) == expected


@VIA
@pytest.mark.parametrize("values, expected", [
    ({"node": "hv1"}, ["web1", "web2"]),
    ({"state": "start"}, ["db1", "web1"]),
    ({"node": "hv1", "state": "start"}, ["web1"]),  # AND, not the original's OR
    ({"node": "hv2", "state": "stop"}, []),
    ({"node": "hv7"}, []),
    ({"limit": "web", "state": "stop"}, ["web2"]),
    ({"limit": "^cccc", "node": "hv2", "state": "start"}, ["db1"]),
    ({"state": "migrate"}, []),
])
def test_list_node_and_state_filters_are_anded(via: str, nodes: Cluster, client: Client, three: dict[str, str],
                                               values: dict[str, str], expected: list[str]) -> None:
    assert names(run(via, nodes, client, "vm.list", **values)) == expected


@VIA
def test_list_bad_values(via: str, nodes: Cluster, client: Client, three: dict[str, str]) -> None:
    refused(via, nodes, client, "vm.list", 400, "invalid_argument", "Invalid limit '('", limit="(")
    refused(via, nodes, client, "vm.list", 400, "invalid_argument", "Invalid node name 'a/b'", node="a/b")
    if via == "http":  # the library takes the state as given; the frontends check the choice
        refused(via, nodes, client, "vm.list", 400, "invalid_argument",
                "Invalid value for 'state': 'running' is not one of", state="running")


@VIA
def test_list_empty_cluster(via: str, nodes: Cluster, client: Client) -> None:
    assert run(via, nodes, client, "vm.list") == []
    assert run(via, nodes, client, "vm.list", limit="web") == []


@VIA
def test_list_is_sorted_by_name(via: str, nodes: Cluster, client: Client) -> None:
    for name in ("web2", "Zed", "app10", "app2", "web10", "_x"):
        define(nodes, name)
    assert names(run(via, nodes, client, "vm.list")) == ["Zed", "_x", "app10", "app2", "web10", "web2"]


def test_list_round_trips_do_not_grow_with_the_vms(nodes: Cluster) -> None:
    define(nodes, "vm00")
    start = nodes.store.round_trips
    assert len(list_vms(nodes)) == 1
    one = nodes.store.round_trips - start
    for i in range(1, 50):
        define(nodes, f"vm{i:02}", node=("hv1", "hv2", "hv3")[i % 3])
    start = nodes.store.round_trips
    assert len(list_vms(nodes)) == 50
    fifty = nodes.store.round_trips - start
    assert one == fifty <= 3
    for query in ({"limit": "vm1"}, {"node": "hv2"}, {"state": "stop"}):
        start = nodes.store.round_trips
        list_vms(nodes, **query)
        assert nodes.store.round_trips - start <= 3
    start = nodes.store.round_trips
    get_vm(nodes, "vm42")  # by name: all names in one batch (after a miss of the name's remembered UUID)
    assert nodes.store.round_trips - start <= 4
    start = nodes.store.round_trips
    get_vm(nodes, "vm42")  # the UUID found for the name is remembered and verified with one read
    assert nodes.store.round_trips - start == 1


def test_a_remembered_name_is_never_believed_when_stale(nodes: Cluster) -> None:
    """Finding a VM by name remembers its UUID; after a rename, a new VM of the old name and an
    undefine, the name still leads to the right VM or to none."""
    first = define(nodes, "cached")
    assert get_vm(nodes, "cached")[0]["uuid"] == first
    modify_vm(nodes, "cached", vm_xml("renamed", first))
    with pytest.raises(NotFound):
        get_vm(nodes, "cached")
    second = define(nodes, "cached")
    assert get_vm(nodes, "cached")[0]["uuid"] == second
    assert get_vm(nodes, "renamed")[0]["uuid"] == first
    undefine_vm(nodes, "cached")
    with pytest.raises(NotFound):
        get_vm(nodes, "cached")


def test_list_parses_each_xml_once(nodes: Cluster) -> None:
    uuids = [define(nodes, name) for name in ("web1", "web2", "web3")]
    list_vms(nodes)
    parses = PARSED.parses
    list_vms(nodes)
    get_vm(nodes, "web2")
    assert PARSED.parses == parses  # unchanged XML is not parsed again
    modify_vm(nodes, "web2", vm_xml("web2", uuids[1], memory="4096"))
    parses = PARSED.parses  # modify parses the new document itself
    (vm,) = list_vms(nodes, "web2")
    assert vm["memory"] == 4096
    assert PARSED.parses == parses + 1
    list_vms(nodes)
    assert PARSED.parses == parses + 1


def test_parse_cache_is_not_fooled_by_a_redefined_uuid(nodes: Cluster) -> None:
    """Undefined and defined again, the XML key is back at version 0 with other content."""
    uuid = new_uuid()
    define_vm(nodes, vm_xml("web1", uuid, memory="1024"), node="hv1")
    assert list_vms(nodes)[0]["memory"] == 1024
    undefine_vm(nodes, "web1")
    define_vm(nodes, vm_xml("web1", uuid, memory="2048"), node="hv1")
    assert list_vms(nodes)[0]["memory"] == 2048


@VIA
def test_info_is_an_exact_lookup(via: str, nodes: Cluster, client: Client, three: dict[str, str]) -> None:
    define(nodes, "web10")
    (vm,) = run(via, nodes, client, "vm.info", vm="web1")
    assert vm == next(v for v in list_vms(nodes) if v["name"] == "web1")
    assert run(via, nodes, client, "vm.info", vm=three["web1"]) == [vm]
    for other in ("web", "eb1", "WEB1", "^web1$", "web.", "aaaaaaaa", "web1 "):
        refused(via, nodes, client, "vm.info", 404, "not_found", f"VM {quote(other)} not found.", vm=other)


@VIA
def test_state_and_node_getters(via: str, nodes: Cluster, client: Client, three: dict[str, str]) -> None:
    assert run(via, nodes, client, "vm.state", vm="db1") == {"name": "db1", "state": "start"}
    assert run(via, nodes, client, "vm.node", vm="db1") == {"name": "db1", "node": "hv2", "last_node": ""}
    run(via, nodes, client, "vm.set-node", vm="db1", action="migrate", node="hv3")
    assert run(via, nodes, client, "vm.node", vm=three["db1"]) == {"name": "db1", "node": "hv3", "last_node": "hv2"}
    assert run(via, nodes, client, "vm.state", vm=three["db1"]) == {"name": "db1", "state": "migrate"}


UNKNOWN_ROUTES = [
    ("vm.info", {}, 404), ("vm.state", {}, 404), ("vm.node", {}, 404), ("vm.dump", {}, 404),
    ("vm.modify", {"xml": vm_xml("nope", new_uuid())}, 510),
    ("vm.undefine", {}, 510), ("vm.undefine", {"delete_disks": True}, 510),
    ("vm.set-state", {"state": "start"}, 510), ("vm.set-state", {"state": "stop"}, 510),
    ("vm.set-node", {"action": "migrate", "node": "hv2"}, 510), ("vm.set-node", {"action": "unmigrate"}, 510),
    ("vm.set-node", {"action": "migrate", "permanent": True}, 510),
]


def route_id(name: str, values: dict[str, Any]) -> str:
    return "-".join([name] + [f"{k}={v}" for k, v in values.items() if k != "xml"])


@VIA
@pytest.mark.parametrize("name, values, status", UNKNOWN_ROUTES, ids=[route_id(n, v) for n, v, _ in UNKNOWN_ROUTES])
def test_unknown_vm_on_every_route(via: str, nodes: Cluster, client: Client, web1: str, name: str,
                                   values: dict[str, Any], status: int) -> None:
    for unknown in ("web", new_uuid().upper().replace("-", "")):  # a prefix of web1; a UUID in another spelling
        refused(via, nodes, client, name, status, "not_found", f"VM {quote(unknown)} not found.", vm=unknown,
                **values)


# --- dump and the planned POST -------------------------------------------------------------------


def crlf_xml(name: str, uuid: str) -> str:
    return pretty_xml(name, uuid).replace("\n", "\r\n")


@VIA
@pytest.mark.parametrize("make", [vm_xml, pretty_xml, minimal_xml, crlf_xml],
                         ids=["single-line", "pretty", "minimal", "crlf"])
def test_dump_gives_back_the_document_byte_for_byte(via: str, nodes: Cluster, client: Client,
                                                    make: Callable[[str, str], str]) -> None:
    uuid = new_uuid()
    xml = make("web1", uuid)
    run(via, nodes, client, "vm.define", xml=xml, node="hv1")
    for vm in ("web1", uuid):
        assert run(via, nodes, client, "vm.dump", vm=vm) == xml


def test_dump_http_answer(nodes: Cluster, client: Client) -> None:
    uuid = new_uuid()
    xml = pretty_xml("web1", uuid)
    define_vm(nodes, xml, node="hv1")
    r = client.get(PREFIX + "/vm/web1/dump")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/xml"
    assert r.body == xml.encode("utf-8")
    r = client.get(PREFIX + "/vm/nope/dump")
    assert r.status == 404 and r.json() == {"message": "VM 'nope' not found.", "error": "not_found", "status": 404}


def test_define_by_file_upload(nodes: Cluster, client: Client) -> None:
    """`curl -F xml=@vm.xml`: the uploaded file is the document, byte for byte."""
    uuid = new_uuid()
    xml = crlf_xml("web1", uuid)
    boundary = "pvc-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"node\"\r\n\r\nhv2\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"xml\"; filename=\"vm.xml\"\r\n"
            "Content-Type: application/xml\r\n\r\n").encode()
    body += xml.encode("utf-8") + f"\r\n--{boundary}--\r\n".encode()
    r = client.post(PREFIX + "/vm", body=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert r.status == 200, r.body
    assert r.json() == {"message": f"Defined VM 'web1' with UUID '{uuid}' on node 'hv2'."}
    assert client.get(PREFIX + f"/vm/{uuid}/dump").body == xml.encode("utf-8")


@pytest.mark.parametrize("vm", ["web1", "nope"])
def test_post_on_a_vm_is_planned(nodes: Cluster, client: Client, web1: str, vm: str) -> None:
    before = snapshot(nodes)
    r = client.post(PREFIX + f"/vm/{vm}", data={"vm_template": "small", "description": "x"})
    assert r.status == 501
    body = r.json()
    assert body["error"] == "not_implemented" and "POST /api/v1/vm" in body["message"]
    assert snapshot(nodes) == before


# --- modify --------------------------------------------------------------------------------------


@VIA
def test_modify_replaces_the_xml(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    xml = vm_xml("web1", web1, memory="4096", rbd=("vms/web1_disk0", "vms/web1_disk1"))
    before = snapshot(nodes)
    assert run(via, nodes, client, "vm.modify", vm="web1", xml=xml) == "Modified VM 'web1'."
    after = snapshot(nodes)
    assert changed_keys(before, after) == {schema.domain_key(web1, "xml"), schema.domain_key(web1, "rbdlist")}
    assert field(nodes, web1, "xml") == xml
    assert field(nodes, web1, "rbdlist") == "vms/web1_disk0,vms/web1_disk1"
    assert run(via, nodes, client, "vm.info", vm="web1")[0]["memory"] == 4096
    # By UUID, with a pretty document.
    pretty = pretty_xml("web1", web1.upper())
    assert run(via, nodes, client, "vm.modify", vm=web1, xml=pretty) == "Modified VM 'web1'."
    assert run(via, nodes, client, "vm.dump", vm="web1") == pretty


@VIA
def test_modify_a_running_vm(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    agent_writes_state(nodes, web1)
    before = snapshot(nodes)
    message = run(via, nodes, client, "vm.modify", vm="web1", xml=vm_xml("web1", web1, vcpu="8"))
    assert message == "Modified VM 'web1'. Restart it for the change to take effect."
    assert field(nodes, web1, "state") == "start"
    assert schema.domain_key(web1, "state") not in changed_keys(before, snapshot(nodes))
    message = run(via, nodes, client, "vm.modify", vm="web1", xml=vm_xml("web1", web1, vcpu="6"), restart=True)
    assert message == "Modified VM 'web1'; restarting it."
    assert (field(nodes, web1, "state"), run(via, nodes, client, "vm.info", vm="web1")[0]["vcpu"]) == ("restart", 6)


@VIA
def test_modify_restart_leaves_a_stopped_vm_stopped(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    message = run(via, nodes, client, "vm.modify", vm="web1", xml=vm_xml("web1", web1, vcpu="8"), restart=True)
    assert message == "Modified VM 'web1'. It is not running; the change applies when it starts."
    assert field(nodes, web1, "state") == "stop"


@VIA
def test_modify_renames(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    before = snapshot(nodes)
    message = run(via, nodes, client, "vm.modify", vm="web1", xml=vm_xml("www", web1))
    assert message == "Modified VM 'www' (renamed from 'web1')."
    after = snapshot(nodes)
    assert changed_keys(before, after) == {schema.DOMAINS, schema.domain(web1), schema.domain_key(web1, "xml"),
                                           schema.domain_key(web1, "rbdlist")}
    assert after[schema.domain(web1)][0] == "www"
    assert run(via, nodes, client, "vm.state", vm="www") == {"name": "www", "state": "stop"}
    refused(via, nodes, client, "vm.state", 404, "not_found", "VM 'web1' not found.", vm="web1")
    # The old name is free again.
    run(via, nodes, client, "vm.define", xml=vm_xml("web1", new_uuid()), node="hv2")
    assert names(list_vms(nodes)) == ["web1", "www"]


@VIA
def test_modify_refuses_a_taken_name(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    db1 = define(nodes, "db1")
    refused(via, nodes, client, "vm.modify", 510, "already_exists", f"A VM named 'db1' already exists (UUID {db1}).",
            vm="web1", xml=vm_xml("db1", web1))


@VIA
def test_modify_refuses_another_uuid(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    other = new_uuid()
    refused(via, nodes, client, "vm.modify", 510, "invalid_argument",
            f"The new XML has UUID '{other}', but VM 'web1' has '{web1}'; the UUID cannot change.",
            vm="web1", xml=vm_xml("web1", other))
    db1 = define(nodes, "db1")
    refused(via, nodes, client, "vm.modify", 510, "invalid_argument", "the UUID cannot change",
            vm="web1", xml=vm_xml("web1", db1))


@VIA
@pytest.mark.parametrize("xml, fragment", BAD)
def test_modify_refuses_bad_and_hostile_xml(via: str, nodes: Cluster, client: Client, web1: str, xml: str,
                                            fragment: str) -> None:
    refused(via, nodes, client, "vm.modify", 510, "invalid_argument", fragment, vm="web1", xml=xml)


def test_modify_http_values(nodes: Cluster, client: Client, web1: str) -> None:
    before = snapshot(nodes)
    r = client.put(PREFIX + "/vm/web1")
    assert r.status == 510 and r.json()["message"].startswith("Missing value 'xml'")
    r = client.put(PREFIX + "/vm/web1", data={"xml": vm_xml("web1", web1), "restart": "maybe"})
    assert r.status == 510 and "Invalid value for 'restart'" in r.json()["message"]
    assert snapshot(nodes) == before
    r = client.put(PREFIX + "/vm/web1", json={"xml": vm_xml("web1", web1, vcpu="3"), "restart": True})
    assert r.status == 200 and r.json() == {"message": "Modified VM 'web1'. It is not running; the change applies "
                                                       "when it starts."}


# --- undefine ------------------------------------------------------------------------------------


@VIA
@pytest.mark.parametrize("state", ["stop", "start", "migrate"])
def test_undefine_removes_every_key(via: str, nodes: Cluster, client: Client, web1: str, state: str) -> None:
    db1 = define(nodes, "db1")
    agent_writes_state(nodes, web1, state)
    before = snapshot(nodes)
    assert run(via, nodes, client, "vm.undefine", vm="web1") == f"Undefined VM 'web1' ({web1})."
    after = snapshot(nodes)
    assert changed_keys(before, after) == {k for k in before if k.startswith(schema.domain(web1))}
    assert not any(k.startswith(schema.domain(web1)) for k in after)
    assert vm_keys(nodes, db1)[""] == "db1"
    refused(via, nodes, client, "vm.info", 404, "not_found", "VM 'web1' not found.", vm="web1")


@VIA
def test_undefine_by_uuid(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    assert run(via, nodes, client, "vm.undefine", vm=web1.upper()) == f"Undefined VM 'web1' ({web1})."
    assert nodes.store.children(schema.DOMAINS) == []


@VIA
def test_remove_checks_every_disk_first(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    """`vm remove` (delete_disks) refuses, changing nothing, when a disk is no volume pvc knows, another VM
    uses one too, or no primary coordinator could remove them. The removal itself, with a real Ceph and
    node agents, is in tests/test_api_storage.py."""
    from tests.test_ops_storage import write_pool, write_volume

    refused(via, nodes, client, "vm.undefine", 510, "invalid_state", "Cannot remove the disks of VM 'web1'",
            "its disk 'vms/web1_disk0' is not a volume pvc knows", "Nothing was removed", vm="web1", delete_disks=True)
    write_pool(nodes, "vms")
    write_volume(nodes, "vms", "web1_disk0", 1024)
    define(nodes, "web2", rbd=("vms/web1_disk0",))
    refused(via, nodes, client, "vm.undefine", 510, "invalid_state", "volume 'vms/web1_disk0' is also a disk of VM "
            "'web2'", "Nothing was removed", vm="web1", delete_disks=True)
    run(via, nodes, client, "vm.undefine", vm="web2")
    refused(via, nodes, client, "vm.undefine", 510, "invalid_state", "No node is the primary coordinator",
            vm="web1", delete_disks=True)
    # A VM without RBD disks needs no storage command.
    uuid = define(nodes, "plain", rbd=())
    assert run(via, nodes, client, "vm.undefine", vm="plain", delete_disks=True) == (
        f"Undefined VM 'plain' ({uuid}); it had no RBD disks to remove.")
    assert vm_keys(nodes, web1)[""] == "web1"


# --- state ---------------------------------------------------------------------------------------


@VIA
@pytest.mark.parametrize("current, request_, message", [
    ("stop", "start", "Starting VM 'web1'."),
    ("failed", "start", "Starting VM 'web1'."),
    ("shutdown", "start", "Starting VM 'web1'."),
    ("start", "stop", "Forcibly stopping VM 'web1'."),
    ("failed", "stop", "Forcibly stopping VM 'web1'."),
    ("shutdown", "stop", "Forcibly stopping VM 'web1'."),
    ("restart", "stop", "Forcibly stopping VM 'web1'."),
    ("start", "shutdown", "Shutting down VM 'web1'."),
    ("start", "restart", "Restarting VM 'web1'."),
])
def test_set_state(via: str, nodes: Cluster, client: Client, web1: str, current: str, request_: str,
                   message: str) -> None:
    agent_writes_state(nodes, web1, current)
    before = snapshot(nodes)
    assert run(via, nodes, client, "vm.set-state", vm="web1", state=request_) == message
    assert changed_keys(before, snapshot(nodes)) == {schema.domain_key(web1, "state")}
    assert field(nodes, web1, "state") == request_


@VIA
@pytest.mark.parametrize("current, request_", [
    ("start", "start"), ("stop", "stop"), ("shutdown", "shutdown"), ("restart", "restart"), ("stop", "shutdown"),
])
def test_set_state_again_changes_nothing(via: str, nodes: Cluster, client: Client, web1: str, current: str,
                                         request_: str) -> None:
    agent_writes_state(nodes, web1, current)
    before = snapshot(nodes)
    message = run(via, nodes, client, "vm.set-state", vm="web1", state=request_)
    assert message == f"VM 'web1' is already in state '{current}'; nothing changed."
    assert snapshot(nodes) == before  # not even the version moved


@VIA
@pytest.mark.parametrize("current, request_", [
    ("stop", "restart"), ("failed", "shutdown"), ("failed", "restart"), ("shutdown", "restart"),
    ("restart", "shutdown"),
])
def test_shutdown_and_restart_need_a_running_vm(via: str, nodes: Cluster, client: Client, web1: str, current: str,
                                                request_: str) -> None:
    agent_writes_state(nodes, web1, current)
    refused(via, nodes, client, "vm.set-state", 510, "invalid_state",
            f"VM 'web1' is not running (its state is '{current}'); it cannot {request_}.", vm="web1", state=request_)


@VIA
@pytest.mark.parametrize("request_", ["start", "shutdown", "restart"])
def test_no_state_change_but_stop_while_migrating(via: str, nodes: Cluster, client: Client, web1: str,
                                                  request_: str) -> None:
    agent_writes_state(nodes, web1, "start")
    run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv2")
    refused(via, nodes, client, "vm.set-state", 510, "invalid_state",
            "VM 'web1' is being migrated; ask again once it has settled (or stop it).", vm="web1", state=request_)
    agent_writes_state(nodes, web1)  # the agent settles the migration
    assert run(via, nodes, client, "vm.set-state", vm="web1", state="stop") == "Forcibly stopping VM 'web1'."


def test_set_state_http_values(nodes: Cluster, client: Client, web1: str) -> None:
    before = snapshot(nodes)
    for data, fragment in (({}, "Missing value 'state'"), ({"state": "migrate"}, "Invalid value for 'state'"),
                           ({"state": "Start"}, "Invalid value for 'state': 'Start'")):
        r = client.post(PREFIX + "/vm/web1/state", data=data)
        assert r.status == 510 and fragment in r.json()["message"], r.body
    assert snapshot(nodes) == before


# --- node: migrate, move, unmigrate --------------------------------------------------------------


@pytest.fixture
def running(web1: str, nodes: Cluster) -> str:
    """web1 running on hv1."""
    agent_writes_state(nodes, web1)
    return web1


def node_fields(core: Cluster, uuid: str) -> tuple[str, str, str]:
    return field(core, uuid, "state"), field(core, uuid, "node"), field(core, uuid, "lastnode")


@VIA
def test_migrate_a_running_vm(via: str, nodes: Cluster, client: Client, running: str) -> None:
    before = snapshot(nodes)
    # Automatic: the least memory allocated among the other ready nodes.
    assert run(via, nodes, client, "vm.set-node", vm="web1", action="migrate") == "Migrating VM 'web1' to node 'hv2'."
    after = snapshot(nodes)
    assert changed_keys(before, after) == {schema.domain_key(running, f) for f in ("state", "node", "lastnode")}
    assert node_fields(nodes, running) == ("migrate", "hv2", "hv1")
    assert run(via, nodes, client, "vm.node", vm="web1") == {"name": "web1", "node": "hv2", "last_node": "hv1"}
    assert run(via, nodes, client, "vm.info", vm="web1")[0]["migrated"] == "from hv1"


@VIA
def test_migrate_to_an_explicit_node(via: str, nodes: Cluster, client: Client, running: str) -> None:
    message = run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv3", selector="mem")
    assert message == "Migrating VM 'web1' to node 'hv3'."
    assert node_fields(nodes, running) == ("migrate", "hv3", "hv1")


@VIA
def test_migrate_to_a_missing_node_selects_one(via: str, nodes: Cluster, client: Client, running: str) -> None:
    message = run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv7", selector="mem")
    assert message == "Migrating VM 'web1' to node 'hv2' (node 'hv7' does not exist; chosen by mem)."
    assert node_fields(nodes, running) == ("migrate", "hv2", "hv1")


@VIA
@pytest.mark.parametrize("selector", sorted(SELECTOR_CHOICE))
def test_migrate_selector_choice(via: str, selector_cluster: Cluster, client: Client, selector: str) -> None:
    core = selector_cluster
    uuid = define(core, "mover", node="hv0")  # on the flushed node, which is no candidate anyway
    message = run(via, core, client, "vm.set-node", vm="mover", action="migrate", selector=selector)
    assert message == f"Migrating VM 'mover' to node '{SELECTOR_CHOICE[selector]}'; it is not running ('stop'), so it is only re-homed."
    assert node_fields(core, uuid) == ("stop", SELECTOR_CHOICE[selector], "hv0")


@VIA
def test_migrate_a_stopped_vm_rehomes_it(via: str, nodes: Cluster, client: Client, web1: str) -> None:
    before = snapshot(nodes)
    message = run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv3")
    assert message == "Migrating VM 'web1' to node 'hv3'; it is not running ('stop'), so it is only re-homed."
    assert changed_keys(before, snapshot(nodes)) == {schema.domain_key(web1, f) for f in ("node", "lastnode")}
    assert node_fields(nodes, web1) == ("stop", "hv3", "hv1")
    # A stopped VM may go to a node that could not run it now.
    run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv8", force=True)
    assert node_fields(nodes, web1) == ("stop", "hv8", "hv1")
    message = run(via, nodes, client, "vm.set-node", vm="web1", action="unmigrate")
    assert message == "Unmigrating VM 'web1' back to node 'hv1'; it is not running ('stop'), so it is only re-homed."
    assert node_fields(nodes, web1) == ("stop", "hv1", "")


@VIA
@pytest.mark.parametrize("values", [
    {"action": "migrate", "node": "hv3"}, {"action": "migrate", "node": "hv3", "force": True},
    {"action": "migrate", "permanent": True}, {"action": "unmigrate"},
], ids=["migrate", "force", "move", "unmigrate"])
def test_no_node_action_while_migrating(via: str, nodes: Cluster, client: Client, running: str,
                                        values: dict[str, Any]) -> None:
    run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv2")
    refused(via, nodes, client, "vm.set-node", 510, "invalid_state",
            "VM 'web1' is busy (state 'migrate'); ask again once it has settled (or stop it).", vm="web1", **values)


@VIA
def test_migrating_a_migrated_vm_needs_force(via: str, nodes: Cluster, client: Client, running: str) -> None:
    run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv2")
    agent_writes_state(nodes, running)  # the migration has settled
    refused(via, nodes, client, "vm.set-node", 510, "invalid_state",
            "VM 'web1' has been migrated before (from 'hv1'); unmigrate it first, or use force to migrate it again.",
            vm="web1", action="migrate", node="hv3")
    refused(via, nodes, client, "vm.set-node", 510, "invalid_state", "has been migrated before",
            vm="web1", action="migrate", node="hv3", force=False)
    message = run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv3", force=True)
    assert message == "Migrating VM 'web1' to node 'hv3'."
    assert node_fields(nodes, running) == ("migrate", "hv3", "hv1")  # the first home is kept
    agent_writes_state(nodes, running)
    message = run(via, nodes, client, "vm.set-node", vm="web1", action="unmigrate")
    assert message == "Unmigrating VM 'web1' back to node 'hv1'."
    assert node_fields(nodes, running) == ("migrate", "hv1", "")
    agent_writes_state(nodes, running)
    assert run(via, nodes, client, "vm.node", vm="web1") == {"name": "web1", "node": "hv1", "last_node": ""}


@VIA
def test_forced_migration_back_home_is_no_longer_migrated(via: str, nodes: Cluster, client: Client,
                                                          running: str) -> None:
    run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv2")
    agent_writes_state(nodes, running)
    run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv1", force=True)
    assert node_fields(nodes, running) == ("migrate", "hv1", "")


@VIA
def test_unmigrate_needs_a_previous_node(via: str, nodes: Cluster, client: Client, running: str) -> None:
    refused(via, nodes, client, "vm.set-node", 510, "invalid_state",
            "VM 'web1' has not been migrated; there is no previous node to return to.", vm="web1", action="unmigrate")


@VIA
def test_unmigrate_a_running_vm_needs_a_ready_home(via: str, nodes: Cluster, client: Client, running: str,
                                                   add_node: Callable[..., str]) -> None:
    run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv2")
    agent_writes_state(nodes, running)
    add_node("hv1", domain_state="flushed")  # its home was flushed meanwhile
    refused(via, nodes, client, "vm.set-node", 510, "invalid_state", "Node 'hv1' cannot take a running VM",
            vm="web1", action="unmigrate")


@VIA
@pytest.mark.parametrize("state", ["start", "stop"])
def test_move_forgets_the_previous_node(via: str, nodes: Cluster, client: Client, web1: str, state: str) -> None:
    agent_writes_state(nodes, web1, state)
    message = run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv3", permanent=True)
    how = "" if state == "start" else "; it is not running ('stop'), so it is only re-homed"
    assert message == f"Permanently moving VM 'web1' to node 'hv3'{how}."
    assert node_fields(nodes, web1) == ("migrate" if state == "start" else "stop", "hv3", "")
    assert run(via, nodes, client, "vm.info", vm="web1")[0]["migrated"] == "no"


@VIA
def test_move_a_migrated_vm(via: str, nodes: Cluster, client: Client, running: str) -> None:
    run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", node="hv2")
    agent_writes_state(nodes, running)
    message = run(via, nodes, client, "vm.set-node", vm="web1", action="migrate", permanent=True)
    assert message == "Permanently moving VM 'web1' to node 'hv1'."  # hv2 is excluded, hv1 has the least memory
    assert node_fields(nodes, running) == ("migrate", "hv1", "")
    agent_writes_state(nodes, running)
    refused(via, nodes, client, "vm.set-node", 510, "invalid_state", "has not been migrated", vm="web1",
            action="unmigrate")


@VIA
@pytest.mark.parametrize("permanent", [False, True])
def test_migrate_to_the_current_node_is_refused(via: str, nodes: Cluster, client: Client, running: str,
                                                permanent: bool) -> None:
    refused(via, nodes, client, "vm.set-node", 510, "invalid_state", "The VM is already on node 'hv1'.",
            vm="web1", action="migrate", node="hv1", permanent=permanent)


@VIA
@pytest.mark.parametrize("target, reason", [("hv8", "it is flushed"), ("hv9", "its daemon is dead")])
def test_a_running_vm_only_goes_to_a_ready_node(via: str, nodes: Cluster, client: Client, running: str, target: str,
                                                reason: str) -> None:
    for permanent in (False, True):
        refused(via, nodes, client, "vm.set-node", 510, "invalid_state",
                f"Node '{target}' cannot take a running VM: {reason}.", vm="web1", action="migrate", node=target,
                permanent=permanent)


@VIA
def test_migrate_without_a_candidate_node(via: str, core: Cluster, client: Client,
                                          add_node: Callable[..., str]) -> None:
    add_node("hv1")
    add_node("hv8", domain_state="flushed")
    add_node("hv9", daemon_state="dead")
    uuid = define(core, "web1", node="hv1", state="start")
    reasons = "No node can take the VM: hv1: it is the VM's current node; hv8: it is flushed; hv9: its daemon is dead."
    for values in ({}, {"node": "hv7"}, {"permanent": True}, {"selector": "vms"}):
        refused(via, core, client, "vm.set-node", 510, "invalid_state", reasons, vm="web1", action="migrate", **values)
    assert node_fields(core, uuid) == ("start", "hv1", "")


def test_set_node_http_values(nodes: Cluster, client: Client, running: str) -> None:
    before = snapshot(nodes)
    for data, fragment in (({}, "Missing value 'action'"), ({"action": "move"}, "Invalid value for 'action'"),
                           ({"action": "migrate", "selector": "cpu"}, "Invalid value for 'selector'"),
                           ({"action": "migrate", "force": "sure"}, "Invalid value for 'force'")):
        r = client.post(PREFIX + "/vm/web1/node", data=data)
        assert r.status == 510 and fragment in r.json()["message"], r.body
    assert snapshot(nodes) == before
    r = client.post(PREFIX + "/vm/web1/node?action=migrate&node=hv3&permanent")
    assert r.status == 200 and r.json() == {"message": "Permanently moving VM 'web1' to node 'hv3'."}


# --- bridges, an uninitialised store and the configuration ----------------------------------------


@VIA
def test_uninitialised_store(via: str, core: Cluster, client: Client) -> None:
    core.store.delete_tree(schema.DOMAINS)
    for name, status, values in (("vm.list", 409, {}), ("vm.info", 409, {"vm": "web1"}),
                                 ("vm.define", 510, {"xml": vm_xml("web1", new_uuid())})):
        failure = refused(via, core, client, name, status, "invalid_state", "is not initialised; run 'pvc init'.",
                          **values)
        assert failure.message.startswith("The cluster in ")



def test_vms_using_bridge(nodes: Cluster) -> None:
    define(nodes, "web1", bridges=("vmbr100", "vmbr200"))
    define(nodes, "db1", bridges=("vmbr200",))
    define(nodes, "none", bridges=())
    nodes.store.commit([schema_set(define(nodes, "broken"), "xml", "not xml")])
    assert vms_using_bridge(nodes, "vmbr200") == ["db1", "web1"]
    assert vms_using_bridge(nodes, "vmbr100") == ["web1"]
    assert vms_using_bridge(nodes, "vmbr1") == []


def test_target_selector_configuration(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    env = {"XDG_DATA_HOME": str(tmp_path)}
    path = tmp_path / "pvc.yaml"
    for value in ("mem", "vcpus", "load", "vms"):
        data["pvc"]["system"]["migration"]["target_selector"] = value
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        assert load_settings(str(path), env).target_selector == value
    del data["pvc"]["system"]
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_settings(str(path), env).target_selector == "mem"
    data["pvc"]["system"] = {"migration": {"target_selector": "memory"}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env)
    assert caught.value.problems == ["pvc.system.migration.target_selector: must be one of mem, vcpus, load, vms"]


# --- review fixes: limits, busy states, stopping a stuck migration --------------------------------


@VIA
def test_define_refuses_a_document_over_the_size_limit(via: str, nodes: Cluster, client: Client) -> None:
    from pvc.lib.vm_xml import MAX_XML_BYTES

    big = vm_xml("big", new_uuid(), description="x" * MAX_XML_BYTES)
    refused(via, nodes, client, "vm.define", 510, "invalid_argument", f"the limit is {MAX_XML_BYTES}", xml=big)
    assert nodes.store.children(schema.DOMAINS) == []
    near = vm_xml("near", new_uuid(), description="x" * (MAX_XML_BYTES - 1000))
    run(via, nodes, client, "vm.define", xml=near, node="hv1")  # just below the limit: fits one store write
    assert [vm["name"] for vm in list_vms(nodes)] == ["near"]


@VIA
@pytest.mark.parametrize("spelling", ["{%s}", "urn:uuid:%s", " %s x"])
def test_define_refuses_uuid_spellings_libvirt_does_not_read(via: str, nodes: Cluster, client: Client,
                                                             spelling: str) -> None:
    text = spelling % new_uuid()
    refused(via, nodes, client, "vm.define", 510, "invalid_argument", "is not a valid UUID",
            xml=vm_xml("odd", text), node="hv1")


@VIA
def test_stop_is_accepted_during_a_migration(via: str, nodes: Cluster, client: Client) -> None:
    """A migration whose target never reports back must not leave the VM impossible to stop."""
    uuid = define(nodes, "stuck", node="hv1", state="migrate")
    for state in ("start", "shutdown", "restart"):
        refused(via, nodes, client, "vm.set-state", 510, "invalid_state", "being migrated", vm="stuck", state=state)
    assert run(via, nodes, client, "vm.set-state", vm="stuck", state="stop") == "Forcibly stopping VM 'stuck'."
    assert field(nodes, uuid, "state") == "stop"


@VIA
@pytest.mark.parametrize("busy", ["migrate", "restart", "shutdown"])
@pytest.mark.parametrize("action, values", [("migrate", {}), ("migrate", {"permanent": True}), ("unmigrate", {})])
def test_node_changes_wait_for_a_busy_vm(via: str, nodes: Cluster, client: Client, busy: str, action: str,
                                         values: dict[str, Any]) -> None:
    """A VM restarting, shutting down or migrating is still running where it was: moving it in the
    tree then could leave it running where the tree no longer says it is."""
    define(nodes, "busy", node="hv1", state=busy)
    refused(via, nodes, client, "vm.set-node", 510, "invalid_state", f"busy (state '{busy}')",
            vm="busy", action=action, **values)


def test_a_vm_undefined_during_changes_is_reported_as_not_found(nodes: Cluster) -> None:
    """Writers racing an undefine see "not found" (or succeed before it), never a store key error."""
    define(nodes, "racing", node="hv1")
    errors: list[PvcError] = []
    barrier = threading.Barrier(2)

    def change_states() -> None:
        """Change the state until a change fails: once the VM is undefined, every change does."""
        deadline = time.monotonic() + 30
        with Cluster(nodes.settings) as own:
            barrier.wait(30)
            while time.monotonic() < deadline:
                for state in ("start", "stop"):
                    try:
                        set_vm_state(own, "racing", state)
                    except PvcError as e:
                        errors.append(e)
                        return

    worker = threading.Thread(target=change_states)
    worker.start()
    barrier.wait(30)
    undefine_vm(nodes, "racing")
    worker.join(60)
    assert errors and all(isinstance(e, NotFound) and "VM 'racing' not found" in e.message for e in errors), errors


def test_stored_xml_is_read_whatever_its_size_and_bridges_count_when_unreadable(nodes: Cluster) -> None:
    """The size limit is for submitted documents: a big one written by other tools is still read,
    and a VM whose stored XML cannot be parsed still counts as using a bridge its text names."""
    from pvc.lib.vm_xml import MAX_XML_BYTES

    big = define(nodes, "big", bridges=("vmbr100",))
    large = vm_xml("big", big, description="x" * (MAX_XML_BYTES + 1000), bridges=("vmbr100",))
    nodes.store.commit([Set(schema.domain_key(big, "xml"), large)])
    (vm,) = get_vm(nodes, "big")
    assert vm["memory"] == 1024 and [n["source"] for n in vm["networks"]] == ["vmbr100"]
    broken = define(nodes, "broken", bridges=("vmbr200",))
    nodes.store.commit([Set(schema.domain_key(broken, "xml"), "<domain><devices><source bridge='vmbr200'/>")])
    assert vms_using_bridge(nodes, "vmbr100") == ["big"]
    assert vms_using_bridge(nodes, "vmbr200") == ["broken"]
    assert vms_using_bridge(nodes, "vmbr20") == []  # a name, not a prefix


@VIA
def test_unmigrate_to_a_node_that_no_longer_exists_is_refused(via: str, nodes: Cluster, client: Client) -> None:
    """Even a stopped VM is not re-homed to a previous node that is gone (or was never a node)."""
    uuid = define(nodes, "orphan", node="hv2")
    for ghost in ("ghost", "bad/name"):
        nodes.store.commit([Set(schema.domain_key(uuid, "lastnode"), ghost)])  # as a foreign tree may hold
        refused(via, nodes, client, "vm.set-node", 510, "invalid_state", "does not exist", vm="orphan",
                action="unmigrate")
