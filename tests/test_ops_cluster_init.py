"""`pvc init --yes` on a large cluster, on both engines: the old tree's deletes are cut into
commits by bytes (ZooKeeper refuses a request over ~1 MB), the new root tree is created in one
commit at the end, and a run stopped midway is finished by running it again."""

from __future__ import annotations

import pytest

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument, InvalidState
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.store import Create, Delete, Store
from pvc.lib.store.base import check_ops, delete_batches

ROOT_TREE = dict(schema.ROOT_TREE)
#: Long names (the longest a key may have is 255 bytes): a few thousand of them outweigh one commit.
LONG = "x" * 220


def tree(store: Store) -> dict[str, str]:
    """Every key of the cluster with its value (the store's own root key left out)."""
    return {path: store.get(path).value for root in schema.ROOTS if store.exists(root) for path in store.subtree(root)}


def fill(store: Store, groups: int = 25, keys: int = 100) -> list[str]:
    """``groups`` VMs, nodes and networks with ``keys`` long-named children each, a commit per group."""
    roots = [schema.DOMAINS, schema.NODES, schema.NETWORKS, schema.CEPH + "/volumes"]
    written = []
    for g in range(groups):
        parent = f"{roots[g % len(roots)]}/{LONG[:200]}-{g:03d}"
        ops = [Create(parent, "g")] + [Create(f"{parent}/{LONG}-{k:03d}", str(k)) for k in range(keys)]
        store.commit(ops)
        written += [op.path for op in ops]
    store.commit([Delete(schema.PRIMARY_NODE), Create(schema.PRIMARY_NODE, "hv1")])
    return written


def doomed(store: Store) -> list[str]:
    return [key for root in schema.ROOTS for key in store.subtree(root)]


def test_init_yes_replaces_a_cluster_too_large_for_one_commit(core: Cluster) -> None:
    store = core.store
    written = fill(store)
    keys = doomed(store)
    assert len(keys) < 5000  # few keys, but long ones: it is the bytes that do not fit
    with pytest.raises(InvalidArgument, match="too large to store"):  # what one commit would be
        check_ops([Delete(key) for key in reversed(keys)], store.path_prefix)
    assert len(delete_batches(keys, store.path_prefix)) >= 3

    assert init_cluster(core, yes=True) == (f"Replaced the cluster in {store.describe()} with a new, empty one; "
                                            f"restart any running node agents.")
    assert tree(store) == ROOT_TREE
    assert set(store.get_many(written).values()) == {None}


def test_init_yes_stopped_midway_is_finished_by_running_it_again(core: Cluster) -> None:
    """What a run that failed between two of its commits leaves (e.g. the store lost, or an agent
    writing under a root, which makes the last commit fail): the earlier commits' keys gone, every
    root still there with the rest under it. Still an existing cluster (refused without --yes);
    running it again ends the job."""
    store = core.store
    written = fill(store)
    below = [key for key in doomed(store) if key not in schema.ROOTS]
    batches = delete_batches(below, store.path_prefix)
    assert len(batches) >= 3
    for batch in batches[: len(batches) // 2]:  # the commits that landed before the failure
        store.commit(batch)
    assert all(store.exists(root) for root in schema.ROOTS)
    assert any(store.children(root) for root in schema.ROOTS)
    with pytest.raises(InvalidState, match="pass --yes to replace it"):
        init_cluster(core)

    assert init_cluster(core, yes=True).startswith("Replaced the cluster in ")
    assert tree(store) == ROOT_TREE
    assert set(store.get_many(written).values()) == {None}


def test_init_yes_stopped_before_its_last_commit(core: Cluster) -> None:
    """Everything under the roots deleted, the last commit (roots deleted and created anew) not
    made: it is still a cluster, not an empty one (/ceph lost its children); --yes finishes it."""
    store = core.store
    fill(store)
    for batch in delete_batches([key for key in doomed(store) if key not in schema.ROOTS], store.path_prefix):
        store.commit(batch)
    assert set(tree(store)) == set(schema.ROOTS)
    with pytest.raises(InvalidState, match="pass --yes to replace it"):
        init_cluster(core)
    assert init_cluster(core, yes=True).startswith("Replaced the cluster in ")
    assert tree(store) == ROOT_TREE

