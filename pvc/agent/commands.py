"""Commands to node agents: the agent's side (the caller's is :mod:`pvc.lib.commands`).

A :class:`CommandWorker` watches ``/commands``. For each new entry addressed to this node it
claims the entry with a write at the version it read (exactly one run, even if the entry is seen
twice), hands it to a worker thread, and writes the result into the entry in the same transaction
as the tree change the handler asks for: the tree changes only when the command succeeded.

It claims only when a worker thread is free, so a command waiting its turn is still ``new`` and
its caller can still expire it. An entry whose deadline has passed by this node's clock is marked
``expired`` and never run. Finished entries whose caller went away are deleted after a while.
Handlers run on worker threads, never on a watch callback, and get a :class:`Context` with the
deadline and the agent's ``stopping`` event.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pvc.lib import commands as channel
from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, Conflict, NotFound, PvcError, Timeout, quote
from pvc.lib.store import Delete, Op, Set

log = logging.getLogger("pvc.agent.commands")

#: Seconds after which a finished entry nobody collected (its caller went away) is deleted.
KEEP_FINISHED = 60.0
#: The worker looks at /commands at least this often, in case a notification was lost while the
#: store reconnected; notifications wake it at once otherwise.
RESCAN = 2.0


@dataclass(frozen=True)
class Outcome:
    """What a handler returns when the command succeeded."""

    message: str
    #: JSON-able, handed to the caller as Result.data.
    data: Any = None
    #: Tree changes committed in one transaction together with the command's result.
    ops: tuple[Op, ...] = ()


@dataclass(frozen=True)
class Bounds:
    """How long work on this node may take, and the agent's ``stopping`` event: what running a
    tool needs (:mod:`pvc.agent.ceph_exec`), in a command or in the agent's own calls."""

    node: str
    settings: Settings
    #: time.monotonic() by which the work must be done.
    deadline: float
    #: Set when the agent stops: give up promptly.
    stopping: threading.Event

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def afresh(self, seconds: float) -> "Bounds":
        """Bounds of their own for undoing a half-done change: ``seconds`` from now, and not cut
        short by a stop (the command's own time may be used up, and the undo must finish)."""
        return Bounds(self.node, self.settings, time.monotonic() + seconds, threading.Event())


@dataclass(frozen=True)
class Context(Bounds):
    """What a handler gets besides the command's arguments: its bounds and the cluster."""

    core: Cluster


Handler = Callable[[Context, dict], Outcome]
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn(ctx, args) -> Outcome`` as the handler of command ``name``."""

    def register(fn: Handler) -> Handler:
        if name in HANDLERS:
            raise TypeError(f"command {name!r} has two handlers")
        HANDLERS[name] = fn
        return fn

    return register


@handler("noop")
def noop(ctx: Context, args: dict) -> Outcome:
    """Does nothing, for tests and for checking that a node carries out commands: ``sleep``
    seconds (cut short when the agent stops), then fail with ``fail`` if given, else echo ``echo``."""
    sleep = args.get("sleep", 0)
    if not isinstance(sleep, (int, float)) or isinstance(sleep, bool) or not 0 <= sleep <= 3600:
        raise PvcError("noop: sleep must be a number of seconds from 0 to 3600.")
    if sleep and ctx.stopping.wait(min(sleep, ctx.remaining())):
        raise PvcError(f"Node {quote(ctx.node)} stopped during noop.")
    if sleep > ctx.remaining() and ctx.remaining() == 0:
        raise Timeout(f"noop on node {quote(ctx.node)} ran out of time.")
    if args.get("fail"):
        raise PvcError(str(args["fail"]))
    return Outcome(f"Node {quote(ctx.node)} did nothing, as asked.", {"node": ctx.node, "echo": args.get("echo")})


class CommandWorker:
    """Carries out the commands addressed to one node (``name``)."""

    def __init__(self, core: Cluster, name: str, stopping: threading.Event):
        self.core = core
        self.name = name
        self.stopping = stopping
        self.workers = max(1, core.settings.command_workers)
        self._wake = threading.Event()
        self._busy = 0
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        #: Entries looked at and not ours, or already handed to a thread: not read again.
        self._seen: set[str] = set()
        #: How often each command id was run here (tests check that nothing runs twice).
        self.runs: dict[str, int] = {}
        self._handle = None
        self._thread = threading.Thread(target=self._loop, name=f"pvc-commands-{name}", daemon=True)

    def start(self) -> None:
        """Watch /commands and start dispatching. Raises a PvcError when the store cannot be used."""
        channel.ensure_root(self.core)
        self._handle = self.core.store.watch([schema.COMMANDS], lambda _p: self._wake.set(), children=True)
        self._fail_interrupted()
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop dispatching and wait (up to ``timeout``) for running handlers, which see ``stopping``."""
        self._wake.set()
        if self._handle is not None:
            self._handle.cancel()
        deadline = time.monotonic() + timeout
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.05))
        for thread in list(self._threads):
            thread.join(max(deadline - time.monotonic(), 0.05))

    # -- dispatching ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping.is_set():
            self._wake.wait(RESCAN)
            self._wake.clear()
            if self.stopping.is_set():
                break
            try:
                self._dispatch()
            except PvcError as e:
                log.warning("Node %s could not read its commands: %s", quote(self.name), e.message)

    def _dispatch(self) -> None:
        store = self.core.store
        ids = store.children(schema.COMMANDS)
        self._seen.intersection_update(ids)
        fresh = [i for i in ids if i not in self._seen]
        if not fresh:
            return
        paths = {}
        for command_id in fresh:
            try:
                paths[command_id] = schema.command(command_id)
            except PvcError:
                self._seen.add(command_id)  # not one of ours to read (never written by pvc)
        entries = store.get_many(list(paths.values()))
        now = time.time()
        for command_id, path in paths.items():
            entry = entries[path]
            if entry is None:
                continue
            value = channel.decode(entry.value)
            if value is None or value.get("node") != self.name:
                self._seen.add(command_id)
                continue
            state = value.get("state")
            if state in channel.FINISHED:
                finished = value.get("finished") or value.get("deadline") or 0
                if isinstance(finished, (int, float)) and now - finished > KEEP_FINISHED:
                    self._delete(path, entry.version)
                continue
            if state != channel.NEW:
                continue  # running: one of ours, on a thread
            deadline = value.get("deadline")
            if not isinstance(deadline, (int, float)) or deadline <= now:
                self._write(path, dict(value, state=channel.EXPIRED, finished=now), entry.version)
                continue
            with self._lock:
                if self._busy >= self.workers:
                    return  # the rest wait, unclaimed, until a worker is free
            claimed = dict(value, state=channel.RUNNING, started=now)
            try:
                store.commit([Set(path, channel.encode(claimed), entry.version)])
            except (Conflict, NotFound):
                continue  # expired or deleted by its caller meanwhile
            self._seen.add(command_id)
            self.runs[command_id] = self.runs.get(command_id, 0) + 1
            with self._lock:
                self._busy += 1
            thread = threading.Thread(target=self._run, args=(path, claimed, entry.version + 1, deadline - now),
                                      name=f"pvc-command-{value.get('command')}", daemon=True)
            self._threads.add(thread)
            thread.start()

    def _fail_interrupted(self) -> None:
        """Commands this node was running when its agent stopped can no longer finish: say so."""
        store = self.core.store
        paths = []
        for command_id in store.children(schema.COMMANDS):
            try:
                paths.append(schema.command(command_id))
            except PvcError:
                pass  # never written by pvc
        for path, entry in store.get_many(paths).items():
            value = channel.decode(entry.value) if entry else None
            if value and value.get("node") == self.name and value.get("state") == channel.RUNNING:
                self._write(path, dict(value, state=channel.FAILED, finished=time.time(),
                                       message=f"Node {quote(self.name)}'s agent restarted while carrying out "
                                               f"{quote(value.get('command'))}; its outcome is unknown."),
                            entry.version)

    # -- running --------------------------------------------------------------------------------
    def _run(self, path: str, value: dict, version: int, seconds: float) -> None:
        name = str(value.get("command"))
        args = value.get("args") if isinstance(value.get("args"), dict) else {}
        ctx = Context(node=self.name, settings=self.core.settings, deadline=time.monotonic() + seconds,
                      stopping=self.stopping, core=self.core)
        started = time.monotonic()
        ops: Sequence[Op] = ()
        try:
            fn = HANDLERS.get(name)
            if fn is None:
                raise PvcError(f"Node {quote(self.name)} does not know the command {quote(name)}.")
            outcome = fn(ctx, args)
            result = dict(value, state=channel.DONE, message=outcome.message, data=outcome.data)
            ops = tuple(outcome.ops)
        except PvcError as e:
            result = dict(value, state=channel.FAILED, message=e.message, error=e.kind)
        except Exception as e:  # a handler's bug must not end the worker; its caller learns of it
            log.exception("Command %s on node %s failed unexpectedly", quote(name), quote(self.name))
            result = dict(value, state=channel.FAILED,
                          message=f"Internal error on node {quote(self.name)} running {quote(name)}: "
                                  f"{type(e).__name__}: {e}")
        result["finished"] = time.time()
        result["seconds"] = round(time.monotonic() - started, 6)
        try:
            self._commit(path, result, version, ops)
        finally:
            with self._lock:
                self._busy -= 1
                self._threads.discard(threading.current_thread())
            self._wake.set()
        if result["state"] == channel.FAILED:
            log.warning("Command %s on node %s failed: %s", quote(name), quote(self.name), result["message"])

    def _commit(self, path: str, result: dict, version: int, ops: Sequence[Op]) -> None:
        store = self.core.store
        try:
            store.commit([*ops, Set(path, channel.encode(result), version)])
            return
        except (Conflict, AlreadyExists, NotFound) as e:
            if ops and result["state"] == channel.DONE and not store.exists(path):
                # Its caller gave up and deleted the entry, but the change happened: record it.
                try:
                    store.commit(list(ops))
                except PvcError as e2:
                    log.error("Command %s succeeded on node %s but the tree could not be updated: %s", path,
                              quote(self.name), e2.message)
                return
            if not ops:
                log.warning("Node %s could not report command %s: %s", quote(self.name), path, e.message)
                return
            failed = dict(result, state=channel.FAILED, data=None,
                          message=f"{result.get('message')}; but the cluster tree could not be updated: {e.message}")
        except PvcError as e:
            log.warning("Node %s could not report command %s: %s", quote(self.name), path, e.message)
            return
        try:
            store.commit([Set(path, channel.encode(failed), version)])
        except PvcError as e:
            log.warning("Node %s could not report command %s: %s", quote(self.name), path, e.message)

    def _write(self, path: str, value: dict, version: int) -> None:
        try:
            self.core.store.commit([Set(path, channel.encode(value), version)])
        except (Conflict, NotFound):
            pass

    def _delete(self, path: str, version: int) -> None:
        try:
            self.core.store.commit([Delete(path, version)])
        except (Conflict, NotFound):
            pass
