"""The ZooKeeper engine, through one long-lived kazoo session per process.

kazoo reconnects by itself (and opens a new session after an expiry); while it is away every call
fails fast with Unavailable instead of hanging, so `pvc serve` answers 503 and recovers without a
restart. kazoo's exceptions never leave this module: they are translated at the boundary.

Two faults kazoo does not handle by itself (issue 11, items 5 and 12):

- A write that was sent and not answered (connection lost, or no answer within the deadline) may
  still be applied later: ZooKeeper keeps the queued transaction. Such a commit raises
  OutcomeUnknown, never the plain Unavailable that means "nothing was done".
- A server that hangs (stopped, swapping, wedged) without closing its connections is noticed by
  kazoo only through an unanswered ping, and kazoo sends no ping while requests keep going out:
  under steady traffic it would stay on the hung server for as long as it hangs. So a request that
  gets no answer within the deadline makes us drop that connection (see ``_abandon``): kazoo then
  reconnects to another server of the ensemble with the same session, and reads are tried once
  more there.

One module on purpose: the failover from a silent server (_abandon) shares the connection
state and its condition with every call, so it stays beside them.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import namedtuple
from typing import Callable, Iterable, Sequence

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    SessionExpiredError,
    UnimplementedError,
    ZookeeperError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Watch, int_struct, write_string
from kazoo.retry import KazooRetry, RetryFailedError

from pvc.lib.errors import AlreadyExists, Conflict, NotFound, OutcomeUnknown, PvcError, Unavailable
from pvc.lib.schema import check_path
from pvc.lib.store import zk_multiread
from pvc.lib.store.base import Check, Create, Delete, Entry, Op, Set, Store, WatchHandle, check_ops

log = logging.getLogger("pvc.store")

#: Keys per multiRead request: keeps each request and answer far below ZooKeeper's 1 MB limit
#: for requests (jute.maxbuffer) even with long paths.
MULTIREAD_BATCH = 1000

#: After having been connected, how long a call waits for kazoo to reconnect before failing.
RECONNECT_GRACE = 0.5

#: kazoo's errors that mean the connection went away while a request was outstanding.
LOST = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)


class _NoAnswer(Exception):
    """A request was sent but not answered within the store's deadline (internal)."""


class ZooKeeperStore(Store):
    engine = "zookeeper"
    #: Commits sent through this object (applied or not): a read view on it catches up when it grows.
    commits = 0

    def __init__(self, hosts: Sequence[str], chroot: str | None = None, timeout: float = 5.0):
        super().__init__()
        self.hosts = ",".join(hosts)
        self.chroot = chroot
        self.path_prefix = len((chroot or "").rstrip("/").encode("utf-8"))
        self.timeout = timeout
        # The connection state, as kazoo's listener reports it, under one condition so that a call
        # can wait for "connected, and not on a connection we gave up on" (see _abandon).
        self._state = threading.Condition()
        self._is_connected = False
        self._live_socket: object | None = None  # kazoo's socket of the current connection
        self._abandoned: object | None = None  # a socket we dropped for not answering
        self._ever_connected = False
        self._closing = False
        self._multiread = True
        self.client = KazooClient(
            hosts=self.hosts + (chroot or ""),
            timeout=10.0,
            # Reconnect quickly after an outage: at most ~1 s between attempts, forever.
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=1.5, max_delay=1.0),
            # kazoo's recipes (the watches) retry their reads with this; its default retries for
            # an hour, which would let a wait outlive its deadline by far during an outage.
            command_retry=KazooRetry(max_tries=3, delay=0.1, backoff=2, max_delay=1.0, deadline=timeout),
        )
        self.client.add_listener(self._on_state)
        # Connect in the background: a server that starts while ZooKeeper is down still starts,
        # answers 503 meanwhile, and serves as soon as the session is up.
        self.client.start_async()

    def _on_state(self, state: str) -> None:
        # Called on kazoo's connection thread, synchronously, right after it connected (its socket
        # is then the new connection's) or lost the connection: record and log only, never block.
        with self._state:
            if state == KazooState.CONNECTED:
                self._ever_connected = True
                self._is_connected = True
                self._live_socket = getattr(self.client._connection, "_socket", None)
            else:
                self._is_connected = False
            self._state.notify_all()
        if state == KazooState.CONNECTED:
            log.info("Connected to ZooKeeper at %s", self.hosts)
        elif not self._closing:  # else our own close(), not an outage
            log.warning("Lost the connection to ZooKeeper at %s (%s); reconnecting", self.hosts, state.lower())

    def _usable(self) -> bool:
        return self._is_connected and (self._abandoned is None or self._live_socket is not self._abandoned)

    def _ready(self) -> object | None:
        """Wait until connected, a little (the first connection: up to the timeout); returns the
        connection's socket, which identifies the connection the next request goes out on."""
        with self._state:
            if not self._usable():
                wait = RECONNECT_GRACE if self._ever_connected else self.timeout
                if not self._state.wait_for(self._usable, wait):
                    raise Unavailable(f"ZooKeeper at {self.hosts} is unreachable.")
            return self._live_socket

    def _result(self, async_result):  # type: ignore[no-untyped-def]
        try:
            return async_result.get(timeout=self.timeout)
        except KazooTimeoutError:
            raise _NoAnswer() from None

    def _abandon(self, sock: object | None) -> None:
        """Drop the connection ``sock`` (which left a request unanswered), so that kazoo moves the
        session to another server of the ensemble (issue 11, item 12).

        kazoo has no public call for this. Its connection thread (ConnectionHandler._connect_attempt
        in kazoo/protocol/connection.py) selects on its socket; a socket that we shut down reads
        as end-of-file at once, which kazoo handles exactly like a server that closed the
        connection: every outstanding request fails with ConnectionLoss, the state goes to
        SUSPENDED and it connects to the next host of its list with the same session id and
        password, so the session (and its ephemeral keys and watches) survives. shutdown() rather
        than close(): the descriptor stays valid while kazoo's thread may be selecting on it, and
        kazoo closes it itself. The identity check makes sure we only ever drop the connection the
        request went out on, never the new one kazoo may already have made.

        kazoo would try the hung server again when its shuffled host list comes round to it, and a
        connect to a stopped process hangs for session timeout / number of hosts; so the hung
        server is moved to the end of the client's host list (what KazooClient.set_hosts does,
        without parsing a string) and the order is no longer shuffled.

        A server that is merely slow also loses its clients this way; they come back to it, or go
        to another, at the cost of one reconnect: cheap next to serving 503s from a hung one.
        """
        with self._state:
            if sock is None or sock is not self._live_socket or sock is self._abandoned:
                return  # already reconnected elsewhere, or already being dropped
            self._abandoned = sock
        try:
            peer = sock.getpeername()  # type: ignore[attr-defined]
        except OSError:
            peer = None
        log.warning("ZooKeeper server %s did not answer within %g s; moving to another server",
                    _where(peer), self.timeout)
        if peer is not None:
            self._try_others_first(peer)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        except OSError:
            pass  # kazoo closed it meanwhile: it is reconnecting anyway

    def _try_others_first(self, peer: tuple) -> None:
        hosts = list(self.client.hosts)
        if len(hosts) < 2:
            return
        hung = [h for h in hosts if h[1] == peer[1] and _names(h[0], peer[0])]
        if hung:
            self.client.hosts = [h for h in hosts if h not in hung] + hung
            self.client.randomize_hosts = False

    def _call(self, fn: Callable[[], object], path: str | None = None, write: bool = False) -> object:
        """Run one batch, translating kazoo's errors (naming ``path``). A read is tried once more
        after a lost connection or an unanswered request (on another server, see _abandon); a
        write never is: once sent, its outcome is unknown (OutcomeUnknown)."""
        for attempt in (1, 2):
            sock = self._ready()  # nothing sent yet: a failure here is a plain Unavailable
            self.round_trips += 1
            try:
                return fn()
            except ConnectionClosedError:
                # kazoo refuses to queue on a closed client: nothing was sent.
                raise Unavailable(f"Lost the connection to ZooKeeper at {self.hosts}: ConnectionClosedError.") from None
            except (_NoAnswer, *LOST) as e:
                if isinstance(e, _NoAnswer):
                    self._abandon(sock)
                    what = f"did not answer within {self.timeout:g} s"
                else:
                    what = f"lost the connection ({type(e).__name__})"
                if write:
                    raise OutcomeUnknown(f"ZooKeeper at {self.hosts} {what} during a write. "
                                         + OutcomeUnknown.ADVICE) from None
                if attempt == 2:
                    raise Unavailable(f"ZooKeeper at {self.hosts} {what}.") from None
            except KazooException as e:
                raise _translate(e, path) from None
        raise AssertionError("unreachable")

    # -- reads --------------------------------------------------------------------------------
    def get_many(self, paths: Sequence[str]) -> dict[str, Entry | None]:
        paths = list(dict.fromkeys(paths))
        for path in paths:
            check_path(path)

        def read() -> dict[str, Entry | None]:
            if self._multiread:
                try:
                    return self._multiread_many(paths)
                except UnimplementedError:
                    self._multiread = False  # a server before 3.6: one request per key instead
            # Pipelined: every request is sent before the first answer is awaited.
            pending = [(path, self.client.get_async(path)) for path in paths]
            return {path: self._entry(path, lambda r=result: self._result(r)) for path, result in pending}

        return self._call(read)  # type: ignore[return-value]

    def _multiread_many(self, paths: list[str]) -> dict[str, Entry | None]:
        """Read ``paths`` with one multiRead request per batch, all sent before any is awaited."""
        batches = [paths[i : i + MULTIREAD_BATCH] for i in range(0, len(paths), MULTIREAD_BATCH)]
        pending = [(batch, zk_multiread.send(self.client, batch)) for batch in batches]
        found: dict[str, Entry | None] = {}
        for batch, result in pending:
            answers = self._result(result)
            for path, answer in zip(batch, answers):
                found[path] = self._entry(path, lambda a=answer: a)
        return found

    @staticmethod
    def _entry(path: str, answer: Callable[[], object]) -> Entry | None:
        """An Entry from a getData answer (bytes, stat), None for a missing key."""
        try:
            value = answer()
            if isinstance(value, Exception):
                raise value
        except NoNodeError:
            return None
        data, stat = value  # type: ignore[misc]
        return Entry((data or b"").decode("utf-8"), stat.version)

    def children(self, path: str) -> list[str]:
        check_path(path)
        names = self._call(lambda: self._result(self.client.get_children_async(path)), path)
        return sorted(names)  # type: ignore[arg-type]

    def subtree(self, path: str) -> list[str]:
        check_path(path)

        def walk() -> list[str]:
            found, level = [path], [path]
            while level:  # one pipelined batch per depth level
                pending = [(p, self.client.get_children_async(p)) for p in level]
                level = []
                for p, result in pending:
                    try:
                        names = self._result(result)
                    except NoNodeError:
                        if p == path:
                            raise
                        continue  # deleted meanwhile
                    level.extend(f"{p.rstrip('/')}/{name}" for name in sorted(names))
                found.extend(level)
            return found

        return self._call(walk, path)  # type: ignore[return-value]

    # -- writes -------------------------------------------------------------------------------
    def commit(self, ops: Sequence[Op]) -> None:
        check_ops(ops, self.path_prefix)

        def apply() -> None:
            txn = self.client.transaction()
            for op in ops:
                if isinstance(op, Create):
                    txn.create(op.path, op.value.encode("utf-8"))
                elif isinstance(op, Set):
                    txn.set_data(op.path, op.value.encode("utf-8"), -1 if op.version is None else op.version)
                elif isinstance(op, Delete):
                    txn.delete(op.path, -1 if op.version is None else op.version)
                elif isinstance(op, Check):
                    txn.check(op.path, op.version)
                else:
                    raise TypeError(f"unknown store operation {op!r}")
            # No answer or a lost connection: _call raises OutcomeUnknown, never a plain Unavailable.
            results = self._result(txn.commit_async())
            # kazoo returns failures instead of raising them (the original's silent-write bug L1).
            for op, result in zip(ops, results):
                if isinstance(result, Exception) and not isinstance(result, RolledBackError):
                    raise _translate(result, op.path)

        try:
            self._call(apply, write=True)
        finally:
            self.commits += 1

    # -- watches ------------------------------------------------------------------------------
    def watch(self, paths: Iterable[str], callback: Callable[[str], None], children: bool = False) -> WatchHandle:
        paths = [check_path(p) for p in paths]
        state = {"active": True}

        def data_watcher(path: str) -> Callable[..., bool]:
            first = [True]

            def fire(data: bytes | None, stat: object, event: object = None) -> bool:
                if not state["active"]:
                    return False  # tells kazoo to drop this watch
                if first[0]:
                    first[0] = False  # kazoo calls once at registration; we only report changes
                else:
                    callback(path)
                return True

            return fire

        def children_watcher(path: str, first: list[bool]) -> Callable[..., bool]:

            def fire(names: list[str]) -> bool:
                if not state["active"]:
                    return False
                if first[0]:
                    first[0] = False
                else:
                    callback(path)
                return True

            return fire

        self._ready()
        recipes: list[object] = []
        try:
            for path in paths:
                recipes.append(self.client.DataWatch(path, data_watcher(path)))
                if children:
                    first = [True]
                    recipes.append(self.client.ChildrenWatch(path, children_watcher(path, first),
                                                             allow_session_lost=True))
                    if first[0]:
                        # kazoo calls the function at registration unless the key is missing, in
                        # which case it gives up silently: report it as the embedded engine does.
                        raise NoNodeError()
        except (ConnectionLoss, SessionExpiredError, ConnectionClosedError, RetryFailedError):
            state["active"] = False
            self._drop(recipes)
            raise Unavailable(f"Lost the connection to ZooKeeper at {self.hosts}.") from None
        except NoNodeError:
            state["active"] = False
            self._drop(recipes)
            raise NotFound(f"Cannot watch the children of a missing key ({path}).") from None

        def cancel() -> None:
            state["active"] = False
            self._drop(recipes)

        return WatchHandle(cancel)

    def _drop(self, recipes: list[object]) -> None:
        """Stop kazoo's watch recipes for good. kazoo has no public way to: a recipe stops only
        when its function next fires and returns False, and until then its watcher stays
        registered with the client (and is re-armed after each reconnection). So the recipe is
        marked stopped and its watcher and session listener are removed from the client."""
        for recipe in recipes:
            recipe._stopped = True  # type: ignore[attr-defined]
            # Not None: a change being delivered right now still calls it (kazoo's own lock cannot
            # be taken here, a watch may be cancelled from its own callback); False ends it.
            recipe._func = _stopped  # type: ignore[attr-defined]
            self.client.remove_listener(recipe._session_watcher)  # type: ignore[attr-defined]
            # The client keys its watchers by the server's path, with the chroot.
            path = (self.client.chroot or "") + recipe._path  # type: ignore[attr-defined]
            for table in (self.client._data_watchers, self.client._child_watchers):
                watchers = table.get(path)
                if watchers is not None:
                    watchers.discard(recipe._watcher)  # type: ignore[attr-defined]
                    if not watchers:
                        table.pop(path, None)

    # -- change feed, for a read view (pvc.lib.store.view) ---------------------------------------
    @property
    def connected(self) -> bool:
        """Whether the session is connected (and not on a connection given up for silence)."""
        return self._usable()

    def on_connection(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(True)`` whenever the session is (re)connected and ``listener(False)``
        whenever the connection is lost, on kazoo's connection thread (it must not block);
        returns a function that stops it."""

        def relay(state: str) -> None:
            listener(state == KazooState.CONNECTED)

        self.client.add_listener(relay)
        return lambda: self.client.remove_listener(relay)

    def on_tree_event(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(path)`` for every change notification this session receives (the
        persistent watches of :meth:`add_tree_watch` among them), on kazoo's connection thread
        as the notification is read: so before the answer to any request sent after the change
        is delivered (ZooKeeper sends a session its notifications in order with its answers).
        It must not block. Returns a function that stops it.

        kazoo (2.11) neither offers persistent watches nor hands on a notification for a path it
        has no one-shot watcher of; so the connection's reader of notifications is wrapped here
        (``ConnectionHandler._read_watch_event``, kazoo/protocol/connection.py) and kazoo's own
        handling still follows. The handler lives as long as the client: once is enough."""
        with self._state:
            listeners = getattr(self, "_tree_listeners", None)
            if listeners is None:
                listeners = self._tree_listeners = []
                connection = self.client._connection
                original = connection._read_watch_event
                client = self.client

                def read_watch_event(buffer: bytes, offset: int) -> object:
                    try:
                        watch, _ = Watch.deserialize(buffer, offset)
                        path = client.unchroot(watch.path)
                        for each in list(listeners):
                            each(path)
                    except Exception:  # never let a listener break kazoo's connection thread
                        log.exception("A change listener failed")
                    return original(buffer, offset)

                connection._read_watch_event = read_watch_event
            listeners.append(listener)

        def stop() -> None:
            with self._state:
                if listener in listeners:
                    listeners.remove(listener)

        return stop

    def add_tree_watch(self, path: str) -> None:
        """Have this session notified of every creation, change and deletion in the subtree
        ``path`` (a persistent recursive watch, ZooKeeper 3.6 and later; ``path`` need not exist
        yet). It lasts as long as the connection: add it again after a reconnection."""
        check_path(path)
        full = (self.client.chroot or "") + path if path != "/" else (self.client.chroot or "/")
        self._call(lambda: self._result(self._send(_AddWatch(full, _PERSISTENT_RECURSIVE))), path)

    def sync(self) -> None:
        """One round trip through the leader: once it returns, every change committed before the
        call has been notified to this session (see :meth:`on_tree_event`). Unavailable when the
        server does not answer within the deadline (the connection is then given up)."""
        self._call(lambda: self._result(self.client.sync_async("/")))

    def read_tree(self, roots: Sequence[str]) -> dict[str, tuple[Entry, list[str]]]:
        """Every key of the subtrees ``roots`` (missing roots are left out) with its entry and its
        sorted child names: one level at a time, each level in pipelined multiRead requests of a
        getData and a getChildren per key. Not one snapshot: keys changed meanwhile may be read
        before or after their change (a read view follows them through its watch)."""
        for root in roots:
            check_path(root)
        chroot = self.client.chroot or ""

        def walk() -> dict[str, tuple[Entry, list[str]]]:
            found: dict[str, tuple[Entry, list[str]]] = {}
            level = list(roots)
            while level:
                batches = [level[i : i + TREE_BATCH] for i in range(0, len(level), TREE_BATCH)]
                pending = [(batch, self._send(zk_multiread.MultiRead([chroot + p for p in batch], zk_multiread.TREE_OPS))) for batch in batches]
                level = []
                for batch, result in pending:
                    answers = self._result(result)
                    for i, path in enumerate(batch):
                        data, names = answers[2 * i], answers[2 * i + 1]
                        if isinstance(data, NoNodeError) or isinstance(names, NoNodeError):
                            continue  # deleted meanwhile (its deletion is notified)
                        for answer in (data, names):
                            if isinstance(answer, Exception):
                                raise answer
                        value, stat = data
                        children = sorted(names)
                        found[path] = (Entry((value or b"").decode("utf-8"), stat.version), children)
                        level.extend(f"{path}/{name}" for name in children)
            return found

        return self._call(walk)  # type: ignore[return-value]

    def _send(self, request: object) -> object:
        """Queue one request of our own encoding with kazoo's connection; returns its async result."""
        result = self.client.handler.async_result()
        self.client._call(request, result)
        return result

    # -- lifecycle ----------------------------------------------------------------------------
    def describe(self) -> str:
        return f"ZooKeeper at {self.hosts}{self.chroot or ''}"

    def close(self) -> None:
        self._closing = True
        try:
            self.client.stop()
            self.client.close()
        except KazooException:
            pass


def _names(host: str, ip: str) -> bool:
    """Whether the configured ``host`` (a name or an address) is the address ``ip``."""
    if host.strip("[]") == ip:
        return True
    try:
        return any(info[4][0] == ip for info in socket.getaddrinfo(host, None, 0, 0, socket.IPPROTO_TCP))
    except OSError:
        return False


def _where(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "(unknown)"


def _stopped(*_args: object) -> bool:
    """The function of a cancelled kazoo watch recipe: tells kazoo to stop."""
    return False


def _translate(error: Exception, path: str | None = None) -> PvcError:
    where = f" ({path})" if path else ""
    if isinstance(error, NoNodeError):
        return NotFound(f"Key does not exist{where}.")
    if isinstance(error, NodeExistsError):
        return AlreadyExists(f"Key already exists{where}.")
    if isinstance(error, BadVersionError):
        return Conflict(f"Key was changed by somebody else{where}.")
    if isinstance(error, NotEmptyError):
        return Conflict(f"Key still has children{where}.")
    if isinstance(error, (ConnectionLoss, SessionExpiredError, ConnectionClosedError)):
        return Unavailable(f"Lost the connection to ZooKeeper: {type(error).__name__}.")
    if isinstance(error, ZookeeperError):
        return Unavailable(f"ZooKeeper refused the request{where}: {type(error).__name__}.")
    return Unavailable(f"ZooKeeper client error{where}: {type(error).__name__}: {error}")


#: Keys per multiRead of :meth:`ZooKeeperStore.read_tree` (two operations each).
TREE_BATCH = 500
#: ZooKeeper's OpCode.addWatch and AddWatchMode.PERSISTENT_RECURSIVE.
_ADD_WATCH = 106
_PERSISTENT_RECURSIVE = 1


class _AddWatch(namedtuple("_AddWatch", "path mode")):
    """ZooKeeper's addWatch request (3.6 and later), which kazoo 2.11 does not offer."""

    type = _ADD_WATCH

    def serialize(self) -> bytes:
        return bytes(write_string(self.path)) + int_struct.pack(self.mode)

    @classmethod
    def deserialize(cls, data: bytes, offset: int) -> bool:
        return True
