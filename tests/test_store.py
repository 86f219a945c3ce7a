"""The store interface (pvc.lib.store), on both engines: the embedded SQLite file and a real
ZooKeeper. Engine-specific behaviour (several OS processes on one SQLite file, ZooKeeper outages on
a dedicated server) is tested at the end."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, Callable, Iterator

import pytest

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, PvcError, Timeout, Unavailable
from pvc.lib.store import Check, Create, Delete, Entry, Set, Store, open_store
from pvc.lib.store.embedded import EmbeddedStore
from pvc.lib.store.zookeeper import ZooKeeperStore
from tests.zkserver import ZooKeeperServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers -------------------------------------------------------------------------------------


def wait_until(fn: Callable[[], Any], timeout: float = 5.0, what: str = "the condition") -> Any:
    """Poll ``fn`` until it returns something truthy; fail the test when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.01)  # polling interval, bounded by the deadline


class Recorder:
    """A watch callback that records the paths it was called with."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, path: str) -> None:
        with self._cond:
            self.calls.append(path)
            self._cond.notify_all()

    def wait(self, path: str, count: int = 1, timeout: float = 5.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.calls.count(path) >= count, timeout)
        assert ok, f"no callback for {path} (x{count}) within {timeout} s; got {self.calls}"


def settle(store: Store) -> None:
    """Return once every watch callback due for the changes committed so far has run.

    Both engines report changes in commit order (ZooKeeper per session, the embedded watcher in
    one pass over the watches in registration order), so once a watch registered last has seen a
    change committed last, all earlier notifications have been delivered."""
    key = f"/sentinel-{uuid.uuid4().hex[:8]}"
    rec = Recorder()
    handle = store.watch([key], rec)
    try:
        store.commit([Create(key)])
        rec.wait(key)
    finally:
        handle.cancel()
    store.commit([Delete(key)])


def snapshot(store: Store) -> dict[str, Entry | None]:
    """Every key of the tree with its value and version."""
    return store.get_many(store.subtree("/"))


def make_tree(store: Store) -> None:
    store.commit(
        [
            Create("/t", "root"),
            Create("/t/a", "A"),
            Create("/t/b", "B"),
            Create("/t/b/x", "BX"),
            Create("/t/c", "C"),
        ]
    )


def race(n: int, fn: Callable[[int], Any]) -> list[str]:
    """Run ``fn(i)`` for i < n in n threads released at once; return 'ok' or the error's class name."""
    barrier = threading.Barrier(n)
    results: list[str] = ["not run"] * n

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            fn(i)
            results[i] = "ok"
        except PvcError as e:
            results[i] = type(e).__name__

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.fixture
def store(core: Cluster) -> Store:
    return core.store


@pytest.fixture
def other(settings: Settings) -> Iterator[Store]:
    """A second, independent store on the same data (another session / another connection)."""
    second = open_store(settings)
    yield second
    second.close()


@pytest.fixture
def tree(store: Store) -> Store:
    make_tree(store)
    return store


# --- reads ---------------------------------------------------------------------------------------


def test_get_and_get_many(tree: Store) -> None:
    assert tree.get("/t/a") == Entry("A", 0)
    with pytest.raises(NotFound, match="/t/nope"):
        tree.get("/t/nope")
    got = tree.get_many(["/t/a", "/t/nope", "/t/b/x", "/t/a", "/nowhere/deep"])
    assert got == {"/t/a": Entry("A", 0), "/t/nope": None, "/t/b/x": Entry("BX", 0), "/nowhere/deep": None}
    assert tree.get_many([]) == {}
    # Create's value defaults to the empty string.
    tree.commit([Create("/t/empty")])
    assert tree.get("/t/empty") == Entry("", 0)


def test_versions_start_at_zero_and_grow_by_one_per_write(tree: Store) -> None:
    for expected in range(1, 6):
        tree.commit([Set("/t/a", f"v{expected}")])
        assert tree.get("/t/a") == Entry(f"v{expected}", expected)
    tree.write({"/t/a": "by write"})
    assert tree.get("/t/a") == Entry("by write", 6)
    # Writing the same value is still a write.
    tree.commit([Set("/t/a", "by write")])
    assert tree.get("/t/a").version == 7
    # Writes elsewhere (a child, a sibling) do not touch the version.
    tree.commit([Create("/t/a/child"), Set("/t/b", "B2")])
    assert tree.get("/t/a").version == 7
    # A deleted and re-created key starts again at 0.
    tree.commit([Delete("/t/c"), Create("/t/c", "again")])
    assert tree.get("/t/c") == Entry("again", 0)


@pytest.mark.parametrize(
    "value",
    ["", "plain", "multi\nline\n", "ünïcødé 名前 😀 \u2028", "x" * 200_000, "  spaces  ", "\t{json: [1, 2]}"],
    ids=["empty", "plain", "lines", "unicode", "large", "spaces", "tabs"],
)
def test_values_round_trip_as_text(store: Store, value: str) -> None:
    store.commit([Create("/v", value)])
    assert store.get("/v") == Entry(value, 0)
    store.commit([Set("/v", value + "!")])
    assert store.get("/v") == Entry(value + "!", 1)


def test_children_sorted_and_not_found(tree: Store) -> None:
    tree.commit([Create("/t/B"), Create("/t/a-1"), Create("/t/a/deep"), Create("/t/0")])
    assert tree.children("/t") == ["0", "B", "a", "a-1", "b", "c"]
    assert tree.children("/t/a") == ["deep"]
    assert tree.children("/t/c") == []
    assert "t" in tree.children("/")
    with pytest.raises(NotFound, match="/t/nope"):
        tree.children("/t/nope")
    with pytest.raises(NotFound):
        tree.children("/nowhere/deep")


def test_exists(tree: Store) -> None:
    assert tree.exists("/")
    assert tree.exists("/t")
    assert tree.exists("/t/b/x")
    assert not tree.exists("/t/nope")
    assert not tree.exists("/nowhere/deep")
    tree.commit([Delete("/t/b/x")])
    assert not tree.exists("/t/b/x")


def test_subtree_lists_parents_before_children(tree: Store) -> None:
    # Names that sort differently than their paths do ('-' < '/' < 'b'), and a deeper level.
    tree.commit([Create("/t/b-c"), Create("/t/b-c/z"), Create("/t/b/x/y"), Create("/t/b/x/y/z")])
    # Siblings whose names start with "t" are not part of /t's subtree.
    tree.commit([Create("/t2"), Create("/t2/in"), Create("/t-x"), Create("/t-x/in")])
    keys = tree.subtree("/t")
    expected = {"/t", "/t/a", "/t/b", "/t/b/x", "/t/b/x/y", "/t/b/x/y/z", "/t/c", "/t/b-c", "/t/b-c/z"}
    assert len(keys) == len(set(keys))
    assert set(keys) == expected
    assert keys[0] == "/t"
    for i, key in enumerate(keys[1:], start=1):
        parent = key.rsplit("/", 1)[0]
        assert parent in keys[:i], f"{key} listed before its parent {parent}: {keys}"
    assert tree.subtree("/t/c") == ["/t/c"]
    assert set(tree.subtree("/t2")) == {"/t2", "/t2/in"}
    whole = tree.subtree("/")
    assert whole[0] == "/"
    assert expected | {"/t2", "/t2/in", "/t-x", "/t-x/in"} <= set(whole)
    with pytest.raises(NotFound, match="/t/nope"):
        tree.subtree("/t/nope")


# --- writes --------------------------------------------------------------------------------------


def test_create(tree: Store) -> None:
    tree.commit([Create("/t/new", "N")])
    assert tree.get("/t/new") == Entry("N", 0)
    with pytest.raises(AlreadyExists, match="/t/new"):
        tree.commit([Create("/t/new", "other")])
    assert tree.get("/t/new") == Entry("N", 0)
    with pytest.raises(NotFound, match="/t/missing/child"):
        tree.commit([Create("/t/missing/child", "x")])
    assert not tree.exists("/t/missing")
    assert not tree.exists("/t/missing/child")
    # A parent created earlier in the same transaction is there for its child.
    tree.commit([Create("/t/p"), Create("/t/p/q", "Q")])
    assert tree.get("/t/p/q") == Entry("Q", 0)


def test_set_with_and_without_version(tree: Store) -> None:
    tree.commit([Set("/t/a", "1")])
    assert tree.get("/t/a") == Entry("1", 1)
    tree.commit([Set("/t/a", "2", version=1)])
    assert tree.get("/t/a") == Entry("2", 2)
    with pytest.raises(Conflict, match="/t/a"):
        tree.commit([Set("/t/a", "stale", version=1)])
    with pytest.raises(Conflict):
        tree.commit([Set("/t/a", "future", version=3)])
    assert tree.get("/t/a") == Entry("2", 2)
    with pytest.raises(NotFound, match="/t/nope"):
        tree.commit([Set("/t/nope", "x")])
    with pytest.raises(NotFound):
        tree.commit([Set("/t/nope", "x", version=0)])
    assert not tree.exists("/t/nope")


def test_delete(tree: Store) -> None:
    with pytest.raises(Conflict, match="/t/b"):
        tree.commit([Delete("/t/b")])  # it has a child
    assert tree.get("/t/b") == Entry("B", 0)
    assert tree.exists("/t/b/x")
    with pytest.raises(Conflict, match="/t/a"):
        tree.commit([Delete("/t/a", version=1)])
    assert tree.exists("/t/a")
    tree.commit([Delete("/t/a", version=0)])
    assert not tree.exists("/t/a")
    with pytest.raises(NotFound, match="/t/a"):
        tree.commit([Delete("/t/a")])
    # Child first, then parent, in one transaction.
    tree.commit([Delete("/t/b/x"), Delete("/t/b")])
    assert tree.children("/t") == ["c"]
    assert tree.get_many(["/t/b", "/t/b/x"]) == {"/t/b": None, "/t/b/x": None}


def test_check(tree: Store) -> None:
    tree.commit([Set("/t/a", "A1")])
    before = snapshot(tree)
    tree.commit([Check("/t/a", 1)])
    assert snapshot(tree) == before  # a Check writes nothing
    with pytest.raises(Conflict, match="/t/a"):
        tree.commit([Check("/t/a", 0)])
    with pytest.raises(NotFound, match="/t/nope"):
        tree.commit([Check("/t/nope", 0)])
    # A Check guards a write to another key.
    tree.commit([Check("/t/a", 1), Set("/t/b", "guarded")])
    assert tree.get("/t/b") == Entry("guarded", 1)
    with pytest.raises(Conflict):
        tree.commit([Check("/t/a", 0), Set("/t/b", "not written")])
    assert tree.get("/t/b") == Entry("guarded", 1)


def test_ops_in_one_commit_see_the_earlier_ones(tree: Store) -> None:
    tree.commit(
        [
            Create("/t/p", "0"),
            Create("/t/p/q"),
            Set("/t/p", "1", version=0),
            Check("/t/p", 1),
            Set("/t/p", "2", version=1),
            Delete("/t/p/q"),
        ]
    )
    assert tree.get("/t/p") == Entry("2", 2)
    assert tree.children("/t/p") == []


FAILING_OPS = {
    "create-existing": (Create("/t/c", "again"), AlreadyExists),
    "create-orphan": (Create("/t/none/child"), NotFound),
    "set-stale": (Set("/t/c", "stale", version=7), Conflict),
    "set-missing": (Set("/t/none", "x"), NotFound),
    "delete-with-children": (Delete("/t"), Conflict),
    "delete-stale": (Delete("/t/c", version=3), Conflict),
    "delete-missing": (Delete("/t/none"), NotFound),
    "check-stale": (Check("/t/c", 2), Conflict),
    "check-missing": (Check("/t/none", 0), NotFound),
}


@pytest.mark.parametrize("failing", sorted(FAILING_OPS))
def test_failing_op_in_the_middle_writes_nothing(tree: Store, failing: str) -> None:
    op, error = FAILING_OPS[failing]
    before = snapshot(tree)
    ops = [
        Create("/t/new1", "n1"),
        Create("/t/new1/deep", "d"),
        Set("/t/a", "changed"),
        Set("/t/a", "changed again", version=1),
        Delete("/t/b/x"),
        op,
        Create("/t/new2", "n2"),
        Set("/t/c", "changed"),
    ]
    with pytest.raises(error) as info:
        tree.commit(ops)
    assert op.path in str(info.value)
    after = snapshot(tree)
    assert after == before
    # Every key the transaction touched, one by one.
    assert tree.get_many(["/t/new1", "/t/new1/deep", "/t/new2"]) == {
        "/t/new1": None,
        "/t/new1/deep": None,
        "/t/new2": None,
    }
    assert tree.get("/t/a") == Entry("A", 0)
    assert tree.get("/t/b/x") == Entry("BX", 0)
    assert tree.get("/t/c") == Entry("C", 0)
    # The same transaction without the failing op goes through.
    tree.commit([o for o in ops if o is not op])
    assert tree.get("/t/a") == Entry("changed again", 2)
    assert tree.get("/t/new1/deep") == Entry("d", 0)
    assert not tree.exists("/t/b/x")


def test_error_messages_name_the_key(tree: Store) -> None:
    cases: list[tuple[Callable[[], Any], type[PvcError], str]] = [
        (lambda: tree.get("/t/zz"), NotFound, "/t/zz"),
        (lambda: tree.children("/t/zz"), NotFound, "/t/zz"),
        (lambda: tree.subtree("/t/zz"), NotFound, "/t/zz"),
        (lambda: tree.delete_tree("/t/zz"), NotFound, "/t/zz"),
        (lambda: tree.commit([Create("/t/a")]), AlreadyExists, "/t/a"),
        (lambda: tree.commit([Create("/t/zz/y")]), NotFound, "/t/zz/y"),
        (lambda: tree.commit([Set("/t/a", "", version=9)]), Conflict, "/t/a"),
        (lambda: tree.commit([Delete("/t/b")]), Conflict, "/t/b"),
    ]
    for call, error, path in cases:
        with pytest.raises(error) as info:
            call()
        assert path in str(info.value), str(info.value)


def test_write_upserts(tree: Store) -> None:
    tree.write({"/t/a": "A1", "/t/new": "N", "/t/new/kid": "K", "/t/b/x": "BX1"})
    assert tree.get_many(["/t/a", "/t/new", "/t/new/kid", "/t/b/x"]) == {
        "/t/a": Entry("A1", 1),
        "/t/new": Entry("N", 0),
        "/t/new/kid": Entry("K", 0),
        "/t/b/x": Entry("BX1", 1),
    }
    tree.write({"/t/new": "N1"})
    assert tree.get("/t/new") == Entry("N1", 1)
    tree.write({})  # nothing to do is fine
    before = snapshot(tree)
    with pytest.raises(NotFound):
        tree.write({"/t/a": "A2", "/t/orphan/kid": "x"})  # the parent is missing: nothing written
    assert snapshot(tree) == before


def test_concurrent_write_upserts_all_land(store: Store, other: Store) -> None:
    # Each writer's failed attempt means another one succeeded in between, so with five writers
    # the five attempts write() allows are always enough: every call lands, none is lost.
    results = race(5, lambda i: (store if i % 2 else other).write({"/w": f"w{i}"}))
    assert results == ["ok"] * 5
    entry = store.get("/w")
    assert entry.version == 4  # one create and four sets
    assert entry.value in {f"w{i}" for i in range(5)}


def test_delete_tree(tree: Store) -> None:
    tree.commit([Create("/t/b/x/y"), Create("/t/b/x/y/z"), Create("/t2"), Create("/t-x"), Create("/t-x/in")])
    removed = tree.subtree("/t")
    tree.delete_tree("/t")
    assert not tree.exists("/t")
    assert set(tree.get_many(removed).values()) == {None}
    assert tree.get_many(["/t2", "/t-x", "/t-x/in"]) == {
        "/t2": Entry("", 0),
        "/t-x": Entry("", 0),
        "/t-x/in": Entry("", 0),
    }
    assert "t" not in tree.children("/")
    with pytest.raises(NotFound):
        tree.delete_tree("/t")
    tree.delete_tree("/t2")  # a single key
    assert not tree.exists("/t2")
    tree.commit([Create("/t", "back")])  # the name can be used again
    assert tree.get("/t") == Entry("back", 0)


def test_describe(store: Store, settings: Settings) -> None:
    text = store.describe()
    if settings.engine == "embedded":
        assert store.engine == "embedded"
        assert settings.store_path in text
    else:
        assert store.engine == "zookeeper"
        assert settings.coordinators[0] in text and settings.zk_chroot in text


def test_closed_store_is_unavailable(tree: Store, other: Store) -> None:
    assert other.get("/t/a") == Entry("A", 0)
    other.close()
    start = time.monotonic()
    with pytest.raises(Unavailable):
        other.get("/t/a")
    with pytest.raises(Unavailable):
        other.commit([Create("/t/after-close")])
    assert time.monotonic() - start < 5.0
    assert not tree.exists("/t/after-close")


# --- name validation -----------------------------------------------------------------------------

BAD_PATHS = [
    "",
    "t",
    "t/a",
    "/t/",
    "//t",
    "/t//a",
    "/t/.",
    "/t/..",
    "/t/../nodes",
    "/./t",
    "/t/a\x00",
    "/t/a\nb",
    "/t/a\x7f",
    "/t/a\u2028",
    "/t/" + "a" * 256,
    "/t/" + "é" * 128,
    "/t/\ud800",
    "/t/\U0001F600",
    "/t/\ue000",
]


def bad_calls(bad: str) -> dict[str, Callable[[Store], Any]]:
    return {
        "get": lambda s: s.get(bad),
        "get_many": lambda s: s.get_many(["/t/a", bad]),
        "children": lambda s: s.children(bad),
        "exists": lambda s: s.exists(bad),
        "subtree": lambda s: s.subtree(bad),
        "commit-create": lambda s: s.commit([Create("/t/new", "x"), Create(bad, "x")]),
        "commit-set": lambda s: s.commit([Set("/t/a", "changed"), Set(bad, "x")]),
        "commit-delete": lambda s: s.commit([Delete("/t/c"), Delete(bad)]),
        "commit-check": lambda s: s.commit([Set("/t/a", "changed"), Check(bad, 0)]),
        "write": lambda s: s.write({"/t/new": "x", bad: "y"}),
        "delete_tree": lambda s: s.delete_tree(bad),
        "watch": lambda s: s.watch([bad], lambda p: None),
        "wait_for": lambda s: s.wait_for([bad], lambda: True, 1.0),
    }


def test_bad_paths_are_refused_before_anything_is_sent(tree: Store) -> None:
    before = snapshot(tree)
    trips = tree.round_trips
    for bad in BAD_PATHS:
        for name, call in bad_calls(bad).items():
            with pytest.raises(InvalidArgument) as info:
                call(tree)
            message = str(info.value)
            assert message.startswith("Invalid key"), (bad, name, message)
            assert message.isprintable(), (bad, name, message)
    assert tree.round_trips == trips  # not even a read went to the store
    assert snapshot(tree) == before


def test_names_that_pass_validation_are_stored_on_both_engines(store: Store) -> None:
    names = ["a" * 255, "é" * 127, "名前", " spaced ", "...", ".hidden", "a.b", "-", "\u00a0", "\uffef", "zk:1=2,3"]
    store.commit([Create("/n")] + [Create(f"/n/{name}", name) for name in names])
    assert store.children("/n") == sorted(names)
    got = store.get_many([f"/n/{name}" for name in names])
    assert got == {f"/n/{name}": Entry(name, 0) for name in names}
    store.delete_tree("/n")
    assert not store.exists("/n")


# --- round trips ---------------------------------------------------------------------------------


def test_round_trips_count_batches(store: Store) -> None:
    keys = [f"/r/k{i:04}" for i in range(1000)]
    trips = store.round_trips
    store.commit([Create("/r")] + [Create(k, k[-4:]) for k in keys])
    assert store.round_trips - trips == 1

    trips = store.round_trips
    got = store.get_many(keys[:100])
    assert store.round_trips - trips == 1
    assert got == {k: Entry(k[-4:], 0) for k in keys[:100]}

    trips = store.round_trips
    got = store.get_many(keys + ["/r/missing"])  # more keys than one SQL statement takes
    assert store.round_trips - trips == 1
    assert len(got) == 1001 and got["/r/missing"] is None and got["/r/k0999"] == Entry("0999", 0)

    trips = store.round_trips
    assert store.children("/r") == [k.rsplit("/", 1)[1] for k in keys]
    assert store.round_trips - trips == 1

    trips = store.round_trips
    store.get("/r/k0001")
    store.exists("/r/k0002")
    assert store.round_trips - trips == 2

    trips = store.round_trips
    store.commit([Set(k, "x") for k in keys[:50]])
    assert store.round_trips - trips == 1


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_creators_on_one_store(store: Store) -> None:
    results = race(16, lambda i: store.commit([Create("/race", f"creator {i}")]))
    assert results.count("ok") == 1, results
    assert results.count("AlreadyExists") == 15, results
    assert store.get("/race") == Entry(f"creator {results.index('ok')}", 0)


def test_concurrent_creators_on_two_stores(store: Store, other: Store) -> None:
    stores = (store, other)
    # A parent and a child in one transaction: a half-applied winner would show up as AlreadyExists
    # on only one of them.
    results = race(
        16, lambda i: stores[i % 2].commit([Create("/race2", f"creator {i}"), Create("/race2/kid", str(i))])
    )
    assert results.count("ok") == 1, results
    assert results.count("AlreadyExists") == 15, results
    winner = results.index("ok")
    assert store.get("/race2") == Entry(f"creator {winner}", 0)
    assert other.get("/race2/kid") == Entry(str(winner), 0)


def test_version_checked_set_race(store: Store, other: Store) -> None:
    store.commit([Create("/cas", "start"), Set("/cas", "one")])
    stores = (store, other)
    results = race(16, lambda i: stores[i % 2].commit([Set("/cas", f"writer {i}", version=1)]))
    assert results.count("ok") == 1, results
    assert results.count("Conflict") == 15, results
    assert store.get("/cas") == Entry(f"writer {results.index('ok')}", 2)


def test_version_checked_delete_race(store: Store, other: Store) -> None:
    store.commit([Create("/del", "x")])
    stores = (store, other)
    results = race(8, lambda i: stores[i % 2].commit([Delete("/del", version=0)]))
    assert results.count("ok") == 1, results
    # The losers find it gone (NotFound) or, on the embedded engine, never see it at all.
    assert set(results) - {"ok"} <= {"NotFound", "Conflict"}, results
    assert not store.exists("/del")


# --- watches -------------------------------------------------------------------------------------


def test_watch_reports_data_changes(tree: Store) -> None:
    rec = Recorder()
    handle = tree.watch(["/t/a", "/t/b"], rec)
    try:
        tree.commit([Set("/t/a", "A1")])
        rec.wait("/t/a")
        tree.commit([Set("/t/b", "B1")])
        rec.wait("/t/b")
        tree.commit([Set("/t/a", "A2")])
        rec.wait("/t/a", count=2)
        tree.commit([Set("/t/c", "C1")])  # not watched
        settle(tree)
        assert set(rec.calls) == {"/t/a", "/t/b"}
        assert rec.calls.count("/t/a") == 2 and rec.calls.count("/t/b") == 1
    finally:
        handle.cancel()


def test_watch_reports_delete_and_create(tree: Store) -> None:
    rec = Recorder()
    handle = tree.watch(["/t/c", "/t/later"], rec)
    try:
        tree.commit([Delete("/t/c")])
        rec.wait("/t/c")
        tree.commit([Create("/t/later", "now")])
        rec.wait("/t/later")
        tree.commit([Create("/t/c", "back")])
        rec.wait("/t/c", count=2)
    finally:
        handle.cancel()


def test_watch_reports_children_changes_only_when_asked(tree: Store) -> None:
    kids = Recorder()
    data = Recorder()
    h1 = tree.watch(["/t"], kids, children=True)
    h2 = tree.watch(["/t"], data)
    try:
        tree.commit([Create("/t/d")])
        kids.wait("/t")
        tree.commit([Delete("/t/d")])
        kids.wait("/t", count=2)
        tree.commit([Create("/t/b/y")])  # a grandchild is not a child of /t
        settle(tree)
        assert kids.calls == ["/t", "/t"]
        assert data.calls == []  # a data-only watch ignores children
        tree.commit([Set("/t", "root2")])
        kids.wait("/t", count=3)  # the value of the key itself is reported too
        data.wait("/t")
    finally:
        h1.cancel()
        h2.cancel()


def test_children_watch_of_a_missing_key_is_not_found(tree: Store) -> None:
    with pytest.raises(NotFound, match="/t/nope"):
        tree.watch(["/t/nope"], lambda p: None, children=True)
    assert not tree.exists("/t/nope")


def test_cancel_stops_notifications(tree: Store) -> None:
    gone = Recorder()
    handle = tree.watch(["/t/a"], gone)
    tree.commit([Set("/t/a", "A1")])
    gone.wait("/t/a")
    handle.cancel()
    assert handle.cancelled
    handle.cancel()  # twice is harmless
    live = Recorder()
    h2 = tree.watch(["/t/a"], live)
    try:
        tree.commit([Set("/t/a", "A2")])
        live.wait("/t/a")
        tree.commit([Delete("/t/a")])
        live.wait("/t/a", count=2)
        settle(tree)
        assert gone.calls == ["/t/a"]
    finally:
        h2.cancel()


def test_threads_that_end_leave_no_connection_open(tree: Store) -> None:
    """An agent reads from a new thread per VM action: each thread's store connection must go
    with the thread, not pile up until the process runs out of file descriptors."""
    import gc

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    tree.get("/t")
    gc.collect()
    before = fds()
    for _ in range(5):
        threads = [threading.Thread(target=tree.get, args=("/t",)) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    gc.collect()
    assert fds() - before < 10, f"{fds() - before} file descriptors more after 200 threads"
    assert tree.get("/t").value == "root"  # still usable from this thread


def test_cancel_leaves_no_watcher_behind(tree: Store) -> None:
    """A cancelled watch is gone from the engine at once, not when its key next changes (kazoo
    keeps a recipe's watcher until it fires; an agent cancels one per undefined VM)."""
    handles = [tree.watch(["/t/a", "/t/b"], lambda p: None) for _ in range(3)]
    kids = tree.watch(["/t"], lambda p: None, children=True)
    for h in handles + [kids]:
        h.cancel()
    if tree.engine == "zookeeper":
        client = tree.client  # type: ignore[attr-defined]
        left = {p: w for table in (client._data_watchers, client._child_watchers) for p, w in table.items()
                if p.startswith("/t") and w}
        assert left == {}
        assert not [f for f in client.state_listeners if getattr(f, "__self__", None).__class__.__name__
                    in ("DataWatch", "ChildrenWatch")]
    else:
        assert tree._watches == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize("churn", [False, True], ids=["quiet", "busy"])
def test_watch_sees_changes_made_right_after_it_is_registered(tree: Store, other: Store, churn: bool) -> None:
    # The watch must be in place when watch() returns: a change committed at once is not lost,
    # also while other writes keep the engine's watch machinery busy.
    stop = threading.Event()
    busy = Recorder()
    h0 = tree.watch(["/t/c"], busy)

    def write_elsewhere() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            other.commit([Set("/t/c", str(i))])
            stop.wait(0.003)

    thread = threading.Thread(target=write_elsewhere)
    if churn:
        thread.start()
    try:
        for i in range(40 if churn else 15):
            rec = Recorder()
            key = f"/t/n{i}"
            handle = tree.watch(["/t/a", key], rec)
            try:
                (tree if i % 2 else other).commit([Set("/t/a", f"v{i}")])
                rec.wait("/t/a", timeout=3.0)
                (other if i % 2 else tree).commit([Create(key)])
                rec.wait(key, timeout=3.0)
            finally:
                handle.cancel()
    finally:
        stop.set()
        if churn:
            thread.join(10)
        h0.cancel()
    if churn:
        assert busy.calls  # the churn was seen too


def test_watch_sees_changes_from_another_store(tree: Store, other: Store) -> None:
    rec = Recorder()
    handle = tree.watch(["/t/a", "/t/new"], rec)
    try:
        other.commit([Set("/t/a", "from the other store")])
        rec.wait("/t/a")
        other.commit([Create("/t/new")])
        rec.wait("/t/new")
    finally:
        handle.cancel()


def test_failing_callback_does_not_break_watches(tree: Store) -> None:
    calls: list[str] = []

    def broken(path: str) -> None:
        calls.append(path)
        raise RuntimeError("a buggy watcher")

    rec = Recorder()
    h1 = tree.watch(["/t/a"], broken)
    h2 = tree.watch(["/t/a", "/t/b"], rec)
    try:
        tree.commit([Set("/t/a", "1")])
        rec.wait("/t/a")
        tree.commit([Set("/t/b", "1")])
        rec.wait("/t/b")
        tree.commit([Set("/t/a", "2")])
        rec.wait("/t/a", count=2)
        wait_until(lambda: calls.count("/t/a") >= 2, what="the failing callback being called again")
    finally:
        h1.cancel()
        h2.cancel()


def test_wait_for_returns_at_once_when_true(tree: Store) -> None:
    start = time.monotonic()
    result = tree.wait_for(["/t/a"], lambda: tree.get("/t/a"), 30.0)
    assert result == Entry("A", 0)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("writer", ["same", "other"])
def test_wait_for_wakes_on_change(tree: Store, other: Store, writer: str) -> None:
    checked = threading.Event()
    written: list[float] = []
    source = tree if writer == "same" else other

    def condition() -> Entry | None:
        checked.set()
        entry = tree.get("/t/a")
        return entry if entry.value == "go" else None

    def write() -> None:
        assert checked.wait(10)  # the waiter has looked once: its watch is in place
        source.commit([Set("/t/a", "go")])
        written.append(time.monotonic())

    thread = threading.Thread(target=write)
    thread.start()
    try:
        result = tree.wait_for(["/t/a"], condition, 30.0, describe=lambda: "a never became go")
    finally:
        thread.join(10)
    assert result == Entry("go", 1)
    # Woken by the watch, not by the periodic re-check (every 5 s).
    assert time.monotonic() - written[0] < 3.0


def test_wait_for_times_out_with_description(tree: Store) -> None:
    described: list[int] = []

    def describe() -> str:
        described.append(1)
        return "node hv1 is still flushing"

    start = time.monotonic()
    with pytest.raises(Timeout) as info:
        tree.wait_for(["/t/a"], lambda: False, 0.3, describe=describe)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 3.0
    assert str(info.value) == "Timed out after 0.3 s: node hv1 is still flushing"
    assert described == [1]
    with pytest.raises(Timeout, match="the condition did not hold"):
        tree.wait_for(["/t/a"], lambda: 0, 0.1)
    # Changes that do not make the condition true do not end the wait early.
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            tree.commit([Set("/t/a", f"churn {i}")])
            stop.wait(0.02)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(Timeout):
            tree.wait_for(["/t/a"], lambda: tree.get("/t/a").value == "never", 0.5)
        assert time.monotonic() - start >= 0.5
    finally:
        stop.set()
        thread.join(10)
    assert tree.get("/t/a").version > 0


# --- the embedded engine: several OS processes on one file ---------------------------------------

CHILD = r"""
import json, sqlite3, sys, time
from pvc.lib.errors import PvcError
from pvc.lib.store import Create, Set
from pvc.lib.store.embedded import EmbeddedStore

args = json.loads(sys.argv[1])
if args["op"] == "hold-lock":
    conn = sqlite3.connect(args["path"], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO keys (path, parent, value) VALUES ('/held', '/', 'x')")
    print("ready", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    conn.close()
    print(json.dumps({"result": "ok"}), flush=True)
    sys.exit(0)
store = EmbeddedStore(args["path"])
try:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)
    try:
        if args["op"] == "create":
            store.commit([Create(args["key"], args["value"])])
        elif args["op"] == "set":
            store.commit([Set(args["key"], args["value"], args.get("version"))])
        elif args["op"] == "many":
            for i in range(args["count"]):
                key = f"{args['key']}/k{i}"
                store.commit([Create(key, str(i))])
                if store.get(key).value != str(i):
                    raise SystemExit(f"read back a wrong value for {key}")
                store.get_many([f"{args['other']}/k{j}" for j in range(args["count"])])
        result = "ok"
    except PvcError as e:
        result = type(e).__name__
    print(json.dumps({"result": result, "at": time.monotonic()}), flush=True)
finally:
    store.close()
"""


def run_processes(
    specs: list[dict[str, Any]], started: Callable[[], None] | None = None, times: list[float] | None = None
) -> list[str]:
    """Start one Python process per spec, wait until all are ready, release them at once, and
    return each one's result ('ok' or the name of the error it got). ``times`` receives the
    moment (time.monotonic, the same clock in every process) each one finished its work."""
    with ExitStack() as stack:
        procs = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, json.dumps(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
            )
            for spec in specs
        ]
        try:
            for proc in procs:
                line = proc.stdout.readline()
                assert line.strip() == "ready", line + proc.stderr.read()
            if started is not None:
                started()
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            results = []
            for proc in procs:
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
                report = json.loads(out.strip().splitlines()[-1])
                results.append(report["result"])
                if times is not None and "at" in report:
                    times.append(report["at"])
            return results
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()


@pytest.fixture
def sqlite_path(tmp_path: Any) -> str:
    return str(tmp_path / "store" / "pvc.sqlite")


@pytest.fixture
def embedded(sqlite_path: str) -> Iterator[EmbeddedStore]:
    store = EmbeddedStore(sqlite_path)
    yield store
    store.close()


def test_embedded_concurrent_creators_in_separate_processes(embedded: EmbeddedStore, sqlite_path: str) -> None:
    specs = [{"op": "create", "path": sqlite_path, "key": "/race", "value": f"process {i}"} for i in range(6)]
    results = run_processes(specs)
    assert results.count("ok") == 1, results
    assert results.count("AlreadyExists") == 5, results
    assert embedded.get("/race") == Entry(f"process {results.index('ok')}", 0)


def test_embedded_version_checked_set_in_separate_processes(embedded: EmbeddedStore, sqlite_path: str) -> None:
    embedded.commit([Create("/cas", "start")])
    specs = [
        {"op": "set", "path": sqlite_path, "key": "/cas", "value": f"process {i}", "version": 0} for i in range(6)
    ]
    results = run_processes(specs)
    assert results.count("ok") == 1, results
    assert results.count("Conflict") == 5, results
    assert embedded.get("/cas") == Entry(f"process {results.index('ok')}", 1)


def test_embedded_two_processes_read_and_write_at_once(embedded: EmbeddedStore, sqlite_path: str) -> None:
    embedded.commit([Create("/p1"), Create("/p2")])
    count = 60
    specs = [
        {"op": "many", "path": sqlite_path, "key": "/p1", "other": "/p2", "count": count},
        {"op": "many", "path": sqlite_path, "key": "/p2", "other": "/p1", "count": count},
    ]
    results = run_processes(specs)
    assert results == ["ok", "ok"]
    for parent in ("/p1", "/p2"):
        assert embedded.children(parent) == sorted(f"k{i}" for i in range(count))
        got = embedded.get_many([f"{parent}/k{i}" for i in range(count)])
        assert got == {f"{parent}/k{i}": Entry(str(i), 0) for i in range(count)}


def test_embedded_watch_sees_a_change_from_another_process(embedded: EmbeddedStore, sqlite_path: str) -> None:
    embedded.commit([Create("/x", "before")])
    rec = Recorder()
    handle = embedded.watch(["/x"], rec)
    try:
        results = run_processes([{"op": "set", "path": sqlite_path, "key": "/x", "value": "from afar"}])
        assert results == ["ok"]
        rec.wait("/x")
        assert embedded.get("/x") == Entry("from afar", 1)
    finally:
        handle.cancel()


def test_embedded_wait_for_a_change_from_another_process(embedded: EmbeddedStore, sqlite_path: str) -> None:
    outcome: list[Any] = []
    embedded.commit([Create("/x", "before")])
    ready = threading.Event()

    def waiter() -> None:
        try:
            outcome.append(
                embedded.wait_for(
                    ["/x"], lambda: (ready.set(), embedded.get("/x").value == "done")[1], 20.0, lambda: "/x not done"
                )
            )
            outcome.append(time.monotonic())
        except PvcError as e:
            outcome.append(e)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert ready.wait(10)
    written: list[float] = []
    assert run_processes([{"op": "set", "path": sqlite_path, "key": "/x", "value": "done"}], times=written) == ["ok"]
    thread.join(20)
    assert outcome[:1] == [True], outcome
    assert outcome[1] - written[0] < 3.0  # woken by the watch, not by the 5-s re-check


def test_embedded_readers_are_not_blocked_by_a_writer(sqlite_path: str) -> None:
    store = EmbeddedStore(sqlite_path, timeout=0.5)
    try:
        store.commit([Create("/t", "T")])
        released = []

        def while_locked() -> None:
            # Another process holds the write lock with an uncommitted key. WAL: reading does not
            # wait for the writer (if it did, it would fail with Unavailable after the 0.5-s
            # timeout) and does not see its uncommitted key.
            assert store.get_many(["/t", "/held"]) == {"/t": Entry("T", 0), "/held": None}
            assert store.children("/") == ["t"]
            start = time.monotonic()
            with pytest.raises(Unavailable, match=sqlite_path):
                store.commit([Create("/mine", "x")])
            assert time.monotonic() - start < 3.0  # fails after the store timeout, no hang
            assert not store.exists("/mine")
            released.append(True)

        results = run_processes([{"op": "hold-lock", "path": sqlite_path}], started=while_locked)
        assert released == [True]
        assert results == ["ok"]
        assert store.get("/held") == Entry("x", 0)
        store.commit([Create("/mine", "x")])  # the lock is free again
        assert store.get("/mine") == Entry("x", 0)
    finally:
        store.close()


def test_embedded_file_is_in_wal_mode(embedded: EmbeddedStore, sqlite_path: str) -> None:
    embedded.commit([Create("/t", "T")])
    assert os.path.isfile(sqlite_path)
    assert os.path.exists(sqlite_path + "-wal")
    conn = sqlite3.connect(sqlite_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_embedded_open_in_an_invalid_location_is_unavailable(tmp_path: Any) -> None:
    a_file = tmp_path / "regular-file"
    a_file.write_text("not a directory")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not an SQLite database\n" * 200)
    for path in (
        str(a_file / "pvc.sqlite"),  # under a regular file
        "/dev/null/pvc.sqlite",
        "/proc/pvc-test/pvc.sqlite",  # nobody can create a directory there, not even root
        str(tmp_path),  # a directory
        str(garbage),  # not a database
    ):
        start = time.monotonic()
        with pytest.raises(Unavailable) as info:
            EmbeddedStore(path, timeout=1.0).close()
        assert time.monotonic() - start < 3.0
        assert "Cannot open the embedded store" in str(info.value)
        assert os.path.abspath(path) in str(info.value)
    assert garbage.read_bytes() == b"this is not an SQLite database\n" * 200  # left untouched


def test_embedded_open_store_creates_the_directory(tmp_path: Any) -> None:
    path = tmp_path / "deep" / "er" / "pvc.sqlite"
    store = open_store(Settings(store_path=str(path)))
    try:
        assert store.engine == "embedded"
        assert path.is_file()
        assert store.children("/") == []
    finally:
        store.close()


# --- the ZooKeeper engine: outages, on a server of its own ---------------------------------------


@pytest.fixture(scope="module")
def lonely_zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A ZooKeeper only the outage tests use, so stopping it disturbs no other test."""
    with ZooKeeperServer(str(tmp_path_factory.mktemp("zk-outage"))) as server:
        yield server


@pytest.fixture
def outage_server(lonely_zk: ZooKeeperServer) -> Iterator[ZooKeeperServer]:
    if lonely_zk.process is None:
        lonely_zk.start()
    yield lonely_zk
    if lonely_zk.process is None:
        lonely_zk.start()


def answers(store: Store, key: str) -> bool:
    try:
        store.get_many([key])
        return True
    except Unavailable:
        return False


@pytest.mark.zk
def test_zookeeper_outage_fails_fast_and_recovers(outage_server: ZooKeeperServer) -> None:
    key = f"/outage-{uuid.uuid4().hex[:8]}"
    store = ZooKeeperStore([outage_server.hosts])
    bystander = ZooKeeperStore([outage_server.hosts])
    try:
        store.commit([Create(key, "before"), Create(f"{key}/kid", "k")])
        rec = Recorder()
        handle = store.watch([key], rec)
        outage_server.stop()

        calls: dict[str, Callable[[], Any]] = {
            "get": lambda: store.get(key),
            "get_many": lambda: store.get_many([key, f"{key}/kid"]),
            "children": lambda: store.children(key),
            "exists": lambda: store.exists(key),
            "subtree": lambda: store.subtree(key),
            "commit": lambda: store.commit([Create(f"{key}/new", "x"), Set(key, "during")]),
            "write": lambda: store.write({key: "during", f"{key}/new2": "y"}),
            "delete_tree": lambda: store.delete_tree(key),
            "watch": lambda: store.watch([key], lambda p: None),
            "wait_for": lambda: store.wait_for([key], lambda: True, 10.0),
        }

        def measure(call: Callable[[], Any]) -> tuple[str, float]:
            start = time.monotonic()
            try:
                call()
                outcome = "no error"
            except Exception as e:  # noqa: BLE001 - the test reports whatever came out
                outcome = type(e).__name__
            return outcome, time.monotonic() - start

        with ThreadPoolExecutor(len(calls)) as pool:
            futures = {name: pool.submit(measure, call) for name, call in calls.items()}
            outcomes = {name: future.result(timeout=30) for name, future in futures.items()}
        for name, (outcome, elapsed) in outcomes.items():
            assert outcome == "Unavailable", (name, outcome)
            assert elapsed < 3.0, (name, elapsed)
        # One more, alone, after the loss has been noticed.
        outcome, elapsed = measure(lambda: store.get(key))
        assert outcome == "Unavailable" and elapsed < 3.0, (outcome, elapsed)

        outage_server.start()
        start = time.monotonic()
        wait_until(lambda: answers(store, key), 20.0, "the same store object answering again")
        assert time.monotonic() - start < 10.0
        # Nothing of the failed writes was applied.
        assert store.get_many([key, f"{key}/kid", f"{key}/new", f"{key}/new2"]) == {
            key: Entry("before", 0),
            f"{key}/kid": Entry("k", 0),
            f"{key}/new": None,
            f"{key}/new2": None,
        }
        # It writes again, and the watch set before the outage still reports changes.
        wait_until(lambda: answers(bystander, key), 20.0, "the bystander store answering again")
        bystander.commit([Set(key, "after")])
        rec.wait(key, timeout=10.0)
        store.commit([Create(f"{key}/new", "x")])
        assert bystander.get(f"{key}/new") == Entry("x", 0)
        handle.cancel()
    finally:
        store.close()
        bystander.close()


@pytest.mark.zk
def test_zookeeper_store_opened_while_down(outage_server: ZooKeeperServer) -> None:
    outage_server.stop()
    start = time.monotonic()
    store = open_store(Settings(coordinators=(outage_server.hosts,), store_timeout=1.0))
    try:
        assert time.monotonic() - start < 1.0  # opening does not wait for the server
        assert store.engine == "zookeeper"
        start = time.monotonic()
        with pytest.raises(Unavailable, match=outage_server.hosts):
            store.exists("/")
        assert time.monotonic() - start < 3.0
        with pytest.raises(Unavailable):
            store.commit([Create("/never")])
        outage_server.start()
        wait_until(lambda: answers(store, "/"), 20.0, "the store connecting once ZooKeeper is up")
        assert store.exists("/")
        assert not store.exists("/never")
        key = f"/late-{uuid.uuid4().hex[:8]}"
        store.commit([Create(key, "v")])
        assert store.get(key) == Entry("v", 0)
        store.delete_tree(key)
    finally:
        store.close()


def test_embedded_many_open_a_new_file_at_once(tmp_path: Any) -> None:
    """Sessions opening a brand-new file together all succeed: switching it to WAL mode can fail
    at once with "database is locked" (SQLite does not busy-wait there), which must be waited out."""
    failures: list[BaseException] = []
    for round_ in range(100):  # the race is rare: many rounds give it a chance to show
        path = str(tmp_path / f"new-{round_}.sqlite")
        barrier = threading.Barrier(16)

        def open_one() -> None:
            barrier.wait(30)
            try:
                store = EmbeddedStore(path, timeout=5.0)
                try:
                    assert store.exists("/")
                finally:
                    store.close()
            except BaseException as e:  # collected and asserted below, with the round
                failures.append(e)

        threads = [threading.Thread(target=open_one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failures == [], (round_, failures)


def test_a_commit_too_large_for_zookeeper_is_refused_by_both_engines(store: Store) -> None:
    """ZooKeeper drops the session on a request over its 1 MiB buffer; both engines refuse such a
    commit up front with a clear error, and nothing is written. One just below the limit lands."""
    from pvc.lib.store.base import MAX_COMMIT_BYTES

    with pytest.raises(InvalidArgument, match="too large to store"):
        store.commit([Create("/big", "x" * MAX_COMMIT_BYTES)])
    with pytest.raises(InvalidArgument, match="too large to store"):
        store.commit([Create("/a", "x" * 600_000), Create("/b", "y" * 600_000)])
    assert not store.exists("/big") and not store.exists("/a")
    store.commit([Create("/fits", "z" * (MAX_COMMIT_BYTES - 1000))])
    assert len(store.get("/fits").value) == MAX_COMMIT_BYTES - 1000
    store.commit([Create("/after", "ok")])  # the session is still fine
    assert store.get("/after").value == "ok"
