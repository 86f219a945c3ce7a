"""Node operations, node registration and cluster initialisation, on both store engines.

Every test runs against a real store (the embedded SQLite file and a real ZooKeeper, one chroot
per test). "Nothing changed" is checked by comparing the whole tree, values and versions, before
and after; simulated node agents are threads with their own store session that write through
:mod:`pvc.lib.node_reports`, as the real agent does.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import uuid
from typing import Any, Callable

import pytest

from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import Conflict, InvalidArgument, InvalidState, NotFound, Timeout
from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.ops.node import (
    get_coordinator_state,
    get_daemon_state,
    get_domain_state,
    get_node,
    list_nodes,
    set_coordinator_state,
    set_domain_state,
    this_node,
    wait_domain_state,
)
from pvc.lib.store import Create, Delete

FACTS = NodeFacts(8, "6.1.0-amd64", "GNU/Linux", "x86_64")
BAD_NAMES = ["", "a/b", ".", "..", "hv\n1", "hv\x001", "x" * 256]
NODE_KEYS = {"name", "daemon_state", "coordinator_state", "domain_state", "cpu_count", "kernel", "os", "arch",
             "load", "domains_count", "running_domains", "vcpu", "memory", "problem"}


# --- helpers -------------------------------------------------------------------------------------


def snapshot(core: Cluster) -> dict[str, tuple[str, int]]:
    """Every key of the cluster's tree with its value and data version."""
    keys = core.store.subtree("/")
    return {k: (e.value, e.version) for k, e in core.store.get_many(keys).items() if e is not None}


def changed_keys(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def value(core: Cluster, path: str) -> str:
    return core.store.get(path).value


def domainstate(core: Cluster, node: str) -> str:
    return value(core, schema.node_key(node, "domainstate"))


def poll_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Re-check ``condition`` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        pause.wait(0.005)


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` on a thread; its return value or exception lands in the returned dict."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # handed to the test, never left unhandled on the thread
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# --- list_nodes ----------------------------------------------------------------------------------


def test_list_nodes_empty_cluster(core: Cluster) -> None:
    assert list_nodes(core) == []
    assert list_nodes(core, "hv") == []


def test_list_nodes_sorted_by_name(core: Cluster, add_node: Callable[..., str]) -> None:
    for name in ("hv2", "hv10", "web1", "hv1", "ahv"):
        add_node(name)
    assert [n["name"] for n in list_nodes(core)] == ["ahv", "hv1", "hv10", "hv2", "web1"]


def test_list_nodes_shape_and_json_types(core: Cluster, add_node: Callable[..., str]) -> None:
    uuids = (str(uuid.uuid4()), str(uuid.uuid4()))
    add_node("hv1", coordinator=True, memalloc=4096, vcpualloc=4, cpuload=0.5, domainscount=2,
             running_domains=uuids)
    nodes = list_nodes(core)
    assert nodes == [{
        "name": "hv1",
        "daemon_state": "run",
        "coordinator_state": "secondary",
        "domain_state": "ready",
        "cpu_count": 8,
        "kernel": "6.1.0-amd64",
        "os": "GNU/Linux",
        "arch": "x86_64",
        "load": 0.5,
        "domains_count": 2,
        "running_domains": list(uuids),
        "vcpu": {"total": 8, "allocated": 4},
        "memory": {"total": 32000, "allocated": 4096, "used": 8000, "free": 24000},
        "problem": None,
    }]
    node = nodes[0]
    assert set(node) == NODE_KEYS
    # numbers are numbers (not the original's strings), with exact types
    for number in (node["cpu_count"], node["domains_count"], node["vcpu"]["total"], node["vcpu"]["allocated"],
                   *node["memory"].values()):
        assert type(number) is int
    assert type(node["load"]) is float
    assert type(node["running_domains"]) is list
    assert json.loads(json.dumps(nodes)) == nodes


def test_list_nodes_fresh_node_has_empty_domain_list_and_zero_load(core: Cluster) -> None:
    register_node(core, "hv1", FACTS)
    (node,) = list_nodes(core)
    assert node["running_domains"] == []
    assert node["load"] == 0.0 and type(node["load"]) is float
    assert node["memory"] == {"total": 0, "allocated": 0, "used": 0, "free": 0}


def test_list_nodes_missing_key_is_null_not_a_crash(core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1")
    core.store.commit([Delete(schema.node_key("hv1", "memtotal")), Delete(schema.node_key("hv1", "cpuload"))])
    (node,) = list_nodes(core)
    assert node["memory"]["total"] is None
    assert node["load"] is None
    assert node["memory"]["used"] == 8000


@pytest.mark.parametrize(
    "limit, expected",
    [
        (None, ["ahv1x", "hv1", "hv10", "hv11", "hv2", "web1"]),
        ("", ["ahv1x", "hv1", "hv10", "hv11", "hv2", "web1"]),
        ("hv1", ["ahv1x", "hv1", "hv10", "hv11"]),  # substring
        ("^hv1", ["hv1", "hv10", "hv11"]),  # prefix
        ("hv1$", ["hv1"]),  # suffix
        ("1$", ["hv1", "hv11", "web1"]),  # suffix
        ("^hv1$", ["hv1"]),  # exact
        ("h.1", ["ahv1x", "hv1", "hv10", "hv11"]),  # regex metacharacters are live
        ("^(hv2|web)", ["hv2", "web1"]),
        ("a$b", []),  # a `$` anywhere suppresses the appended .*
        ("nothing", []),
    ],
)
def test_list_nodes_fuzzy_limit(core: Cluster, add_node: Callable[..., str], limit: str | None,
                                expected: list[str]) -> None:
    for name in ("hv1", "hv2", "hv10", "hv11", "web1", "ahv1x"):
        add_node(name)
    assert [n["name"] for n in list_nodes(core, limit)] == expected


@pytest.mark.parametrize("limit", ["(", "[a-", "*hv", "hv1)"])
def test_list_nodes_invalid_regex(core: Cluster, add_node: Callable[..., str], limit: str) -> None:
    add_node("hv1")
    with pytest.raises(InvalidArgument, match=r"^Invalid limit "):
        list_nodes(core, limit)


def test_list_nodes_on_uninitialised_store(core: Cluster) -> None:
    core.store.delete_tree(schema.NODES)
    with pytest.raises(InvalidState, match="not initialised; run 'pvc init'"):
        list_nodes(core)


# --- get_node and the state getters ---------------------------------------------------------------


def test_get_node_is_exact(core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1")
    add_node("hv10", coordinator=True)
    result = get_node(core, "hv1")
    assert [n["name"] for n in result] == ["hv1"]
    assert result == [n for n in list_nodes(core) if n["name"] == "hv1"]
    assert get_node(core, "hv10")[0]["coordinator_state"] == "secondary"


@pytest.mark.parametrize("name", ["hv", "v1", "hv.", "^hv1$", "hv100", "HV1"])
def test_get_node_unknown_or_partial_name(core: Cluster, add_node: Callable[..., str], name: str) -> None:
    add_node("hv1")
    add_node("hv10")
    with pytest.raises(NotFound, match="^Node .* not found.$"):
        get_node(core, name)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_get_node_bad_name(core: Cluster, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="^Invalid node name"):
        get_node(core, bad)


def test_state_getters(core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1", coordinator=True, daemon_state="run", domain_state="flush")
    add_node("hv10", daemon_state="dead", domain_state="ready")
    set_coordinator_state(core, "hv1", "primary")  # only the agent flips its own routerstate
    assert get_daemon_state(core, "hv1") == {"name": "hv1", "daemon_state": "run"}
    assert get_coordinator_state(core, "hv1") == {"name": "hv1", "coordinator_state": "secondary"}
    assert get_domain_state(core, "hv1") == {"name": "hv1", "domain_state": "flush"}
    assert get_daemon_state(core, "hv10") == {"name": "hv10", "daemon_state": "dead"}
    assert get_coordinator_state(core, "hv10") == {"name": "hv10", "coordinator_state": "client"}
    assert get_domain_state(core, "hv10") == {"name": "hv10", "domain_state": "ready"}


@pytest.mark.parametrize("getter", [get_daemon_state, get_coordinator_state, get_domain_state])
def test_state_getters_unknown_node(core: Cluster, add_node: Callable[..., str], getter: Callable[..., Any]) -> None:
    add_node("hv1")
    # "hv" would have matched hv1 in the original (prefix regex); here it is simply unknown
    for name in ("hv", "hv2"):
        with pytest.raises(NotFound, match=f"^Node '{name}' not found.$"):
            getter(core, name)
    with pytest.raises(InvalidArgument):
        getter(core, "a/b")


# --- set_coordinator_state ------------------------------------------------------------------------


@pytest.fixture
def coordinators(core: Cluster, add_node: Callable[..., str]) -> Cluster:
    """hv1, hv2: running coordinators; hv3: a hypervisor; hv4: a dead and hv5 a starting coordinator."""
    add_node("hv1", coordinator=True)
    add_node("hv2", coordinator=True)
    add_node("hv3")
    add_node("hv4", coordinator=True, daemon_state="dead")
    add_node("hv5", coordinator=True, daemon_state="init")
    return core


def test_primary_moves_primary_node(coordinators: Cluster) -> None:
    core = coordinators
    assert value(core, schema.PRIMARY_NODE) == "none"
    before = snapshot(core)
    assert set_coordinator_state(core, "hv1", "primary") == "Setting node 'hv1' as the primary coordinator."
    after = snapshot(core)
    assert changed_keys(before, after) == {schema.PRIMARY_NODE}
    assert after[schema.PRIMARY_NODE] == ("hv1", before[schema.PRIMARY_NODE][1] + 1)
    # another coordinator can take over directly
    assert set_coordinator_state(core, "hv2", "primary") == "Setting node 'hv2' as the primary coordinator."
    assert value(core, schema.PRIMARY_NODE) == "hv2"


def test_secondary_clears_primary_node(coordinators: Cluster) -> None:
    core = coordinators
    set_coordinator_state(core, "hv1", "primary")
    before = snapshot(core)
    assert set_coordinator_state(core, "hv1", "secondary") == "Setting node 'hv1' as a secondary coordinator."
    after = snapshot(core)
    assert changed_keys(before, after) == {schema.PRIMARY_NODE}
    assert after[schema.PRIMARY_NODE][0] == "none"


@pytest.mark.parametrize(
    "setup, node, state, message",
    [
        (None, "hv1", "secondary", "Node 'hv1' is already a secondary coordinator; nothing changed."),
        ("hv1", "hv1", "primary", "Node 'hv1' is already the primary coordinator; nothing changed."),
        ("hv1", "hv2", "secondary", "Node 'hv2' is already a secondary coordinator; nothing changed."),
    ],
)
def test_resetting_coordinator_state_has_no_effect(coordinators: Cluster, setup: str | None, node: str, state: str,
                                                   message: str) -> None:
    core = coordinators
    if setup:
        set_coordinator_state(core, setup, "primary")
    before = snapshot(core)
    assert set_coordinator_state(core, node, state) == message
    assert snapshot(core) == before  # values and versions identical


@pytest.mark.parametrize(
    "node, error, pattern",
    [
        ("hv9", NotFound, r"^Node 'hv9' not found\.$"),
        ("hv3", InvalidState, r"^Node 'hv3' is not a coordinator"),
        ("hv4", InvalidState, r"^Node 'hv4' is not running \(its daemon state is 'dead'\)\.$"),
        ("hv5", InvalidState, r"^Node 'hv5' is not running \(its daemon state is 'init'\)\.$"),
        ("a/b", InvalidArgument, r"^Invalid node name"),
        ("", InvalidArgument, r"^Invalid node name"),
    ],
)
@pytest.mark.parametrize("state", ["primary", "secondary"])
@pytest.mark.parametrize("primary", [None, "hv1"])
def test_coordinator_state_refused_changes_nothing(coordinators: Cluster, node: str, error: type, pattern: str,
                                                   state: str, primary: str | None) -> None:
    core = coordinators
    if primary:
        set_coordinator_state(core, primary, "primary")
    before = snapshot(core)
    with pytest.raises(error, match=pattern):
        set_coordinator_state(core, node, state)
    assert snapshot(core) == before


def test_stale_coordinator_switch_cannot_both_land(tmp_path: Any) -> None:
    """Two clients read /primary_node before either writes; exactly one switch lands.

    The interleaving is forced for real: another connection holds the embedded store's write
    lock (as another pvc process in the middle of a write would) until both clients have read
    and are blocked in their write. Embedded engine only: ZooKeeper offers no way to hold
    writers back, and its conditional write is the same versioned Set.
    """
    settings = Settings(store_path=str(tmp_path / "pvc.sqlite"), wait_timeout=10.0)
    with Cluster(settings) as setup:
        for name in ("hv1", "hv2"):
            register_node(setup, name, FACTS, coordinator=True)
            publish_figures(setup, name, NodeFigures())
        start_version = setup.store.get(schema.PRIMARY_NODE).version
    a, b = Cluster(settings), Cluster(settings)
    try:
        base = {}
        for client in (a, b):
            client.store.exists(schema.NODES)  # open the store before the lock is taken
            base[client] = client.store.round_trips
        lock = sqlite3.connect(settings.store_path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            ta, out_a = run_in_thread(lambda: set_coordinator_state(a, "hv1", "primary"))
            tb, out_b = run_in_thread(lambda: set_coordinator_state(b, "hv2", "primary"))
            # Each has made its one batched read and entered its write (the second request).
            poll_until(lambda: all(c.store.round_trips >= base[c] + 2 for c in (a, b))
                       or "error" in out_a or "error" in out_b)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        ta.join(30)
        tb.join(30)
        outcomes = [out_a, out_b]
        assert all(("result" in o) != ("error" in o) for o in outcomes), outcomes
        winners = [o["result"] for o in outcomes if "result" in o]
        losers = [o["error"] for o in outcomes if "error" in o]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert isinstance(losers[0], Conflict), losers
        assert "nothing was changed, try again" in losers[0].message
        winner = "hv1" if "hv1" in winners[0] else "hv2"
        entry = a.store.get(schema.PRIMARY_NODE)
        assert (entry.value, entry.version) == (winner, start_version + 1)
    finally:
        a.close()
        b.close()


# --- set_domain_state and wait_domain_state -----------------------------------------------------------


@pytest.mark.parametrize(
    "start, state, written, message",
    [
        ("ready", "flush", "flush", "Flushing node 'hv1' of running VMs."),
        ("unflush", "flush", "flush", "Flushing node 'hv1' of running VMs."),
        ("flushed", "ready", "unflush", "Restoring node 'hv1' to active service."),
        ("flush", "ready", "unflush", "Restoring node 'hv1' to active service."),
    ],
)
def test_set_domain_state_writes_request(core: Cluster, add_node: Callable[..., str], start: str, state: str,
                                         written: str, message: str) -> None:
    add_node("hv1", domain_state=start)
    add_node("hv2", domain_state=start)
    before = snapshot(core)
    assert set_domain_state(core, "hv1", state) == message
    after = snapshot(core)
    path = schema.node_key("hv1", "domainstate")
    assert changed_keys(before, after) == {path}
    assert after[path] == (written, before[path][1] + 1)
    assert get_domain_state(core, "hv1") == {"name": "hv1", "domain_state": written}


@pytest.mark.parametrize("done, state", [("flushed", "flush"), ("ready", "ready")])
def test_set_domain_state_already_done_has_no_effect(core: Cluster, add_node: Callable[..., str], done: str,
                                                     state: str) -> None:
    add_node("hv1", domain_state=done)
    before = snapshot(core)
    assert set_domain_state(core, "hv1", state) == f"Node 'hv1' is already {done}; nothing changed."
    assert snapshot(core) == before


@pytest.mark.parametrize("in_progress, state", [("flush", "flush"), ("unflush", "ready")])
def test_set_domain_state_in_progress_is_rewritten(core: Cluster, add_node: Callable[..., str], in_progress: str,
                                                   state: str) -> None:
    """A re-request while the change has not completed writes the request again (a fresh start)."""
    add_node("hv1", domain_state=in_progress)
    path = schema.node_key("hv1", "domainstate")
    version = core.store.get(path).version
    assert "nothing changed" not in set_domain_state(core, "hv1", state)
    assert core.store.get(path).value == in_progress
    assert core.store.get(path).version == version + 1


def test_set_domain_state_creates_missing_key(core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1")
    core.store.commit([Delete(schema.node_key("hv1", "domainstate"))])
    set_domain_state(core, "hv1", "flush")
    assert domainstate(core, "hv1") == "flush"


@pytest.mark.parametrize("state", ["flush", "ready"])
def test_set_domain_state_unknown_node_writes_nothing(core: Cluster, add_node: Callable[..., str], state: str) -> None:
    add_node("hv1")
    before = snapshot(core)
    with pytest.raises(NotFound, match=r"^Node 'hv2' not found\.$"):
        set_domain_state(core, "hv2", state)
    for bad in BAD_NAMES:
        with pytest.raises(InvalidArgument):
            set_domain_state(core, bad, state)
    assert snapshot(core) == before
    assert not core.store.exists("/nodes/hv2")


@pytest.mark.parametrize("state, request_value, done", [("flush", "flush", "flushed"), ("ready", "unflush", "ready")])
def test_wait_domain_state_returns_when_agent_reports(core: Cluster, add_node: Callable[..., str], state: str,
                                                      request_value: str, done: str) -> None:
    add_node("hv1", domain_state="ready" if state == "flush" else "flushed")
    set_domain_state(core, "hv1", state)
    assert domainstate(core, "hv1") == request_value
    waiting_from = core.store.round_trips

    def agent() -> None:
        # The agent is another process: its own store session.
        with Cluster(core.settings) as own:
            poll_until(lambda: core.store.round_trips > waiting_from)  # the waiter has looked once
            report_domain_state(own, "hv1", done)

    thread, out = run_in_thread(agent)
    started = time.monotonic()
    message = wait_domain_state(core, "hv1", state, timeout=30)
    elapsed = time.monotonic() - started
    thread.join(30)
    assert "error" not in out, out
    assert message == f"Node 'hv1' reports domain state '{done}'."
    assert domainstate(core, "hv1") == done
    # Woken by the change, not by the 5 s safety re-check nor the 30 s deadline.
    assert elapsed < 4.0


def test_wait_domain_state_already_done_returns_at_once(core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1", domain_state="flushed")
    assert wait_domain_state(core, "hv1", "flush", timeout=0.2) == "Node 'hv1' reports domain state 'flushed'."


@pytest.mark.parametrize("state, request_value, done", [("flush", "flush", "flushed"), ("ready", "unflush", "ready")])
def test_wait_domain_state_times_out(core: Cluster, add_node: Callable[..., str], state: str, request_value: str,
                                     done: str) -> None:
    add_node("hv1", domain_state="ready" if state == "flush" else "flushed")
    set_domain_state(core, "hv1", state)
    started = time.monotonic()
    with pytest.raises(Timeout) as caught:
        wait_domain_state(core, "hv1", state, timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert str(caught.value) == (
        f"Timed out after 0.3 s: node 'hv1' still reports domain state '{request_value}', not '{done}'."
    )


def test_wait_domain_state_uses_configured_timeout(core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1", domain_state="flush")
    short = Cluster(core.settings.replace(wait_timeout=0.25))
    try:
        with pytest.raises(Timeout, match=r"^Timed out after 0.25 s: "):
            wait_domain_state(short, "hv1", "flush")
    finally:
        short.close()


def test_wait_domain_state_unknown_node(core: Cluster) -> None:
    with pytest.raises(NotFound, match=r"^Node 'hv9' not found\.$"):
        wait_domain_state(core, "hv9", "flush", timeout=5)


# --- register_node, publish_figures, report_domain_state -------------------------------------------


@pytest.mark.parametrize("coordinator, mode, router", [(False, "hypervisor", "client"), (True, "coordinator", "secondary")])
def test_register_new_node_initial_values(core: Cluster, coordinator: bool, mode: str, router: str) -> None:
    before = int(time.time())
    assert register_node(core, "hv1", FACTS, coordinator=coordinator) is True
    after = int(time.time())
    assert value(core, "/nodes/hv1") == mode
    values = {f: value(core, schema.node_key("hv1", f)) for f in schema.NODE_FIELDS}
    keepalive = int(values.pop("keepalive"))
    assert before <= keepalive <= after
    assert values == {
        "daemonmode": mode,
        "daemonstate": "init",
        "routerstate": router,
        "domainstate": "flushed",
        "staticdata": "8 6.1.0-amd64 GNU/Linux x86_64",
        "memtotal": "0",
        "memused": "0",
        "memfree": "0",
        "memalloc": "0",
        "vcpualloc": "0",
        "cpuload": "0.0",
        "domainscount": "0",
        "runningdomains": "",
        "networkscount": "0",
        "problem": "",
    }
    assert set(core.store.children("/nodes/hv1")) == set(schema.NODE_FIELDS)  # no IPMI secrets stored
    assert get_node(core, "hv1")[0]["domain_state"] == "flushed"


def test_reregistration_keeps_domain_state_and_figures(core: Cluster) -> None:
    register_node(core, "hv1", FACTS)
    publish_figures(core, "hv1", NodeFigures(memtotal=64000, memused=20000, memfree=44000, memalloc=4096,
                                             vcpualloc=4, cpuload=1.25, domainscount=1, running_domains=("u1",)))
    report_domain_state(core, "hv1", "ready")
    figures = {f: value(core, schema.node_key("hv1", f))
               for f in ("memtotal", "memused", "memfree", "memalloc", "vcpualloc", "cpuload", "domainscount",
                         "runningdomains", "keepalive")}
    new_facts = NodeFacts(16, "6.2.0-amd64", "GNU/Linux", "aarch64")
    assert register_node(core, "hv1", new_facts, coordinator=True) is False
    assert {f: value(core, schema.node_key("hv1", f)) for f in figures} == figures
    assert domainstate(core, "hv1") == "ready"
    assert value(core, schema.node_key("hv1", "daemonstate")) == "init"
    assert value(core, schema.node_key("hv1", "daemonmode")) == "coordinator"
    assert value(core, "/nodes/hv1") == "coordinator"
    assert value(core, schema.node_key("hv1", "routerstate")) == "secondary"
    assert value(core, schema.node_key("hv1", "staticdata")) == "16 6.2.0-amd64 GNU/Linux aarch64"
    node = get_node(core, "hv1")[0]
    assert (node["cpu_count"], node["arch"], node["load"]) == (16, "aarch64", 1.25)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_register_bad_name_writes_nothing(core: Cluster, bad: str) -> None:
    before = snapshot(core)
    with pytest.raises(InvalidArgument, match="^Invalid node name"):
        register_node(core, bad, FACTS)
    assert snapshot(core) == before


@pytest.mark.parametrize("facts", [NodeFacts(8, "6.1 amd64", "GNU/Linux", "x86_64"), NodeFacts(8, "", "Linux", "x86"),
                                   NodeFacts(8, "k", "GNU/Linux", "x86_64\n")])
def test_register_bad_facts_writes_nothing(core: Cluster, facts: NodeFacts) -> None:
    before = snapshot(core)
    with pytest.raises(InvalidArgument, match="single words"):
        register_node(core, "hv1", facts)
    assert snapshot(core) == before


def test_publish_figures(core: Cluster) -> None:
    register_node(core, "hv1", FACTS)
    publish_figures(core, "hv1", NodeFigures(memtotal=64000, memused=20000, memfree=44000, memalloc=4096, vcpualloc=4,
                                             cpuload=0.5, domainscount=2, running_domains=("u1", "u2")))
    assert value(core, schema.node_key("hv1", "daemonstate")) == "run"
    assert value(core, schema.node_key("hv1", "runningdomains")) == "u1 u2"
    node = get_node(core, "hv1")[0]
    assert node["memory"] == {"total": 64000, "used": 20000, "free": 44000, "allocated": 4096}
    assert (node["load"], node["domains_count"], node["running_domains"]) == (0.5, 2, ["u1", "u2"])
    assert node["vcpu"] == {"total": 8, "allocated": 4}
    publish_figures(core, "hv1", NodeFigures(), daemon_state="shutdown")
    node = get_node(core, "hv1")[0]
    assert (node["daemon_state"], node["running_domains"], node["load"]) == ("shutdown", [], 0.0)


def test_publish_figures_refused_writes_nothing(core: Cluster) -> None:
    register_node(core, "hv1", FACTS)
    before = snapshot(core)
    with pytest.raises(NotFound, match=r"^Node 'hv2' not found\.$"):
        publish_figures(core, "hv2", NodeFigures(memtotal=1))
    with pytest.raises(InvalidArgument, match="^Invalid daemon state 'running'"):
        publish_figures(core, "hv1", NodeFigures(memtotal=1), daemon_state="running")
    for bad in BAD_NAMES:
        with pytest.raises(InvalidArgument):
            publish_figures(core, bad, NodeFigures(memtotal=1))
    assert snapshot(core) == before


def test_report_domain_state(core: Cluster) -> None:
    register_node(core, "hv1", FACTS)
    for state in ("flush", "flushed", "unflush", "ready"):
        report_domain_state(core, "hv1", state)
        assert get_domain_state(core, "hv1") == {"name": "hv1", "domain_state": state}
    before = snapshot(core)
    with pytest.raises(InvalidArgument, match="^Invalid domain state 'busy'"):
        report_domain_state(core, "hv1", "busy")
    with pytest.raises(NotFound, match=r"^Node 'hv2' not found\.$"):
        report_domain_state(core, "hv2", "ready")
    with pytest.raises(InvalidArgument):
        report_domain_state(core, "../x", "ready")
    assert snapshot(core) == before


def test_this_node_is_the_short_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert this_node() == socket.gethostname().split(".")[0]
    monkeypatch.setattr(socket, "gethostname", lambda: "hv7.example.org")
    assert this_node() == "hv7"


# --- init_cluster ------------------------------------------------------------------------------------


ROOT_TREE = dict(schema.ROOT_TREE)


def cluster_tree(core: Cluster) -> dict[str, str]:
    """The tree without the store's own root key."""
    return {k: v for k, (v, _) in snapshot(core).items() if k != "/"}


@pytest.mark.zk
def test_init_on_empty_zookeeper_chroot(zk_server: Any, zk_admin: Any) -> None:
    chroot = f"/test-{uuid.uuid4().hex[:12]}"
    zk_admin.commit([Create(chroot)])
    with Cluster(Settings(coordinators=(zk_server.hosts,), zk_chroot=chroot)) as core:
        assert core.store.children("/") == []
        message = init_cluster(core)
        assert message == f"Initialised a new cluster in ZooKeeper at {zk_server.hosts}{chroot}."
        assert cluster_tree(core) == ROOT_TREE
        assert list_nodes(core) == []
    # the tree really lives under the chroot
    assert zk_admin.get(chroot + schema.PRIMARY_NODE).value == "none"


@pytest.mark.zk
def test_init_creates_a_missing_zookeeper_chroot(zk_server: Any, zk_admin: Any) -> None:
    """`pvc.store.chroot` may name a path that does not exist yet: `pvc init` creates it."""
    top = f"/test-{uuid.uuid4().hex[:12]}"
    chroot = top + "/clusters/pvc"
    assert not zk_admin.exists(top)
    with Cluster(Settings(coordinators=(zk_server.hosts,), zk_chroot=chroot)) as core:
        with pytest.raises(InvalidState, match="not initialised; run 'pvc init'"):
            list_nodes(core)
        assert init_cluster(core) == f"Initialised a new cluster in ZooKeeper at {zk_server.hosts}{chroot}."
        assert cluster_tree(core) == ROOT_TREE
        register_node(core, "hv1", FACTS)
        assert [n["name"] for n in list_nodes(core)] == ["hv1"]
    assert zk_admin.exists(chroot + "/nodes/hv1")
    assert zk_admin.children(top) == ["clusters"]  # nothing else created beside the chroot


def test_init_on_emptied_store_creates_root_tree(core: Cluster) -> None:
    for root in schema.ROOTS:
        core.store.delete_tree(root)
    assert cluster_tree(core) == {}
    assert init_cluster(core).startswith("Initialised a new cluster in ")
    assert cluster_tree(core) == ROOT_TREE
    assert value(core, schema.PRIMARY_NODE) == "none"


def test_init_on_an_empty_cluster_changes_nothing(core: Cluster) -> None:
    """A fresh cluster (the embedded store is born initialised) is fine as it is, without --yes."""
    before = snapshot(core)
    assert init_cluster(core) == f"The cluster in {core.store.describe()} is already initialised and empty; nothing changed."
    assert snapshot(core) == before


@pytest.mark.parametrize("key", ["/nodes/hv9", "/domains/0b0e5b86-0000-4000-8000-000000000009", "/networks/100",
                                 "/ceph/osds/0", "/ceph/pools/vms", "/ceph/volumes/vms", "/ceph/snapshots/vms"])
def test_init_refuses_a_cluster_holding_any_object(core: Cluster, key: str) -> None:
    core.store.commit([Create(key, "x")])
    before = snapshot(core)
    with pytest.raises(InvalidState, match=r"^A cluster already exists in "):
        init_cluster(core)
    assert snapshot(core) == before


@pytest.fixture
def populated(coordinators: Cluster) -> Cluster:
    core = coordinators
    set_coordinator_state(core, "hv1", "primary")
    core.store.commit([Create("/domains/0b0e5b86-0000-4000-8000-000000000001", "vm1"),
                       Create("/domains/0b0e5b86-0000-4000-8000-000000000001/state", "start"),
                       Create("/networks/1001", "net"), Create("/ceph/pools/vms", "")])
    return core


def test_init_existing_cluster_refused_without_yes(populated: Cluster) -> None:
    core = populated
    before = snapshot(core)
    with pytest.raises(InvalidState, match=r"^A cluster already exists in .*; pass --yes to replace it"):
        init_cluster(core)
    with pytest.raises(InvalidState):
        init_cluster(core, yes=False)
    assert snapshot(core) == before


def test_init_existing_cluster_with_yes_replaces_everything(populated: Cluster) -> None:
    core = populated
    message = init_cluster(core, yes=True)
    assert message.startswith("Replaced the cluster in ")
    assert cluster_tree(core) == ROOT_TREE
    assert value(core, schema.PRIMARY_NODE) == "none"
    assert list_nodes(core) == []
    with pytest.raises(NotFound):
        get_node(core, "hv1")


def test_init_with_yes_when_some_roots_are_missing(populated: Cluster) -> None:
    """The original stopped deleting at the first missing root and then failed silently (its C7)."""
    core = populated
    core.store.delete_tree(schema.NETWORKS)
    core.store.delete_tree(schema.PRIMARY_NODE)
    init_cluster(core, yes=True)
    assert cluster_tree(core) == ROOT_TREE
