"""Cluster-wide operations: creating the root tree."""

from __future__ import annotations

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, InvalidState
from pvc.lib.registry import Param, operation
from pvc.lib.store import Create, Delete, open_store
from pvc.lib.store.base import delete_batches


@operation(
    "", "init", "POST", None,
    params={"yes": Param("Replace an existing cluster, deleting all of its data.", kind="flag")},
    http_reason="Initialising replaces the whole cluster; only an administrator on a node does it.",
)
def init_cluster(core: Cluster, yes: bool = False) -> str:
    """Create the cluster's root tree in the store.

    On a store that already holds a cluster this refuses unless --yes is given; with --yes the
    old tree (nodes, VMs, networks, storage records) is deleted and a new, empty one created.
    Running node agents must be restarted afterwards.

    The replacement is one transaction when the old tree's deletes fit in one commit. A larger
    tree is emptied in several commits cut by bytes (:func:`delete_batches`: ZooKeeper refuses
    a request over ~1 MB), children before parents, and the roots (/nodes, /domains, ...) are
    deleted and created anew in one last commit. If this fails midway (the store lost, an agent
    still writing under a root), the keys of the earlier commits are gone and the roots are all
    still there with what was left under them: a partly deleted cluster, still "a cluster that
    exists" for `pvc init`, that nothing should use; running `pvc init --yes` again finishes it.
    """
    _ensure_chroot(core)
    store = core.store
    present = [root for root, entry in store.get_many(schema.ROOTS).items() if entry is not None]
    if present and not yes:
        if _empty(core):  # e.g. the embedded store, which is born initialised
            return f"The cluster in {store.describe()} is already initialised and empty; nothing changed."
        raise InvalidState(
            f"A cluster already exists in {store.describe()}; pass --yes to replace it (this deletes all of its data)."
        )
    below = [key for root in present for key in store.subtree(root) if key != root]
    batches = delete_batches(below, store.path_prefix)
    # The roots go in the commit that creates the new tree, so no partial run leaves any missing.
    # A batch is half a commit at most: the root tree's few deletes and creates fit beside it.
    swap = [Delete(root) for root in present] + [Create(path, value) for path, value in schema.ROOT_TREE]
    for batch in batches[:-1]:
        store.commit(batch)
    store.commit([*(batches[-1] if batches else []), *swap])
    if present:
        return f"Replaced the cluster in {store.describe()} with a new, empty one; restart any running node agents."
    return f"Initialised a new cluster in {store.describe()}."


def _empty(core: Cluster) -> bool:
    """True when the whole root tree is there and holds nothing: no node, VM, network or Ceph object."""
    store = core.store
    if any(entry is None for entry in store.get_many([path for path, _ in schema.ROOT_TREE]).values()):
        return False
    # Commands in flight are not data: a cluster whose agents are talking is still empty.
    containers = [path for path, _ in schema.ROOT_TREE if path not in (schema.PRIMARY_NODE, schema.CEPH, schema.COMMANDS)]
    return all(not store.children(path) for path in containers)


def _ensure_chroot(core: Cluster) -> None:
    """Create the configured ZooKeeper chroot (pvc.store.chroot) if it does not exist yet: the
    chrooted session cannot create its own root, so the first `pvc init` would fail otherwise."""
    chroot = core.settings.zk_chroot
    if core.settings.engine != "zookeeper" or not chroot or core.store.exists("/"):
        return
    base = open_store(core.settings.replace(zk_chroot=None))
    try:
        path = ""
        for part in chroot.strip("/").split("/"):
            path += "/" + part
            if not base.exists(path):
                try:
                    base.commit([Create(path)])
                except AlreadyExists:  # created meanwhile by another pvc init
                    pass
    finally:
        base.close()
