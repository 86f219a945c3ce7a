"""The embedded engine: the whole tree in one SQLite file (WAL), for a single host with no set-up.

Several processes (the CLI, `pvc serve`, the node agent) can open the file at once: writes take
SQLite's write lock (``BEGIN IMMEDIATE``) so each transaction checks its conditions and applies
its operations with nobody in between. Every key keeps a data version and a child version, as
in ZooKeeper, and the number of the transaction that last changed it (its "zxid"). Watches work
across processes: a watcher thread notices commits from any connection through
``PRAGMA data_version`` and compares those numbers for the watched keys.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from typing import Callable, Iterable, Sequence

from pvc.lib.errors import AlreadyExists, Conflict, NotFound, Unavailable
from pvc.lib.schema import check_path, parent
from pvc.lib.store.base import Check, Create, Delete, Entry, Op, Set, Store, WatchHandle, check_ops

log = logging.getLogger("pvc.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    path TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    value TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    mzxid INTEGER NOT NULL DEFAULT 0,  -- transaction that last wrote the value (as ZooKeeper's)
    pzxid INTEGER NOT NULL DEFAULT 0   -- transaction that last added or removed a child
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_parent ON keys (parent);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('zxid', 0);
INSERT OR IGNORE INTO keys (path, parent, value) VALUES ('/', '', '');
"""

# SQLite's limit on bound variables is at least 32766 in the versions Python ships; stay well below.
_CHUNK = 900
#: How often the watcher thread asks SQLite whether another connection committed.
_POLL = 0.05


class EmbeddedStore(Store):
    engine = "embedded"
    #: Commits sent through this object (applied or not): a read view on it catches up when it grows.
    commits = 0

    def __init__(self, path: str, timeout: float = 5.0):
        super().__init__()
        self.path = os.path.abspath(os.path.expanduser(path))
        self.timeout = timeout
        self._local = threading.local()
        #: Every thread's connection, held weakly: a thread that ends drops its own (an agent runs
        #: a thread per VM action; kept connections would pile up to the file-descriptor limit).
        self._connections: "weakref.WeakSet[_Held]" = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        self._watches: dict[int, _Watch] = {}
        self._watch_ids = 0
        self._watcher: threading.Thread | None = None
        self._wake = threading.Event()
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            conn = self._conn()
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
                # Under the write lock, taken up front: a statement that starts reading and then
                # wants to write fails at once (no busy wait) when another process wrote between.
                conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise Unavailable(f"Cannot open the embedded store {self.path}: {e}") from None

    # -- connections --------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            _wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread, kept while the thread lives (or until the store closes)."""
        if self._closed:
            raise Unavailable("The embedded store is closed.")
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _Held(self._connect())
            with self._lock:
                self._connections.add(held)
        return held.conn

    def _run(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        self.round_trips += 1
        try:
            return fn(self._conn())
        except sqlite3.DatabaseError as e:
            raise Unavailable(f"The embedded store {self.path} is not usable: {e}") from None

    # -- reads --------------------------------------------------------------------------------
    def get_many(self, paths: Sequence[str]) -> dict[str, Entry | None]:
        paths = list(dict.fromkeys(paths))
        for path in paths:
            check_path(path)

        def read(conn: sqlite3.Connection) -> dict[str, Entry | None]:
            found: dict[str, Entry | None] = dict.fromkeys(paths)
            conn.execute("BEGIN")  # one snapshot for every chunk
            try:
                for i in range(0, len(paths), _CHUNK):
                    chunk = paths[i : i + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for path, value, version in conn.execute(
                        f"SELECT path, value, version FROM keys WHERE path IN ({marks})", chunk
                    ):
                        found[path] = Entry(value, version)
            finally:
                conn.execute("COMMIT")
            return found

        return self._run(read)  # type: ignore[return-value]

    def children(self, path: str) -> list[str]:
        check_path(path)

        def read(conn: sqlite3.Connection) -> list[str]:
            conn.execute("BEGIN")
            try:
                if conn.execute("SELECT 1 FROM keys WHERE path = ?", (path,)).fetchone() is None:
                    raise NotFound(f"Key {path} does not exist.")
                rows = conn.execute("SELECT path FROM keys WHERE parent = ?", (path,)).fetchall()
            finally:
                conn.execute("COMMIT")
            return sorted(p.rsplit("/", 1)[1] for (p,) in rows)

        return self._run(read)  # type: ignore[return-value]

    def subtree(self, path: str) -> list[str]:
        check_path(path)
        prefix = "/" if path == "/" else path + "/"

        def read(conn: sqlite3.Connection) -> list[str]:
            conn.execute("BEGIN")
            try:
                if conn.execute("SELECT 1 FROM keys WHERE path = ?", (path,)).fetchone() is None:
                    raise NotFound(f"Key {path} does not exist.")
                # '0' is the character after '/', so this range is exactly the keys below `path`.
                rows = conn.execute(
                    "SELECT path FROM keys WHERE path > ? AND path < ?", (prefix, prefix[:-1] + "0")
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            below = sorted((p for (p,) in rows), key=lambda p: (p.count("/"), p))
            return [path] + below

        return self._run(read)  # type: ignore[return-value]

    # -- writes -------------------------------------------------------------------------------
    def commit(self, ops: Sequence[Op]) -> None:
        check_ops(ops)

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (zxid,) = conn.execute(
                    "UPDATE meta SET value = value + 1 WHERE name = 'zxid' RETURNING value"
                ).fetchone()
                for op in ops:
                    _apply(conn, op, zxid)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        try:
            self._run(apply)
        finally:
            # Whatever the outcome: a read view on this store catches up before its next read.
            self.commits += 1
        self._wake.set()

    # -- watches ------------------------------------------------------------------------------
    def watch(self, paths: Iterable[str], callback: Callable[[str], None], children: bool = False) -> WatchHandle:
        paths = [check_path(p) for p in paths]
        # The starting point is read here, before returning, so that a change committed right
        # after watch() returns is reported even if the watcher thread has not looked yet.
        baseline = self._run(lambda conn: _read_state(conn, paths, snapshot=True))
        if children:
            missing = [p for p in paths if baseline[p] is None]  # type: ignore[index]
            if missing:
                raise NotFound(f"Cannot watch the children of a missing key ({', '.join(missing)}).")
        watch = _Watch(paths, children, callback, baseline)  # type: ignore[arg-type]
        with self._lock:
            self._watch_ids += 1
            wid = self._watch_ids
            self._watches[wid] = watch
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_loop, name="pvc-embedded-watch", daemon=True)
                self._watcher.start()
        self._wake.set()

        def cancel() -> None:
            watch.active = False
            with self._lock:
                self._watches.pop(wid, None)

        return WatchHandle(cancel)

    def _watch_loop(self) -> None:
        conn = self._connect()
        last_version = None
        while not self._closed:
            self._wake.wait(_POLL)
            self._wake.clear()
            with self._lock:
                watches = list(self._watches.values())
            if not watches:
                continue
            try:
                # Commits by any other connection (this one never writes) change data_version. A
                # new watch is compared once in any case: its starting point was read before it
                # was registered, maybe after this thread's last look.
                data_version = conn.execute("PRAGMA data_version").fetchone()[0]
                if data_version == last_version and all(w.compared for w in watches):
                    continue
                state = _read_state(conn, sorted({p for w in watches for p in w.paths}))
                last_version = data_version
            except sqlite3.Error:
                continue  # the file is busy or gone for a moment; look again on the next round
            for watch in watches:
                watch.compared = True
                for path in watch.paths:
                    old, new = watch.seen.get(path), state[path]
                    if old == new:
                        continue
                    watch.seen[path] = new
                    if watch.active and (watch.children or _data(old) != _data(new)):
                        try:
                            watch.callback(path)
                        except Exception:  # a broken callback must not end every other watch
                            log.exception("A watch callback for %s failed", path)
        conn.close()

    # -- change feed, for a read view (pvc.lib.store.view) ---------------------------------------
    def zxid(self) -> int:
        """The number of the last transaction committed to the file, by any process."""
        return self._run(lambda conn: conn.execute("SELECT value FROM meta WHERE name = 'zxid'").fetchone()[0])  # type: ignore[return-value]

    def ensure_change_index(self) -> None:
        """Index the keys by the transaction that last changed them (or their children), so that
        :meth:`changes_since` reads only what changed. Made once per file, by the first read view;
        every writer keeps it current from then on."""

        def make(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'keys_pzxid'").fetchone() is not None:
                return
            conn.executescript("BEGIN IMMEDIATE;"
                               "CREATE INDEX IF NOT EXISTS keys_mzxid ON keys (mzxid);"
                               "CREATE INDEX IF NOT EXISTS keys_pzxid ON keys (pzxid);"
                               "COMMIT;")

        self._run(make)

    def snapshot(self, roots: Sequence[str]) -> tuple[int, list[tuple[str, str, str, int]]]:
        """(zxid, [(path, parent, value, version)]) of every key of the subtrees ``roots``, read
        in one transaction: the tree exactly as it was after transaction zxid."""

        def read(conn: sqlite3.Connection) -> tuple[int, list[tuple[str, str, str, int]]]:
            conn.execute("BEGIN")
            try:
                (zxid,) = conn.execute("SELECT value FROM meta WHERE name = 'zxid'").fetchone()
                rows: list[tuple[str, str, str, int]] = []
                for root in roots:
                    rows += conn.execute(
                        "SELECT path, parent, value, version FROM keys WHERE path = ? OR (path > ? AND path < ?)",
                        (root, root + "/", root + "0"),
                    ).fetchall()
            finally:
                conn.execute("COMMIT")
            return zxid, rows

        return self._run(read)  # type: ignore[return-value]

    def changes_since(
        self, zxid: int, known_children: Callable[[str], Iterable[str] | None]
    ) -> tuple[int, list[tuple[str, str, str, int]], dict[str, list[str]]]:
        """What changed after transaction ``zxid``, read in one transaction: (the last zxid, the
        keys written or created since [(path, parent, value, version)], and the full child list
        of each key that lost a child since {parent: [names]}).

        Deletions leave no row, so they are found through the parents: a key whose child version
        (pzxid) moved on and which now has fewer children than ``known_children(parent)`` (the
        names the caller knew; None for a key it does not follow) plus those created since is
        listed in full, and so is "/" whenever a top-level key came or went. Without
        :meth:`ensure_change_index` this reads the whole table."""

        def read(conn: sqlite3.Connection) -> tuple[int, list[tuple[str, str, str, int]], dict[str, list[str]]]:
            conn.execute("BEGIN")
            try:
                (last,) = conn.execute("SELECT value FROM meta WHERE name = 'zxid'").fetchone()
                if last == zxid:
                    return last, [], {}
                rows = conn.execute(
                    "SELECT path, parent, value, version FROM keys WHERE mzxid > ?", (zxid,)
                ).fetchall()
                created: dict[str, set[str]] = {}
                for path, up, _value, _version in rows:
                    created.setdefault(up, set()).add(path.rsplit("/", 1)[1])
                lists: dict[str, list[str]] = {}
                for (up,) in conn.execute("SELECT path FROM keys WHERE pzxid > ?", (zxid,)).fetchall():
                    known = known_children(up)
                    if known is None:
                        continue  # not a key the caller follows
                    (count,) = conn.execute("SELECT count(*) FROM keys WHERE parent = ?", (up,)).fetchone()
                    expected = set(known) | created.get(up, set())
                    # The top-level keys are always listed (a handful): a caller follows only some.
                    if up == "/" or count != len(expected):
                        names = conn.execute("SELECT path FROM keys WHERE parent = ?", (up,)).fetchall()
                        lists[up] = sorted(p.rsplit("/", 1)[1] for (p,) in names)
            finally:
                conn.execute("COMMIT")
            return last, rows, lists

        return self._run(read)  # type: ignore[return-value]

    # -- lifecycle ----------------------------------------------------------------------------
    def describe(self) -> str:
        return f"embedded store {self.path}"

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=2)
        with self._lock:
            connections = list(self._connections)
            self._connections = weakref.WeakSet()
        for held in connections:
            held.close()


class _Held:
    """A thread's connection, closed when the thread ends (its thread-local storage goes) or the
    store closes. (sqlite3 connections cannot be weakly referenced; this holder can.)"""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def close(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error:
            pass

    def __del__(self) -> None:
        self.close()


class _Watch:
    def __init__(self, paths: list[str], children: bool, callback: Callable[[str], None],
                 seen: dict[str, tuple[int, int] | None]):
        self.paths = paths
        self.children = children
        self.callback = callback
        #: (mzxid, pzxid) of each path as last reported, None when absent; only the watcher
        #: thread changes it after registration.
        self.seen = seen
        self.active = True
        #: Whether the watcher thread has compared it with the tree at least once.
        self.compared = False


def _wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode. When several processes open a new file at once, switching the
    mode can fail with "database is locked" at once, without SQLite's busy wait; wait here."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _read_state(
    conn: sqlite3.Connection, paths: Sequence[str], snapshot: bool = False
) -> dict[str, tuple[int, int] | None]:
    """(mzxid, pzxid) of each path, None for a missing one."""
    state: dict[str, tuple[int, int] | None] = dict.fromkeys(paths)
    if snapshot:
        conn.execute("BEGIN")
    try:
        for i in range(0, len(paths), _CHUNK):
            chunk = list(paths[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            for path, mzxid, pzxid in conn.execute(
                f"SELECT path, mzxid, pzxid FROM keys WHERE path IN ({marks})", chunk
            ):
                state[path] = (mzxid, pzxid)
    finally:
        if snapshot:
            conn.execute("COMMIT")
    return state


def _data(state: tuple[int, int] | None) -> int | None:
    return None if state is None else state[0]


def _apply(conn: sqlite3.Connection, op: Op, zxid: int) -> None:
    """Check one operation's condition and apply it inside the open transaction."""
    row = conn.execute("SELECT version FROM keys WHERE path = ?", (op.path,)).fetchone()
    if isinstance(op, Create):
        if row is not None:
            raise AlreadyExists(f"Key {op.path} already exists.")
        up = parent(op.path)
        if conn.execute("SELECT 1 FROM keys WHERE path = ?", (up,)).fetchone() is None:
            raise NotFound(f"Cannot create {op.path}: {up} does not exist.")
        conn.execute(
            "INSERT INTO keys (path, parent, value, mzxid, pzxid) VALUES (?, ?, ?, ?, ?)",
            (op.path, up, op.value, zxid, zxid),
        )
        conn.execute("UPDATE keys SET pzxid = ? WHERE path = ?", (zxid, up))
        return
    if row is None:
        raise NotFound(f"Key {op.path} does not exist.")
    if op.version is not None and row[0] != op.version:
        raise Conflict(f"Key {op.path} was changed by somebody else (version {row[0]}, expected {op.version}).")
    if isinstance(op, Set):
        conn.execute(
            "UPDATE keys SET value = ?, version = version + 1, mzxid = ? WHERE path = ?", (op.value, zxid, op.path)
        )
    elif isinstance(op, Delete):
        if conn.execute("SELECT 1 FROM keys WHERE parent = ? LIMIT 1", (op.path,)).fetchone():
            raise Conflict(f"Key {op.path} still has children.")
        conn.execute("DELETE FROM keys WHERE path = ?", (op.path,))
        conn.execute("UPDATE keys SET pzxid = ? WHERE path = ?", (zxid, parent(op.path)))
    elif not isinstance(op, Check):
        raise TypeError(f"unknown store operation {op!r}")
