"""The cluster handle: settings plus one long-lived store session, opened on first use."""

from __future__ import annotations

import threading

from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.errors import AlreadyExists, InvalidState
from pvc.lib.store import Create, Store, open_store


class Cluster:
    """What every operation receives first. Build it from Settings; ``close()`` it when done.

    The store is opened lazily, so building a Cluster costs nothing and commands that never
    touch the data (``--help``, completion of command names) never connect.
    """

    def __init__(self, settings: Settings, store: Store | None = None):
        self.settings = settings
        self._store = store
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    store = open_store(self.settings)
                    if store.engine == "embedded":
                        ensure_root_tree(store)
                    self._store = store
        return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def not_initialised(core: Cluster) -> InvalidState:
    """The error for a store without the cluster's root tree (raise it)."""
    return InvalidState(f"The cluster in {core.store.describe()} is not initialised; run 'pvc init'.")


def ensure_root_tree(store: Store) -> bool:
    """Create the root tree if it is missing (the embedded store is born initialised).

    Returns True when this call created it. Several processes may race here; the tree is one
    transaction, so exactly one creates it and the others find it there.
    """
    if store.exists(schema.NODES):
        return False
    try:
        store.commit([Create(path, value) for path, value in schema.ROOT_TREE])
    except AlreadyExists:
        return False
    return True
