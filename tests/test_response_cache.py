"""The response cache of `pvc serve` (pvc.server.routes) on both engines: a kept answer is never
older than the read view (after a write through this server, through another store session, or
by an in-process writer such as the node agent), keepalives do not invalidate the VM list,
errors and authentication never go through it, and its memory stays within its bound."""

from __future__ import annotations

import random
import threading
import uuid as uuidlib
from typing import Any, Iterator

import pytest

from pvc.lib import schema
from pvc.lib.config import Settings, Token
from pvc.lib.core import Cluster
from pvc.lib.ops.vm import define_vm, list_vms
from pvc.lib.store import Delete, Set
from pvc.lib.store.view import ViewStore
from pvc.server.app import create_app
from pvc.server.errors import dumps
from pvc.server.routes import ResponseCache
from tests.agent_fixtures import until
from tests.vm_fixtures import vm_xml
from tests.wsgi import Client

API = "/api/v1"
TOKEN = "cache-test-token-0123456789"


class Served:
    """The API as `pvc serve` builds it: a read view over the test's store, the app on it."""

    def __init__(self, core: Cluster, cache_bytes: int | None = None, settings: Settings | None = None):
        self.view = ViewStore(core.store, owns=False)
        assert self.view.wait_ready(30), "the read view was not built"
        kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
        self.app = create_app(Cluster(settings or core.settings, self.view), **kwargs)
        self.client = Client(self.app)

    @property
    def cache(self) -> ResponseCache:
        cache = self.app.config["pvc.responses"].cache
        assert cache is not None, "no response cache (no GET yet?)"
        return cache

    def get(self, path: str, status: int = 200, **kw: Any) -> Any:
        res = self.client.request("GET", API + path, **kw)
        assert res.status == status, (path, res.status, res.body[:300])
        return res

    def close(self) -> None:
        self.view.close()


@pytest.fixture
def served(nodes: Cluster) -> Iterator[Served]:
    s = Served(nodes)
    yield s
    s.close()


def define(core: Cluster, name: str, node: str = "hv1") -> str:
    uuid = str(uuidlib.uuid4())
    define_vm(core, vm_xml(name, uuid), node=node)
    return uuid


def direct_list(core: Cluster) -> bytes:
    return dumps(list_vms(core)).encode()


def test_second_answer_is_kept_and_equal(served: Served, nodes: Cluster) -> None:
    for i in range(5):
        define(nodes, f"vm{i}")
    first = served.get("/vm").body
    hits = served.cache.hits
    second = served.get("/vm").body
    assert served.cache.hits == hits + 1
    assert first == second == direct_list(nodes)


def test_own_write_is_read_at_once(served: Served, nodes: Cluster) -> None:
    define(nodes, "web1")
    assert served.get("/vm/web1/state").json()["state"] == "stop"
    assert [v["state"] for v in served.get("/vm").json()] == ["stop"]
    for state in ("start", "stop", "start"):
        res = served.client.request("POST", API + "/vm/web1/state", data={"state": state})
        assert res.status == 200, res.body
        assert served.get("/vm/web1/state").json()["state"] == state
        assert [v["state"] for v in served.get("/vm").json()] == [state]
        assert served.get("/vm").body == direct_list(nodes)


def test_write_by_another_session_is_followed(served: Served, nodes: Cluster, settings: Settings) -> None:
    define(nodes, "web1")
    assert served.get("/vm/web1/state").json()["state"] == "stop"
    with Cluster(settings) as other:
        uuid = other.store.children(schema.DOMAINS)[0]
        other.store.commit([Set(schema.domain_key(uuid, "state"), "start")])
    until(lambda: served.get("/vm/web1/state").json()["state"] == "start", 5, "the other session's write seen")
    # once seen, never the old answer again, from either route
    for _ in range(20):
        assert served.get("/vm/web1/state").json()["state"] == "start"
        assert served.get("/vm").json()[0]["state"] == "start"


def test_in_process_writer_is_seen_on_the_next_request(served: Served, nodes: Cluster) -> None:
    """A write through the store the view wraps (the node agent of `pvc serve` writes so)."""
    uuid = define(nodes, "web1")
    key = schema.domain_key(uuid, "failedreason")
    for i in range(10):
        served.get("/vm")
        nodes.store.commit([Set(key, f"reason {i}")])
        assert served.get("/vm").json()[0]["failed_reason"] == f"reason {i}"
        assert served.get("/vm/web1").json()[0]["failed_reason"] == f"reason {i}"


def test_keepalives_do_not_invalidate_the_vm_list(served: Served, nodes: Cluster) -> None:
    for i in range(3):
        define(nodes, f"vm{i}")
    body = served.get("/vm").body
    misses = served.cache.misses
    for i in range(5):
        nodes.store.commit([Set(schema.node_key("hv1", "keepalive"), str(1700000000 + i)),
                            Set(schema.node_key("hv1", "cpuload"), f"{i}.5")])
        assert served.get("/node/hv1").json()[0]["load"] == i + 0.5  # /nodes answers move...
        assert served.get("/vm").body == body  # ...and the VM list is still the kept one
    assert served.cache.misses == misses + 5  # only the five /node/hv1 answers were computed


def test_a_vm_change_leaves_node_answers_kept(served: Served, nodes: Cluster) -> None:
    uuid = define(nodes, "web1")
    served.get("/node")
    hits = served.cache.hits
    nodes.store.commit([Set(schema.domain_key(uuid, "failedreason"), "boom")])
    served.get("/node")
    assert served.cache.hits == hits + 1
    assert served.get("/vm").json()[0]["failed_reason"] == "boom"


def test_errors_are_never_kept(served: Served, nodes: Cluster) -> None:
    served.get("/vm/ghost", 404)
    served.get("/vm", 400, query={"limit": "(("})
    served.get("/vm", 400, query={"bogus": "1"})
    assert len(served.cache) == 0
    define(nodes, "ghost")
    assert served.get("/vm/ghost").json()[0]["name"] == "ghost"  # not the 404 from before
    nodes.store.commit([Delete(p) for p in reversed(nodes.store.subtree(schema.domain(nodes.store.children(schema.DOMAINS)[0])))])
    served.get("/vm/ghost", 404)  # not the 200 from before


def test_writes_never_go_through_it(served: Served, nodes: Cluster) -> None:
    define(nodes, "web1")
    served.get("/vm/web1/state")
    kept = len(served.cache)
    for _ in range(2):  # the same write twice: the second is computed again, not a kept answer
        res = served.client.request("POST", API + "/vm/web1/state", data={"state": "start"})
        assert res.status == 200
    assert "already" in res.json()["message"]
    assert len(served.cache) == kept


def test_authentication_is_checked_on_every_hit(nodes: Cluster) -> None:
    settings = nodes.settings.replace(auth_enabled=True, tokens=(Token(TOKEN, "admin"),), secret_key="s" * 40)
    s = Served(nodes, settings=settings)
    try:
        ok = {"X-Api-Key": TOKEN}
        s.get("/node", headers=ok)
        s.get("/node", headers=ok)
        assert s.cache.hits == 1
        assert s.get("/node", 401).json()["message"] == "Authentication required"
        assert s.get("/node", 401, headers={"X-Api-Key": "wrong"}).json()["status"] == 401
        assert s.cache.hits == 1
    finally:
        s.close()


def test_memory_bound(nodes: Cluster) -> None:
    for i in range(6):
        define(nodes, f"vm{i}")
    plain = Served(nodes, cache_bytes=0)
    one = len(plain.get("/vm/vm0").body)
    plain.close()
    limit = 3 * (one + 200) + 100
    s = Served(nodes, cache_bytes=limit)
    try:
        for i in range(6):
            s.get(f"/vm/vm{i}")
            assert s.cache.size <= limit
        assert len(s.cache) == 3
        s.get("/vm/vm5")
        assert s.cache.hits == 1  # the most recent ones stayed
        s.get("/vm")  # larger than the whole bound: answered, not kept
        assert s.cache.size <= limit and len(s.cache) == 3
    finally:
        s.close()


def test_unmirrored_reads_are_not_kept(served: Served, nodes: Cluster) -> None:
    cache = ResponseCache(served.view)

    def compute() -> tuple[bytes, str]:
        served.view.exists(schema.COMMANDS)  # a subtree the view does not follow
        served.view.children(schema.NODES)
        return b"[]", "application/json"

    cache.answer("k", compute)
    assert len(cache) == 0
    cache.answer("n", lambda: (str(served.view.children(schema.NODES)).encode(), "text/plain"))
    assert len(cache) == 1


def test_no_view_no_cache(nodes: Cluster) -> None:
    app = create_app(nodes)
    Client(app).request("GET", API + "/node")
    assert app.config["pvc.responses"].cache is None


def test_vm_list_equals_the_store_through_changes(served: Served, nodes: Cluster, settings: Settings) -> None:
    """The VM list built from kept fragments is byte for byte the operation's answer, through
    defines, state changes, renames, XML changes and undefines by this server, by the store
    beneath and by another session."""
    rng = random.Random(7)
    uuids = [define(nodes, f"vm{i:02d}", node=rng.choice(["hv1", "hv2", "hv3"])) for i in range(12)]
    with Cluster(settings) as other:
        for step in range(40):
            writer = rng.choice([nodes, other])
            uuid = rng.choice(uuids)
            kind = rng.choice(["state", "failed", "rename", "xml", "undefine", "define"])
            if kind == "state":
                writer.store.commit([Set(schema.domain_key(uuid, "state"), rng.choice(["start", "stop"]))])
            elif kind == "failed":
                writer.store.commit([Set(schema.domain_key(uuid, "failedreason"), f"r{step}")])
            elif kind == "rename":
                writer.store.commit([Set(schema.domain(uuid), f"zz{step:02d}")])
            elif kind == "xml":
                writer.store.commit([Set(schema.domain_key(uuid, "xml"), vm_xml(f"x{step}", uuid, memory=str(512 + step)))])
            elif kind == "undefine" and len(uuids) > 2:
                writer.store.commit([Delete(p) for p in reversed(writer.store.subtree(schema.domain(uuid)))])
                uuids.remove(uuid)
            elif kind == "define":
                uuids.append(define(writer, f"new{step:02d}"))
            expected = direct_list(nodes)
            until(lambda: served.get("/vm").body == expected, 5, f"step {step} ({kind}) listed")
            assert served.get("/vm").body == expected


def test_concurrent_readers_end_on_the_store(served: Served, nodes: Cluster) -> None:
    uuids = [define(nodes, f"vm{i}") for i in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            client = Client(served.app)
            while not stop.is_set():
                res = client.request("GET", API + "/vm")
                assert res.status == 200
        except BaseException as e:  # reported below
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        for i in range(30):
            res = served.client.request("POST", API + f"/vm/vm{i % 4}/state", data={"state": "start" if i % 8 < 4 else "stop"})
            assert res.status == 200
            assert served.get(f"/vm/vm{i % 4}/state").json()["state"] == ("start" if i % 8 < 4 else "stop")
    finally:
        stop.set()
        for t in readers:
            t.join(10)
    assert not errors, errors
    assert len(uuids) == 4
    assert served.get("/vm").body == direct_list(nodes)
