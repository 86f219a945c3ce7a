"""The store: one interface (:mod:`.base`), two engines, chosen by the settings.

Engines are imported only when opened, so commands that never touch the store (``--help``,
completion of command names) do not import kazoo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvc.lib.store.base import Check, Create, Delete, Entry, Op, Set, Store, WatchHandle

if TYPE_CHECKING:
    from pvc.lib.config import Settings

__all__ = ["Check", "Create", "Delete", "Entry", "Op", "Set", "Store", "WatchHandle", "open_store"]


def open_store(settings: "Settings") -> Store:
    """Open the engine the settings select: ZooKeeper when coordinators are set, else embedded."""
    if settings.engine == "zookeeper":
        from pvc.lib.store.zookeeper import ZooKeeperStore

        return ZooKeeperStore(settings.coordinators, settings.zk_chroot, settings.store_timeout)
    from pvc.lib.config import default_store_path
    from pvc.lib.store.embedded import EmbeddedStore

    return EmbeddedStore(settings.store_path or default_store_path({}), settings.store_timeout)
