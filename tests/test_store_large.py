"""Subtrees too large for one commit, on both store engines: `delete_tree` removes them in
several commits under the limit (children before parents), and still in one when they fit."""

from __future__ import annotations

import pytest

from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument
from pvc.lib.store import Create, Delete, Store
from pvc.lib.store.base import MAX_COMMIT_BYTES, check_ops, delete_batches, op_cost

GROUPS, KEYS = 200, 100  # 20,000 leaves under 200 groups


@pytest.fixture
def store(core: Cluster) -> Store:
    return core.store


def fill(store: Store, root: str, groups: int, keys: int) -> list[str]:
    """``root`` with ``groups`` children of ``keys`` small keys each, written ten groups a commit."""
    store.commit([Create(root, "root")])
    written = [root]
    for first in range(0, groups, 10):
        ops = []
        for g in range(first, min(groups, first + 10)):
            group = f"{root}/group-{g:03d}"
            ops += [Create(group, "g")] + [Create(f"{group}/key-{k:05d}", str(k)) for k in range(keys)]
        store.commit(ops)
        written += [op.path for op in ops]
    return written


def test_delete_tree_too_large_for_one_commit(store: Store) -> None:
    written = fill(store, "/bulk", GROUPS, KEYS)
    store.commit([Create("/bulky", "stays"), Create("/bulky/x", "stays too")])  # a name sharing the prefix
    keys = store.subtree("/bulk")
    assert sorted(keys) == sorted(written) and len(keys) == 1 + GROUPS * (KEYS + 1)
    with pytest.raises(InvalidArgument, match="too large to store"):  # what one commit would be
        store.commit([Delete(k) for k in reversed(keys)])
    assert len(store.children("/bulk")) == GROUPS
    trips = store.round_trips
    store.delete_tree("/bulk")
    assert store.round_trips - trips >= 3  # the subtree, then at least two commits
    assert not store.exists("/bulk")
    assert set(store.get_many(written).values()) == {None}
    assert "bulk" not in store.children("/")
    assert store.get_many(["/bulky", "/bulky/x"]) == {"/bulky": store.get("/bulky"), "/bulky/x": store.get("/bulky/x")}
    assert (store.get("/bulky").value, store.get("/bulky/x").value) == ("stays", "stays too")


def test_delete_tree_that_fits_is_one_commit(store: Store) -> None:
    written = fill(store, "/small", 3, 5)
    trips = store.round_trips
    store.delete_tree("/small")
    assert store.round_trips - trips == 2  # the subtree, then one commit
    assert set(store.get_many(written).values()) == {None}


def test_delete_tree_interrupted_then_finished(store: Store) -> None:
    """A batched delete that stopped after its first commit leaves whole keys (children before
    parents were deleted) but for at most one; calling delete_tree again finishes it."""
    fill(store, "/part", 20, 10)
    batches = delete_batches(store.subtree("/part"), limit=2_000)
    assert len(batches) > 5
    store.commit(batches[0])
    groups = store.children("/part")
    assert 0 < len(groups) < 20
    partial = [g for g in groups if len(store.children(f"/part/{g}")) != 10]
    assert len(partial) <= 1, partial
    store.delete_tree("/part")
    assert not store.exists("/part")


def test_delete_batches_order_and_size(store: Store) -> None:
    """Every batch is under its limit and deletes a key only after all its children; committed
    in order on a real store, they remove the whole subtree."""
    written = fill(store, "/b", 7, 13)
    keys = store.subtree("/b")
    limit = 1_500
    batches = delete_batches(keys, limit=limit)
    assert len(batches) > 3
    seen: set[str] = set()
    for batch in batches:
        check_ops(batch)
        assert sum(op_cost(op) for op in batch) <= limit
        for op in batch:
            assert not any(k.startswith(op.path + "/") and k not in seen for k in keys), op.path
            seen.add(op.path)
        store.commit(batch)
    assert seen == set(keys) and len(seen) == sum(len(b) for b in batches)
    assert set(store.get_many(written).values()) == {None}
    assert delete_batches(keys) == [[op for b in batches for op in b]]  # one commit when it fits
    assert delete_batches([]) == []
    assert MAX_COMMIT_BYTES == 1_000_000


def test_many_small_operations_just_under_the_limit_land(store: Store) -> None:
    """What the size check lets through, ZooKeeper takes: thousands of small creates (then the
    deletes of them) counted just under the limit, with the chroot in front of every path, land
    in one commit, and the session stays up; one more operation is refused before it is sent."""
    prefix = len((getattr(store, "chroot", None) or "").rstrip("/").encode("utf-8"))
    store.commit([Create("/many", "")])
    creates: list[Create] = []
    size = 0
    while True:
        op = Create(f"/many/k{len(creates):06d}", "")
        if size + op_cost(op, prefix) > MAX_COMMIT_BYTES:
            break
        creates.append(op)
        size += op_cost(op, prefix)
    with pytest.raises(InvalidArgument, match="too large to store"):
        store.commit(creates + [Create("/many/one-more", "")])
    assert store.children("/many") == []
    store.commit(creates)
    assert len(store.children("/many")) == len(creates) > 10_000
    deletes = [Delete(op.path) for op in creates]
    store.commit(deletes)
    assert store.children("/many") == []
    store.commit([Create("/after", "ok")])  # the session is still up
    assert store.get("/after").value == "ok"
