"""The store: one interface (:mod:`.base`), two engines, chosen by the settings.

Engines are imported only when opened, so commands that never touch the store (``--help``,
completion of command names) do not import kazoo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvc.lib.errors import ConfigError
from pvc.lib.store.base import Check, Create, Delete, Entry, Op, Set, Store, WatchHandle

if TYPE_CHECKING:
    from pvc.lib.config import Settings

__all__ = ["Check", "Create", "Delete", "Entry", "Op", "Set", "Store", "WatchHandle", "open_store"]


def open_store(settings: "Settings") -> Store:
    """Open the engine the settings select: ZooKeeper when coordinators are set, else embedded."""
    if settings.engine == "zookeeper":
        from pvc.lib.store.zookeeper import ZooKeeperStore

        return ZooKeeperStore(settings.coordinators, settings.zk_chroot, settings.store_timeout)
    from pvc.lib.store.embedded import EmbeddedStore

    if not settings.store_path:  # load_settings always fills it in; a hand-made Settings must too
        raise ConfigError(["pvc.store.path: no embedded store file given"])
    return EmbeddedStore(settings.store_path, settings.store_timeout)
