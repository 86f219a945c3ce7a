"""The read view of `pvc serve` (pvc.lib.store.view) on both engines: the same answers as the
store, a client reads its own write at once, other processes' writes are followed, a ZooKeeper
outage is 503 and the view is rebuilt afterwards, never left stale."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st

from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from pvc.lib.ops.acl import add_acl
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.ops.lease import add_lease
from pvc.lib.ops.network import add_network
from pvc.lib.ops.vm import define_vm
from pvc.lib.registry import load_all
from pvc.lib.store import Create, Delete, Set, Store
from pvc.lib.store.view import ViewStore
from pvc.lib.store.zookeeper import ZooKeeperStore
from pvc.server.app import create_app
from pvc.server.routes import route_table
from tests.agent_fixtures import until
from tests.vm_fixtures import vm_xml
from tests.wsgi import Client
from tests.zkserver import ZooKeeperServer

API = "/api/v1"


def new_view(store: Store) -> ViewStore:
    view = ViewStore(store, owns=False)
    assert view.wait_ready(30), "the read view was not built"
    return view


@pytest.fixture
def view(core: Cluster) -> Iterator[ViewStore]:
    v = new_view(core.store)
    yield v
    v.close()


@pytest.fixture
def other(settings: Settings) -> Iterator[Cluster]:
    """Another store session on the same cluster (another process, as far as the store knows)."""
    with Cluster(settings) as cluster:
        cluster.store.exists(schema.NODES)
        yield cluster


def snapshot(store: Store, roots: tuple[str, ...] = schema.ROOTS) -> dict[str, Any]:
    """Everything a read can see of ``roots``: each key's entry and children, and each subtree."""
    out: dict[str, Any] = {}
    for root in roots:
        if not store.exists(root):
            out[root] = None
            continue
        keys = store.subtree(root)
        out[root] = keys
        entries = store.get_many(keys)
        for key in keys:
            out[key] = (entries[key], store.children(key))
    return out


def fill(core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1", coordinator=True, memalloc=1000)
    add_node("hv2", memalloc=2000)
    add_node("hv3", domain_state="flushed")
    add_network(core, 100, "lan", "managed", "lan.local", "10.1.0.0/24", "10.1.0.1", dhcp4=True,
                dhcp4_start="10.1.0.100", dhcp4_end="10.1.0.199")
    add_network(core, 200, "wan", "bridged")
    add_lease(core, "lan", "52:54:00:00:00:01", "10.1.0.10", "host1")
    add_lease(core, "lan", "52:54:00:00:00:02", "10.1.0.11")
    add_acl(core, "lan", "ssh", "in", "tcp dport 22 accept")
    add_acl(core, "lan", "web", "in", "tcp dport 80 accept", 0)
    add_acl(core, "lan", "out-all", "out", "accept")
    for i in range(4):
        define_vm(core, vm_xml(f"web{i}", str(uuidlib.UUID(int=i + 1)), bridges=("vmbr100",)), node=f"hv{1 + i % 2}")


# --- same answers ---------------------------------------------------------------------------------


def test_view_answers_as_the_store_without_round_trips(core: Cluster, add_node: Callable[..., str],
                                                       view: ViewStore) -> None:
    fill(core, add_node)
    store = core.store
    assert snapshot(view) == snapshot(store)
    keys = [k for root in view.roots for k in store.subtree(root)] + ["/nodes/nobody", "/domains/x/state"]
    before = store.round_trips
    assert view.get_many(keys) == store.get_many(keys)
    assert view.children(schema.NODES) == ["hv1", "hv2", "hv3"]
    assert view.exists(schema.node_key("hv1", "daemonstate")) and not view.exists("/nodes/nobody")
    assert store.round_trips == before + 1  # only the direct read above went to the store
    # Errors word for word, invalid paths refused alike.
    for call in (lambda s: s.children("/nodes/nobody"), lambda s: s.subtree("/domains/missing"),
                 lambda s: s.get("/networks/9")):
        with pytest.raises(NotFound) as direct:
            call(store)
        with pytest.raises(NotFound) as viewed:
            call(view)
        assert viewed.value.message == direct.value.message
    for bad in ("/nodes/", "nodes", "/nodes//x", "/nodes/.."):
        with pytest.raises(InvalidArgument):
            store.get_many([bad])
        with pytest.raises(InvalidArgument):
            view.get_many([bad])
    # Keys outside the mirrored subtrees are read from the store.
    view.commit([Create("/elsewhere", "e")])
    assert view.get("/elsewhere").value == "e" and view.children("/elsewhere") == []


def direct_and_viewed(core: Cluster) -> tuple[Client, Client, ViewStore]:
    view = new_view(core.store)
    return Client(create_app(core)), Client(create_app(Cluster(core.settings, view))), view


def get_paths(core: Cluster) -> list[str]:
    """Every GET of the API with every object of the cluster (and a missing one) in its path."""
    values: dict[str, list[str]] = {
        "node": ["hv1", "hv2", "hv3", "hv-missing"],
        "vm": ["web0", "web3", str(uuidlib.UUID(int=2)), "missing", str(uuidlib.UUID(int=99))],
        "network": ["100", "lan", "wan", "300"],
        "lease": ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:09"],
        "acl": ["ssh", "web", "out-all", "none"],
        "osd": ["0"], "pool": ["vms"], "volume": ["disk0"], "snapshot": ["snap0"],
    }
    paths = [API]
    for method, template, _name in route_table(load_all()):
        if method != "GET":
            continue
        expanded = [template]
        for param, options in values.items():
            if f"<{param}>" in template:
                expanded = [p.replace(f"<{param}>", o) for p in expanded for o in options]
        assert all("<" not in p for p in expanded), expanded
        paths += expanded
    lists = [f"{API}/node?limit=hv", f"{API}/vm?limit=web&node=hv1", f"{API}/vm?state=stop",
             f"{API}/vm?limit=((", f"{API}/network?limit=la", f"{API}/network/lan/lease?static=true",
             f"{API}/network/lan/acl?direction=in", f"{API}/vm?unknown=1"]
    return paths + lists


def test_every_get_answers_as_without_the_view(core: Cluster, add_node: Callable[..., str]) -> None:
    fill(core, add_node)
    direct, viewed, view = direct_and_viewed(core)
    try:
        checked = 0
        for path in get_paths(core):
            a, b = direct.request("GET", path), viewed.request("GET", path)
            assert (b.status, b.headers.get("Content-Type"), b.body) == (a.status, a.headers.get("Content-Type"),
                                                                          a.body), path
            checked += a.status == 200
        assert checked > 40  # most of them found something
        # And again after changes by another session, once the view has followed them.
        with Cluster(core.settings) as other:
            define_vm(other, vm_xml("late", str(uuidlib.UUID(int=77))), node="hv2")
            other.store.delete_tree(schema.network(200))
        until(lambda: view.exists(schema.domain(str(uuidlib.UUID(int=77))))
              and not view.exists(schema.network(200)), 10, "the view did not follow")
        for path in get_paths(core) + [f"{API}/vm/late"]:
            a, b = direct.request("GET", path), viewed.request("GET", path)
            assert (b.status, b.body) == (a.status, a.body), path
    finally:
        view.close()


# --- consistency ------------------------------------------------------------------------------------


def test_a_writer_reads_its_write_at_once(core: Cluster, view: ViewStore) -> None:
    view.commit([Create("/nodes/a", "1"), Create("/nodes/a/b", "2")])
    assert view.get("/nodes/a/b") == core.store.get("/nodes/a/b")
    assert view.children("/nodes") == ["a"]
    view.write({"/nodes/a": "3", "/nodes/c": "4"})
    assert (view.get("/nodes/a").value, view.get("/nodes/a").version) == ("3", 1)
    view.delete_tree("/nodes/a")
    assert not view.exists("/nodes/a/b") and view.children("/nodes") == ["c"]
    # Through the store object beneath (the node agent of `pvc serve`, the tests' own writes).
    core.store.commit([Set("/nodes/c", "5")])
    assert view.get("/nodes/c").value == "5"
    core.store.delete_tree("/nodes/c")
    assert view.children("/nodes") == []
    assert view.ready


def test_top_level_keys_that_go_and_come_back(core: Cluster, view: ViewStore, other: Cluster) -> None:
    """`pvc init --yes` replaces whole top-level subtrees (found through "/" on the embedded store)."""
    view.commit([Create("/domains/d", "x")])
    for store in (core.store, other.store):
        store.delete_tree(schema.DOMAINS)
        until(lambda: not view.exists(schema.DOMAINS), core.settings.store_timeout, "the removal not followed")
        with pytest.raises(NotFound):
            view.children(schema.DOMAINS)
        store.commit([Create(schema.DOMAINS, ""), Create("/domains/e", "y")])
        until(lambda: view.exists("/domains/e"), core.settings.store_timeout, "the return not followed")
        assert view.children(schema.DOMAINS) == ["e"]
        assert snapshot(view) == snapshot(core.store)
        store.delete_tree("/domains/e")


def test_a_refused_condition_catches_up_first(core: Cluster, view: ViewStore, other: Cluster) -> None:
    view.commit([Create("/nodes/k", "0")])
    for i in range(20):  # each time right after the other session's write: the view may lag
        seen = view.get("/nodes/k")
        other.store.commit([Set("/nodes/k", f"other{i}")])
        with pytest.raises(Conflict):
            view.commit([Set("/nodes/k", "mine", seen.version)])
        assert view.get("/nodes/k") == other.store.get("/nodes/k")  # at once, no waiting
    other.store.commit([Create("/nodes/new", "")])
    with pytest.raises(AlreadyExists):
        view.commit([Create("/nodes/new", "")])
    assert view.exists("/nodes/new")


def test_another_session_is_followed(core: Cluster, view: ViewStore, other: Cluster) -> None:
    delays = []
    for i in range(20):
        other.store.commit([Create(f"/nodes/n{i}", str(i))] + ([Delete(f"/nodes/n{i - 1}")] if i else []))
        written = time.monotonic()
        until(lambda: view.children(schema.NODES) == [f"n{i}"], core.settings.store_timeout, "not followed")
        delays.append((time.monotonic() - written) * 1000)
    delays.sort()
    print(f"{core.settings.engine}: another session's write seen after {delays[len(delays) // 2]:.1f} ms "
          f"(median), {delays[-1]:.1f} ms (max)")
    assert snapshot(view) == snapshot(core.store)


def test_a_watch_through_the_view_sees_the_change_applied(core: Cluster, view: ViewStore, other: Cluster) -> None:
    view.commit([Create("/nodes/w", "0")])
    for i in range(1, 11):
        seen: list[str | None] = []
        fired = threading.Event()

        def callback(path: str, i: int = i) -> None:
            seen.append(view.get_many([path])[path].value)  # read in the callback: already applied
            fired.set()

        handle = view.watch(["/nodes/w"], callback)
        try:
            other.store.commit([Set("/nodes/w", str(i))])
            assert fired.wait(core.settings.store_timeout)
        finally:
            handle.cancel()
        assert seen[0] == str(i)
    assert view.wait_for(["/nodes/w"], lambda: view.get("/nodes/w").value == "10", 1.0)
    with pytest.raises(NotFound):
        view.watch(["/nodes/missing"], lambda p: None, children=True)


def test_a_cli_process_is_followed(core: Cluster, view: ViewStore, tmp_path: Any) -> None:
    from tests.test_serve import write_config

    settings = core.settings
    config = write_config(tmp_path, coordinators=settings.coordinators, chroot=settings.zk_chroot)
    assert settings.engine == "zookeeper" or settings.store_path == str(tmp_path / "pvc.sqlite")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVC_")}
    pvc = os.path.join(os.path.dirname(sys.executable), "pvc")
    result = subprocess.run([pvc, "--config", config, "network", "add", "300", "-d", "from-cli", "-p", "bridged"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    finished = time.monotonic()
    until(lambda: view.exists(schema.network(300)), settings.store_timeout, "the CLI's network not seen")
    print(f"{settings.engine}: the CLI's write seen {(time.monotonic() - finished) * 1000:.1f} ms after it exited")
    assert view.get(schema.network(300)) == core.store.get(schema.network(300))


# --- ZooKeeper: outages and reconnections ------------------------------------------------------------


@pytest.mark.zk
def test_zookeeper_outage_is_503_and_the_view_is_rebuilt(tmp_path: Any) -> None:
    with ZooKeeperServer(str(tmp_path / "zk")) as server:
        admin = ZooKeeperStore([server.hosts])
        admin.commit([Create("/outage")])
        admin.close()
        settings = Settings(coordinators=(server.hosts,), zk_chroot="/outage", store_timeout=2.0)
        with Cluster(settings) as core:
            init_cluster(core)
            core.store.write({schema.node("hv1"): "coordinator", schema.node_key("hv1", "daemonstate"): "run"})
            view = new_view(core.store)
            client = Client(create_app(Cluster(settings, view)))
            try:
                assert [n["name"] for n in client.request("GET", f"{API}/node").json()] == ["hv1"]
                builds = view.builds
                server.stop()
                r = until(lambda: (lambda a: a if a.status == 503 else None)(client.request("GET", f"{API}/node")),
                          10, "no 503 while ZooKeeper is down")
                assert r.json()["error"] == "unavailable" and not view.ready
                server.start()
                r = until(lambda: (lambda a: a if a.status == 200 else None)(client.request("GET", f"{API}/node")),
                          30, "no 200 after ZooKeeper came back")
                assert [n["name"] for n in r.json()] == ["hv1"]
                until(lambda: view.ready, 30, "the view was not rebuilt")
                assert view.builds > builds
                # Its watches are back: another session's change is followed again.
                with Cluster(settings) as other:
                    other.store.write({schema.node_key("hv1", "daemonstate"): "stop"})
                until(lambda: client.request("GET", f"{API}/node/hv1").json()[0]["daemon_state"] == "stop", 10,
                      "the change after the outage was not followed")
                assert view.ready and snapshot(view) == snapshot(core.store)
            finally:
                view.close()


@pytest.mark.zk
def test_a_dropped_connection_is_never_left_stale(zk_server: ZooKeeperServer, request: pytest.FixtureRequest,
                                                  tmp_path: Any) -> None:
    """The view's connection drops while another session writes: a persistent watch does not
    report what changed while it was away, so the view must be read again."""
    from tests.conftest import engine_settings

    settings = engine_settings("zookeeper", tmp_path, request)
    with Cluster(settings) as core, Cluster(settings) as other:
        init_cluster(core)
        view = new_view(core.store)
        try:
            for i in range(5):
                builds = view.builds
                store: Any = core.store
                store._abandon(store._live_socket)  # as when its server went silent
                other.store.write({schema.node(f"hv{i}"): str(i)})
                until(lambda: view.builds > builds and view.ready, 30, "the view was not rebuilt")
                until(lambda: view.exists(schema.node(f"hv{i}")), 5, "the write made meanwhile is missing")
                assert snapshot(view) == snapshot(other.store)
        finally:
            view.close()


# --- property: two writers, reads from the view ---------------------------------------------------

KEYS = ["/nodes/p", "/nodes/p/a", "/nodes/p/b", "/nodes/q", "/nodes/q/a"]
STEP = st.tuples(st.sampled_from(["view", "other"]), st.sampled_from(["create", "set", "delete", "read"]),
                 st.sampled_from(KEYS), st.integers(0, 3))


def test_interleaved_writers_end_in_the_store_answers(core: Cluster, other: Cluster) -> None:
    view = new_view(core.store)
    try:
        run = _property_run(core, other, view)
        run()
    finally:
        view.close()


def _property_run(core: Cluster, other: Cluster, view: ViewStore) -> Callable[[], None]:
    store = core.store

    @hsettings(deadline=None, database=None, derandomize=True, max_examples=60,
               suppress_health_check=[HealthCheck.too_slow])
    @given(steps=st.lists(STEP, min_size=1, max_size=12))
    def run(steps: list[tuple[str, str, str, int]]) -> None:
        for actor, action, key, value in steps:
            writer = view if actor == "view" else other.store
            try:
                if action == "create":
                    writer.commit([Create(key, str(value))])
                elif action == "set":
                    writer.commit([Set(key, str(value))])
                elif action == "delete":
                    writer.commit([Delete(key)])
            except (AlreadyExists, NotFound, Conflict):
                pass
            if action == "read" or actor == "view":
                # Read-your-write: what this session wrote is there at once; (another session's
                # write may take a moment).
                if actor == "view" and action != "read":
                    assert view.get_many([key]) == store.get_many([key])
                view.get_many(KEYS)
                view.children(schema.NODES)
        until(lambda: snapshot(view, (schema.NODES,)) == snapshot(store, (schema.NODES,)), 10,
              "the view did not end as the store")
        for key in ("/nodes/p", "/nodes/q"):
            if store.exists(key):
                store.delete_tree(key)

    return run
