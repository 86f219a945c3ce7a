"""A read view for `pvc serve`: an in-memory copy of the parts of the tree that reads need, kept
current by the store's change notifications, behind the same Store interface.

Every operation reads through it unchanged, so its answers are those of the store; reads of the
mirrored subtrees (:data:`MIRRORED`) make no round trip, everything else is passed on. Writes go
to the store, conditional as ever, and the view then catches up with them before the call
returns, so a client reads its own write on its next request.

How it stays current, per engine:

- **embedded**: every :data:`POLL` seconds it asks the file for what changed since the last
  transaction it applied (keys by their ``mzxid``, deletions through their parents' ``pzxid``;
  :meth:`EmbeddedStore.changes_since`), in one SQLite transaction, so it always holds the tree as
  it was after one transaction.
- **ZooKeeper**: one persistent recursive watch per mirrored subtree (ZooKeeper 3.6+). Each
  notification marks its key; the marked keys are read again in one multiRead. The server sends
  a session its notifications in order with its answers, so once a request returns, every change
  committed before it was sent has been marked (see :meth:`ZooKeeperStore.on_tree_event`): after
  our own commit the marked keys are read, and after a conflict a ``sync`` comes first.
  While the session is disconnected the view is not used (reads go to the store, which answers
  Unavailable), and after every reconnection it is read again from scratch before it is used: a
  persistent watch does not report what changed while it was away. An idle view sends a ``sync``
  every :data:`PROBE` seconds, so a server that hangs without closing the connection is left
  within the store's deadline, as a direct read would leave it.

Writes made through the store object the view wraps (by another part of the same process: the
node agent of `pvc serve`, or a test) are seen on the next read too: the store counts its
commits, and a read that finds the count moved catches up first.

For caches of what was computed from it (`pvc serve`'s response cache), the view tells what a
computation depended on: :meth:`ViewStore.state` gives the generation of each mirrored subtree
(a number that moves whenever a change under it is applied, and on every rebuild), and
:meth:`ViewStore.recording` records, for the calling thread, which subtrees were read and
whether anything came from the store itself instead (then the result follows nothing the view
can vouch for). :meth:`ViewStore.child_stamps` gives a stamp per child of a subtree (per VM under
``/domains``) that moves whenever anything under that child changes.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from pvc.lib import schema
from pvc.lib.errors import AlreadyExists, Conflict, NotFound, OutcomeUnknown, PvcError, Unavailable
from pvc.lib.schema import check_path
from pvc.lib.store.base import Entry, Op, Store, WatchHandle

log = logging.getLogger("pvc.store")

#: The subtrees kept in memory: what the reads of the API need (the command channel is not).
MIRRORED = (schema.NODES, schema.PRIMARY_NODE, schema.DOMAINS, schema.NETWORKS, schema.CEPH)
#: Embedded store: seconds between looks at the file for commits of other processes.
POLL = 0.02
#: ZooKeeper: seconds of quiet after which the view checks that its server still answers.
PROBE = 1.0
#: Seconds between attempts to build the view while the store is reachable but failing.
RETRY = 0.2


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _depth(path: str) -> tuple[int, str]:
    return (path.count("/"), path)


def _root_of(path: str) -> str:
    """The top-level key of ``path`` ("/domains" for "/domains/<uuid>/xml")."""
    end = path.find("/", 1)
    return path if end < 0 else path[:end]


def _child_of_root(path: str) -> str | None:
    """The second-level key of ``path`` ("/domains/<uuid>" for "/domains/<uuid>/xml"), None above."""
    first = path.find("/", 1)
    if first < 0:
        return None
    second = path.find("/", first + 1)
    return path if second < 0 else path[:second]


class Reads:
    """What one computation read through the view (see :meth:`ViewStore.recording`)."""

    __slots__ = ("roots", "direct", "wrote")

    def __init__(self) -> None:
        #: The mirrored subtrees read from memory.
        self.roots: set[str] = set()
        #: Something was read from the store itself (a key the view does not mirror, or the view
        #: was not current): the result depends on what the view's generations do not follow.
        self.direct = False
        #: Something was written: not a pure read.
        self.wrote = False

    @property
    def pure(self) -> bool:
        """Whether the result is a function of the mirrored subtrees read, and of nothing else."""
        return bool(self.roots) and not self.direct and not self.wrote


class ViewStore(Store):
    """The Store interface over ``store``, answering reads of ``roots`` from memory.

    ``owns``: close ``store`` with the view. Start-up builds the copy in the background; until it
    is built (and whenever it is not known to be current) reads go to the store itself.
    """

    def __init__(self, store: Store, roots: Sequence[str] = MIRRORED, owns: bool = True):
        # Store.__init__ is not called: round_trips is the backing store's (a property).
        for root in roots:
            if check_path(root).count("/") != 1:
                raise ValueError(f"a mirrored subtree must be a top-level key, not {root}")
        self.backing = store
        self.engine = store.engine
        self.path_prefix = store.path_prefix
        self.roots = tuple(roots)
        self.owns = owns
        self._root_names = frozenset(root[1:] for root in self.roots)
        self._entries: dict[str, Entry] = {}
        #: Sorted child names of each mirrored key that has children, and of "/" (the mirrored
        #: roots that exist).
        self._kids: dict[str, list[str]] = {"/": []}
        self._lock = threading.Lock()  # the copy: applied and read whole
        self._sync = threading.RLock()  # one catch-up (or rebuild) at a time
        self._ready = False
        self._seen_commits = store.commits  # type: ignore[attr-defined]
        #: Grows with every change applied (and every rebuild): equal generations, equal copies.
        self.generation = 0
        #: The same per mirrored subtree (read with :meth:`state`): moves with every change
        #: applied under that root, and on every rebuild; changes elsewhere leave it.
        self._generations: dict[str, int] = {root: 0 for root in self.roots}
        #: The generation at which each second-level key (a VM, a node) or anything under it last
        #: changed; one not listed has not changed since the last rebuild (``_stamp_floor``).
        self._stamps: dict[str, int] = {}
        self._stamp_floor = 0
        self._reads = threading.local()
        #: Times the copy was read from scratch (start-up, and after each reconnection).
        self.builds = 0
        self._watches: dict[int, _ViewWatch] = {}
        self._watch_ids = 0
        self._closed = False
        self._wake = threading.Event()
        self._feed: _Feed = _ZooKeeperFeed(self) if store.engine == "zookeeper" else _EmbeddedFeed(self)
        self._thread = threading.Thread(target=self._loop, name="pvc-view", daemon=True)
        self._thread.start()

    @property
    def round_trips(self) -> int:  # type: ignore[override]
        return self.backing.round_trips

    # -- state --------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether reads are answered from memory (built, and the store connected)."""
        return self._ready

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the view is built, at most ``timeout`` seconds, and no longer once the
        store is known to be unreachable (a server must start, and answer 503, meanwhile)."""
        start = time.monotonic()
        grace = min(timeout, getattr(self.backing, "timeout", 5.0))
        while not self._ready and not self._closed:
            waited = time.monotonic() - start
            if waited >= timeout or (waited >= grace and self._feed.unreachable()):
                break
            time.sleep(0.01)  # start-up only: a bounded poll of a flag set by the view's thread
        return self._ready

    def _mirrored(self, path: str) -> bool:
        end = path.find("/", 1)
        return path.startswith("/") and (path[1:end] if end > 0 else path[1:]) in self._root_names

    def _current(self) -> bool:
        """Whether reads may be answered from memory now: built, connected, and caught up with
        every commit made through the store object beneath."""
        if not self._ready:
            return False
        commits = self.backing.commits  # type: ignore[attr-defined]
        if commits != self._seen_commits:
            try:
                self._catch_up()
            except PvcError:
                self._lost("could not catch up with a write")
                return False
            self._seen_commits = commits
        return self._ready

    def _catch_up(self) -> None:
        with self._sync:
            self._feed.catch_up()

    def _lost(self, why: str) -> None:
        """Stop answering from memory until the view has been rebuilt."""
        if self._ready:
            log.warning("The read view is not current (%s); reading the store until it is rebuilt", why)
        self._ready = False
        self._feed.invalidate()
        self._wake.set()

    # -- what computations depend on ------------------------------------------------------------
    def state(self) -> dict[str, int] | None:
        """The generation of each mirrored subtree, once the view has caught up with every
        commit made through the store beneath; None when reads are not answered from memory
        (not built, or the store unreachable: nothing read now may be kept).

        Read under the lock that applying a change holds, so a change is either wholly before
        these numbers or moves them: whatever is read after this call is at least that new."""
        if not self._current():
            return None
        with self._lock:
            return dict(self._generations)

    @contextlib.contextmanager
    def recording(self) -> Iterator[Reads]:
        """Record what this thread reads through the view until the block ends."""
        reads = Reads()
        outer = getattr(self._reads, "current", None)
        self._reads.current = reads
        try:
            yield reads
        finally:
            self._reads.current = outer

    def _recorder(self) -> Reads | None:
        return getattr(self._reads, "current", None)

    def _read_direct(self) -> None:
        reads = self._recorder()
        if reads is not None:
            reads.direct = True

    def _read_mirror(self, path: str) -> None:
        reads = self._recorder()
        if reads is not None:
            reads.roots.add(_root_of(path))

    def child_stamps(self, path: str) -> list[tuple[str, int]] | None:
        """``(name, stamp)`` for each child of the mirrored root ``path``, sorted by name; a
        child's stamp moves whenever the child or anything under it changes (or the view is
        rebuilt), so equal stamps mean an unchanged subtree. None when the view is not current;
        NotFound when ``path`` does not exist. Counts as reading ``path``'s subtree."""
        if not self._mirrored(path) or path.count("/") != 1:
            raise ValueError(f"stamps are kept for the children of a mirrored root, not {path}")
        if not self._current():
            return None
        with self._lock:
            if path not in self._entries:
                raise self._missing(path)
            stamps, floor, prefix = self._stamps, self._stamp_floor, path + "/"
            found = [(name, stamps.get(prefix + name, floor)) for name in self._kids.get(path, ())]
        self._read_mirror(path)
        return found

    # -- reads --------------------------------------------------------------------------------
    def get_many(self, paths: Sequence[str]) -> dict[str, Entry | None]:
        if not self._current():
            self._read_direct()
            return self.backing.get_many(paths)
        found: dict[str, Entry | None] = {}
        others: list[str] = []
        entries = self._entries
        with self._lock:
            for path in paths:
                entry = entries.get(path)
                if entry is None:
                    if not self._mirrored(path):
                        others.append(path)
                        continue
                    check_path(path)
                found[path] = entry
        reads = self._recorder()
        if reads is not None:
            reads.roots.update({_root_of(path) for path in found})
        if others:
            self._read_direct()
            rest = self.backing.get_many(others)
            found = {path: found[path] if path in found else rest[path] for path in paths}
        return found

    def exists(self, path: str) -> bool:
        if not self._mirrored(path) or not self._current():
            self._read_direct()
            return self.backing.exists(path)
        self._read_mirror(path)
        if path in self._entries:
            return True
        check_path(path)
        return False

    def children(self, path: str) -> list[str]:
        if not self._mirrored(path) or not self._current():
            self._read_direct()
            return self.backing.children(path)
        self._read_mirror(path)
        with self._lock:
            if path in self._entries:
                return list(self._kids.get(path, ()))
        check_path(path)
        raise self._missing(path)

    def subtree(self, path: str) -> list[str]:
        if not self._mirrored(path) or not self._current():
            self._read_direct()
            return self.backing.subtree(path)
        self._read_mirror(path)
        with self._lock:
            if path not in self._entries:
                check_path(path)
                raise self._missing(path)
            # Level by level, each parent's children sorted, as the ZooKeeper engine walks.
            found, level = [path], [path]
            while level:
                level = [_join(p, name) for p in level for name in self._kids.get(p, ())]
                found.extend(level)
        if self.engine == "embedded":  # which orders each level by the whole path
            found = [path] + sorted(found[1:], key=_depth)
        return found

    def _missing(self, path: str) -> NotFound:
        """The NotFound the engine beneath would raise, word for word."""
        if self.engine == "zookeeper":
            return NotFound(f"Key does not exist ({path}).")
        return NotFound(f"Key {path} does not exist.")

    # -- writes -------------------------------------------------------------------------------
    def commit(self, ops: Sequence[Op]) -> None:
        """The store's commit; then the view catches up with it before returning, so the next
        read (by anyone) sees it. After a refused condition it catches up with the store first,
        so that a caller who reads again and retries sees what beat it."""
        reads = self._recorder()
        if reads is not None:
            reads.wrote = True
        try:
            self.backing.commit(ops)
        except OutcomeUnknown:
            raise
        except (Conflict, AlreadyExists, NotFound):
            self._barrier()
            raise
        if self._ready:
            commits = self.backing.commits  # type: ignore[attr-defined]
            try:
                self._catch_up()
                self._seen_commits = commits
            except PvcError:
                # Written, but not seen: reads go to the store until the view is rebuilt.
                self._lost("could not read back a write")

    def _barrier(self) -> None:
        """Catch up with every change committed anywhere before now."""
        if not self._ready:
            return
        try:
            self._feed.barrier()
            self._catch_up()
        except PvcError:
            self._lost("could not catch up with the store")

    # -- change notification ------------------------------------------------------------------
    def watch(self, paths: Iterable[str], callback: Callable[[str], None], children: bool = False) -> WatchHandle:
        """As the store's watch; for mirrored keys the callback comes once the view has applied
        the change, so a condition re-read through the view sees it."""
        paths = [check_path(p) for p in paths]
        mine = [p for p in paths if self._mirrored(p)]
        others = [p for p in paths if not self._mirrored(p)]
        handles: list[WatchHandle] = []
        if mine:
            if children:
                missing = [p for p in mine if not self.exists(p)]
                if missing:
                    raise NotFound(f"Cannot watch the children of a missing key ({', '.join(missing)}).")
            watch = _ViewWatch(frozenset(mine), children, callback)
            with self._lock:
                self._watch_ids += 1
                wid = self._watch_ids
                self._watches[wid] = watch

            def cancel() -> None:
                watch.active = False
                with self._lock:
                    self._watches.pop(wid, None)

            handles.append(WatchHandle(cancel))
        if others:
            try:
                handles.append(self.backing.watch(others, callback, children))
            except BaseException:
                for handle in handles:
                    handle.cancel()
                raise
        return WatchHandle(lambda: [handle.cancel() for handle in handles])

    def _notify(self, changed: set[str], parents: set[str], everything: bool = False) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            if not watch.active:
                continue
            if everything:
                hits = sorted(watch.paths)
            else:
                hits = sorted(p for p in watch.paths if p in changed or (watch.children and p in parents))
            for path in hits:
                try:
                    watch.callback(path)
                except Exception:  # a broken callback must not end every other watch
                    log.exception("A watch callback for %s failed", path)

    # -- applying changes (under self._sync) ----------------------------------------------------
    def _known_children(self, parent: str) -> list[str] | None:
        """The child names the view holds for ``parent``; None for a key it does not follow."""
        if parent != "/" and not self._mirrored(parent):
            return None
        return self._kids.get(parent, [])

    def _apply(self, upserts: Iterable[tuple[str, Entry]], removed: Iterable[str],
               lists: dict[str, list[str]]) -> None:
        """Apply one batch of changes atomically: full child lists of keys that lost children,
        keys written or created, keys found missing; then tell the watches."""
        changed: set[str] = set()
        parents: set[str] = set()
        with self._lock:
            for parent, names in lists.items():
                if parent != "/" and parent not in self._entries:
                    continue
                keep = set(names)
                for name in [n for n in self._kids.get(parent, ()) if n not in keep]:
                    self._remove(_join(parent, name), changed, parents)
            for path, entry in sorted(upserts, key=lambda item: _depth(item[0])):
                if not self._mirrored(path):
                    continue
                old = self._entries.get(path)
                if old != entry:
                    self._entries[path] = entry
                    changed.add(path)
                if old is None:
                    up = schema.parent(path)
                    kids = self._kids.setdefault(up, [])
                    name = path.rsplit("/", 1)[1]
                    i = bisect.bisect_left(kids, name)
                    if i == len(kids) or kids[i] != name:
                        kids.insert(i, name)
                        parents.add(up)
            for path in removed:
                self._remove(path, changed, parents)
            if changed or parents:
                # Still under the lock: state() sees these numbers only with the changes applied.
                self.generation += 1
                generation = self.generation
                for path in changed | parents:
                    root = _root_of(path)
                    if root in self._generations:
                        self._generations[root] = generation
                    below = _child_of_root(path)
                    if below is None:
                        continue
                    if below in self._entries:
                        self._stamps[below] = generation
                    else:  # gone; if it comes back, its creation stamps it anew
                        self._stamps.pop(below, None)
        if changed or parents:
            self._notify(changed, parents)

    def _remove(self, path: str, changed: set[str], parents: set[str]) -> None:
        """Forget ``path`` and everything under it (under self._lock)."""
        if path not in self._entries:
            return
        stack = [path]
        while stack:
            p = stack.pop()
            if self._entries.pop(p, None) is not None:
                changed.add(p)
            kids = self._kids.pop(p, None)
            if kids:
                parents.add(p)
                stack.extend(_join(p, name) for name in kids)
        up = schema.parent(path)
        kids = self._kids.get(up)
        if kids is not None:
            name = path.rsplit("/", 1)[1]
            i = bisect.bisect_left(kids, name)
            if i < len(kids) and kids[i] == name:
                del kids[i]
                parents.add(up)
                if not kids and up != "/":
                    del self._kids[up]

    def _replace(self, entries: dict[str, Entry], kids: dict[str, list[str]]) -> None:
        """Install a copy read from scratch; every watch is told (anything may have changed)."""
        with self._lock:
            self._entries = entries
            self._kids = kids
            self.generation += 1
            self.builds += 1
            # Anything may have changed: every subtree and every child moves.
            self._generations = {root: self.generation for root in self.roots}
            self._stamps = {}
            self._stamp_floor = self.generation
        self._notify(set(), set(), everything=True)

    # -- the view's thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        failing = False
        while not self._closed:
            try:
                if self._feed.needs_build():
                    with self._sync:
                        self._feed.build()
                else:
                    self._feed.tick()
                if failing:
                    log.info("The read view is current again")
                failing = False
            except PvcError as e:
                if not failing:
                    log.warning("The read view cannot follow the store: %s", e.message)
                failing = True
                self._wake.wait(RETRY)
            except Exception:
                log.exception("The read view failed; retrying")
                self._ready = False
                self._feed.invalidate()
                self._wake.wait(RETRY)
            self._wake.wait(self._feed.interval)
            self._wake.clear()

    # -- lifecycle ----------------------------------------------------------------------------
    def describe(self) -> str:
        return self.backing.describe()

    def close(self) -> None:
        self._closed = True
        self._ready = False
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._feed.close()
        if self.owns:
            self.backing.close()


class _ViewWatch:
    def __init__(self, paths: frozenset[str], children: bool, callback: Callable[[str], None]):
        self.paths = paths
        self.children = children
        self.callback = callback
        self.active = True


class _Feed:
    """How one engine keeps a view current."""

    interval = 1.0

    def needs_build(self) -> bool:
        raise NotImplementedError

    def build(self) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """Called by the view's thread every ``interval`` seconds, or sooner when woken."""
        raise NotImplementedError

    def catch_up(self) -> None:
        """Apply what changed since the last catch-up (under the view's _sync)."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Make the next catch-up include every change committed anywhere before this call."""

    def invalidate(self) -> None:
        """The copy is not trusted any more: build it again."""
        raise NotImplementedError

    def unreachable(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _EmbeddedFeed(_Feed):
    interval = POLL

    def __init__(self, view: ViewStore):
        self.view = view
        self.store: Any = view.backing
        self.zxid: int | None = None

    def needs_build(self) -> bool:
        return self.zxid is None

    def build(self) -> None:
        self.store.ensure_change_index()
        commits = self.store.commits
        zxid, rows = self.store.snapshot(self.view.roots)
        entries: dict[str, Entry] = {}
        kids: dict[str, list[str]] = {"/": []}
        for path, up, value, version in rows:
            entries[path] = Entry(value, version)
            kids.setdefault(up, []).append(path.rsplit("/", 1)[1])
        for names in kids.values():
            names.sort()
        self.view._replace(entries, kids)
        self.zxid = zxid
        self.view._seen_commits = commits
        self.view._ready = True

    def tick(self) -> None:
        self.view._catch_up()

    def catch_up(self) -> None:
        if self.zxid is None:
            return
        last, rows, lists = self.store.changes_since(self.zxid, self.view._known_children)
        if last == self.zxid:
            return
        self.view._apply(((path, Entry(value, version)) for path, _up, value, version in rows), (), lists)
        self.zxid = last

    def invalidate(self) -> None:
        self.zxid = None


class _ZooKeeperFeed(_Feed):
    interval = PROBE

    def __init__(self, view: ViewStore):
        self.view = view
        self.store: Any = view.backing
        self.dirty: set[str] = set()
        self.lock = threading.Lock()
        #: Grows with every connection change: a build that saw one is not trusted.
        self.epoch = 0
        self.stale = True
        self.quiet_since = time.monotonic()
        self._stops = [self.store.on_tree_event(self._event), self.store.on_connection(self._connection)]

    # Both run on kazoo's connection thread: record and wake, never block.
    def _event(self, path: str) -> None:
        if self.view._mirrored(path):
            with self.lock:
                self.dirty.add(path)
            self.view._wake.set()

    def _connection(self, connected: bool) -> None:
        self.epoch += 1
        self.stale = True
        self.view._ready = False
        self.view._wake.set()

    def needs_build(self) -> bool:
        return self.stale and self.store.connected

    def unreachable(self) -> bool:
        return not self.store.connected

    def build(self) -> None:
        epoch = self.epoch
        commits = self.store.commits
        self.stale = False
        try:
            for root in self.view.roots:  # watch first, then read: no change falls in between
                self.store.add_tree_watch(root)
            tree = self.store.read_tree(self.view.roots)
        except BaseException:
            self.stale = True
            raise
        entries = {path: entry for path, (entry, _names) in tree.items()}
        kids = {path: names for path, (_entry, names) in tree.items() if names}
        kids["/"] = sorted(root[1:] for root in self.view.roots if root in tree)
        self.view._replace(entries, kids)
        self.catch_up()  # what changed while it was read
        if epoch == self.epoch and self.store.connected:
            self.view._seen_commits = commits
            self.view._ready = True
            self.quiet_since = time.monotonic()
        else:
            self.stale = True

    def tick(self) -> None:
        with self.lock:
            pending = bool(self.dirty)
        if pending:
            self.view._catch_up()
        elif self.view._ready and time.monotonic() - self.quiet_since >= PROBE:
            # Quiet: make sure the server still answers (a hung one is then left, see sync()).
            try:
                self.store.sync()
            except Unavailable:
                self.view._lost("its ZooKeeper server did not answer")
                raise
        self.quiet_since = time.monotonic()

    def catch_up(self) -> None:
        with self.lock:
            paths, self.dirty = self.dirty, set()
        if not paths:
            return
        try:
            found = self.store.get_many(sorted(paths, key=_depth))
        except BaseException:
            with self.lock:
                self.dirty |= paths
            raise
        self.view._apply(((p, e) for p, e in found.items() if e is not None),
                         [p for p, e in found.items() if e is None], {})

    def barrier(self) -> None:
        self.store.sync()

    def invalidate(self) -> None:
        self.epoch += 1
        self.stale = True

    def close(self) -> None:
        for stop in self._stops:
            stop()
