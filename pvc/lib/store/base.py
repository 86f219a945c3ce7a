"""The store interface: a small tree of keys with versions, shaped like ZooKeeper.

Two engines implement it (:mod:`.zookeeper` and :mod:`.embedded`); operations only ever see this
interface and our own errors. Values are UTF-8 text. Every key has a data version that grows by
one with each write, so writers can require "absent" (:class:`Create`) or "at version N"
(:class:`Set`/:class:`Delete`/:class:`Check` with a version) and concurrent writers cannot both win.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

from pvc.lib.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Timeout
from pvc.lib.schema import check_path

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """A key's value and its data version (0 when created, +1 per write)."""

    value: str
    version: int


@dataclass(frozen=True)
class Create:
    """Create ``path`` with ``value``; fails (AlreadyExists) if it exists, (NotFound) if its parent doesn't."""

    path: str
    value: str = ""


@dataclass(frozen=True)
class Set:
    """Replace the value of an existing ``path``; with ``version``, only if still at that version."""

    path: str
    value: str
    version: int | None = None


@dataclass(frozen=True)
class Delete:
    """Delete ``path``, which must exist and have no children; with ``version``, only at that version."""

    path: str
    version: int | None = None


@dataclass(frozen=True)
class Check:
    """Require that ``path`` exists at ``version``; writes nothing."""

    path: str
    version: int


Op = Create | Set | Delete | Check

#: Largest commit, paths and values together. ZooKeeper refuses a request over its jute.maxbuffer
#: (1 MiB by default) by dropping the session; both engines refuse the same commits up front.
MAX_COMMIT_BYTES = 1_000_000
#: Bytes each kind of operation adds to a ZooKeeper multi request besides its path and value,
#: rounded up: the operation's header and version, and for a create its flags and open ACL
#: (about 52 bytes).
_OP_OVERHEAD = {Create: 64, Set: 32, Delete: 32, Check: 32}


def op_cost(op: Op, prefix: int = 0) -> int:
    """What ``op`` adds to a commit's size; ``prefix``: bytes the store puts before each path."""
    cost = len(op.path.encode("utf-8")) + prefix + _OP_OVERHEAD[type(op)]
    if isinstance(op, (Create, Set)):
        cost += len(op.value.encode("utf-8"))
    return cost


def check_ops(ops: Sequence[Op], prefix: int = 0) -> None:
    """Check the paths of a commit and that it is not too large for the store (``prefix``: the
    bytes of a ZooKeeper chroot, which the server sees in front of every path)."""
    size = 0
    for op in ops:
        check_path(op.path)
        size += op_cost(op, prefix)
    if size > MAX_COMMIT_BYTES:
        raise InvalidArgument(f"The change is too large to store: {size} bytes in one write, where the limit is "
                              f"{MAX_COMMIT_BYTES}.")


#: Size of the commits :func:`delete_batches` makes: half the limit, so that a batch stays small
#: enough for the store to answer quickly.
DELETE_BATCH_BYTES = MAX_COMMIT_BYTES // 2


def delete_batches(keys: Iterable[str], prefix: int = 0, limit: int = DELETE_BATCH_BYTES) -> list[list[Delete]]:
    """Deletes of ``keys`` (whole subtrees, such as :meth:`Store.subtree` gives), cut into
    commits of at most ``limit`` bytes as :func:`check_ops` counts them; one when they all fit.

    Each key comes right after its descendants (the reverse of a depth-first order), so each
    commit deletes only keys whose children were deleted before them, and a series of commits
    that stops midway leaves whole keys with all their children, but for at most one.
    """
    batches: list[list[Delete]] = []
    batch: list[Delete] = []
    size = 0
    for path in sorted(keys, key=lambda p: p.split("/"), reverse=True):
        cost = op_cost(Delete(path), prefix)
        if batch and size + cost > limit:
            batches.append(batch)
            batch, size = [], 0
        batch.append(Delete(path))
        size += cost
    if batch:
        batches.append(batch)
    return batches


class WatchHandle:
    """Returned by :meth:`Store.watch`; ``cancel()`` stops the notifications."""

    def __init__(self, cancel: Callable[[], None]):
        self._cancel = cancel
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._cancel()


class Store:
    """What every engine provides. Methods raise only :mod:`pvc.lib.errors` types."""

    #: ``zookeeper`` or ``embedded``
    engine = "abstract"
    #: Bytes the backend sees in front of every path (a ZooKeeper chroot), for size checks.
    path_prefix = 0

    def __init__(self) -> None:
        #: Number of requests sent to the backend (a batch counts once); tests and benchmarks read it.
        self.round_trips = 0

    # -- reads --------------------------------------------------------------------------------
    def get(self, path: str) -> Entry:
        """The entry at ``path``; NotFound if it does not exist."""
        entry = self.get_many([path])[path]
        if entry is None:
            raise NotFound(f"Key {path} does not exist.")
        return entry

    def get_many(self, paths: Sequence[str]) -> dict[str, Entry | None]:
        """Entries of many keys in one batch (None for a missing key)."""
        raise NotImplementedError

    def children(self, path: str) -> list[str]:
        """Names of the children of ``path``, sorted; NotFound if ``path`` does not exist."""
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        return self.get_many([path])[path] is not None

    def subtree(self, path: str) -> list[str]:
        """Every key under ``path`` and ``path`` itself, parents before children."""
        raise NotImplementedError

    # -- writes -------------------------------------------------------------------------------
    def commit(self, ops: Sequence[Op]) -> None:
        """Apply every operation or none of them (one transaction)."""
        raise NotImplementedError

    def write(self, values: Mapping[str, str], attempts: int = 5) -> None:
        """Set several keys at once, creating the missing ones, atomically.

        Keys are written in sorted order so a parent is created before its children. Another
        writer racing on the same keys makes the transaction fail; it is then re-read and tried
        again, so the call either writes everything or raises.
        """
        paths = sorted(values)
        for path in paths:
            check_path(path)
        for attempt in range(attempts):
            current = self.get_many(paths)
            ops: list[Op] = []
            for path in paths:
                entry = current[path]
                if entry is None:
                    ops.append(Create(path, values[path]))
                else:
                    ops.append(Set(path, values[path], entry.version))
            try:
                self.commit(ops)
                return
            except (AlreadyExists, Conflict):
                if attempt == attempts - 1:
                    raise

    def delete_tree(self, path: str) -> None:
        """Delete ``path`` and everything under it; NotFound if absent.

        One transaction when the deletes fit in one commit (:data:`DELETE_BATCH_BYTES`). A larger
        subtree is deleted in several commits, children before parents, each under that size: if
        one fails (a concurrent writer, the store lost), the keys of the earlier commits are gone
        and the rest of the subtree, with ``path``, is still there; calling it again finishes it.
        """
        for batch in delete_batches(self.subtree(path), self.path_prefix):
            self.commit(batch)

    # -- change notification ------------------------------------------------------------------
    def watch(self, paths: Iterable[str], callback: Callable[[str], None], children: bool = False) -> WatchHandle:
        """Call ``callback(path)`` whenever the value or existence of one of ``paths`` changes
        (with ``children``, also when its children change), until the handle is cancelled.
        The callback runs on a background thread and must return quickly."""
        raise NotImplementedError

    def wait_for(
        self,
        paths: Iterable[str],
        condition: Callable[[], T],
        timeout: float,
        describe: Callable[[], str] | None = None,
    ) -> T:
        """Return ``condition()`` as soon as it is truthy, re-checking whenever one of ``paths``
        changes; raise Timeout with ``describe()`` when ``timeout`` seconds pass first."""
        changed = threading.Event()
        handle = self.watch(paths, lambda _path: changed.set())
        deadline = time.monotonic() + timeout
        try:
            while True:
                changed.clear()
                result = condition()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    detail = describe() if describe else "the condition did not hold"
                    raise Timeout(f"Timed out after {timeout:g} s: {detail}")
                # Woken by the watch; the periodic re-check only guards against a watch lost while
                # the store reconnected.
                changed.wait(min(remaining, 5.0))
        finally:
            handle.cancel()

    # -- lifecycle ----------------------------------------------------------------------------
    def describe(self) -> str:
        """Where the data lives, for start-up messages and errors."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
