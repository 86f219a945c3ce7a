"""Commands to node agents: the caller's side (DESIGN.md, "Commands to agents").

Some operations must be carried out by a node: Ceph changes run on the primary coordinator, or
on the node that owns an OSD. Each request creates its own entry, ``/commands/<id>``, one JSON
value addressed to the node that must run it and carrying a deadline. That node's agent claims
it with a write at the version it read (so exactly one run), carries it out and writes the result
into the entry (in the same transaction as the tree change it makes, :mod:`pvc.agent.commands`).
The caller waits on a watch of the entry, reads the result and deletes the entry.

The original used one global slot, ``/ceph/cmd``, with fixed sleeps, and lost commands under load
(original-behaviour.md §3.9). Here:

- Nothing is lost or run twice: every request has its own entry, and claiming is conditional.
- A command not started by its deadline is never run: the caller marks it ``expired`` with a write
  at the version it read, which makes a later claim fail; an agent also refuses an entry whose
  deadline has passed by its own clock, in case the caller is gone.
- A node that is not alive fails the request at once; a node that stops while it holds a command
  fails it as soon as its daemon state or keepalive says so, not at the deadline.
- Waiting requests cannot starve ``pvc serve``: at most ``command_waiters`` wait at once per
  process, and more are answered "unavailable" (503) at once.

An entry's ``state`` goes ``new`` → ``running`` → ``done`` | ``failed``, or ``new`` → ``expired``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

from pvc.lib import schema
from pvc.lib.core import Cluster, not_initialised
from pvc.lib.errors import (
    AlreadyExists,
    CommandFailed,
    Conflict,
    InvalidArgument,
    InvalidState,
    NotFound,
    PvcError,
    Timeout,
    Unavailable,
    quote,
)
from pvc.lib.node_records import liveness, read_node_entries
from pvc.lib.store import Create, Delete, Entry, Set

NEW, RUNNING, DONE, FAILED, EXPIRED = "new", "running", "done", "failed", "expired"
FINISHED = (DONE, FAILED, EXPIRED)
#: Seconds a caller keeps waiting past the deadline for a command its node already started: the
#: agent bounds the command by the deadline, and needs a moment to write its result.
REPORT_GRACE = 5.0
_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)


@dataclass(frozen=True)
class Result:
    """What a node reported for a command that succeeded."""

    message: str
    data: Any = None


def new_id() -> str:
    return uuid.uuid4().hex


def encode(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> dict[str, Any] | None:
    """An entry's JSON object, or None when the value is not one (never written by pvc)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def ensure_root(core: Cluster) -> None:
    """Create /commands on a tree initialised before it existed."""
    store = core.store
    if store.exists(schema.COMMANDS):
        return
    if not store.exists(schema.NODES):
        raise not_initialised(core)
    try:
        store.commit([Create(schema.COMMANDS, "")])
    except AlreadyExists:
        pass


#: Per cluster handle: how many more requests may wait for a command.
_slots: "weakref.WeakKeyDictionary[Cluster, threading.BoundedSemaphore]" = weakref.WeakKeyDictionary()
_slots_lock = threading.Lock()


def _slot(core: Cluster) -> threading.BoundedSemaphore:
    with _slots_lock:
        slot = _slots.get(core)
        if slot is None:
            slot = _slots[core] = threading.BoundedSemaphore(core.settings.command_waiters)
        return slot


def primary(core: Cluster) -> str:
    """The name of the primary coordinator, which runs the cluster-wide Ceph commands."""
    try:
        name = core.store.get(schema.PRIMARY_NODE).value
    except NotFound:
        raise not_initialised(core) from None
    if not name or name == schema.NO_PRIMARY:
        raise InvalidState("No node is the primary coordinator, so no node can carry out the command; "
                           "start a coordinator's node agent.")
    return name


def run_on_primary(core: Cluster, command: str, args: Mapping[str, Any], timeout: float | None = None) -> Result:
    """:func:`run` on the primary coordinator."""
    return run(core, primary(core), command, args, timeout)


def run(core: Cluster, node: str, command: str, args: Mapping[str, Any], timeout: float | None = None) -> Result:
    """Have ``node``'s agent carry out ``command`` with ``args`` and wait for its result.

    Returns the node's Result. Raises CommandFailed with the node's reason when the command
    failed, Timeout when it did not finish within ``timeout`` seconds (default: the
    ``command_timeout`` setting), InvalidState when the node is not alive (at once, or as soon as
    it stops while it holds the command), and Unavailable when too many requests already wait.
    """
    schema.validate_name("node", node)
    if not _COMMAND_NAME.fullmatch(command):
        raise InvalidArgument(f"Invalid command name {quote(command)}.")
    timeout = core.settings.command_timeout if timeout is None else timeout
    slot = _slot(core)
    if not slot.acquire(blocking=False):
        raise Unavailable(f"Too many requests are waiting for node commands ({core.settings.command_waiters}, the "
                          "limit set by pvc.api.limits.command_waiters); try again shortly.")
    try:
        return _run(core, node, command, dict(args), timeout)
    finally:
        slot.release()


def _node_problem(core: Cluster, node: str) -> str | None:
    entries = read_node_entries(core, [node], ("daemonstate", "keepalive", "problem"))
    if node not in entries:
        return "it does not exist"
    values = {field: (e.value if e is not None else None) for field, e in entries[node].items()}
    # A node's own `problem` (no hypervisor) does not keep it from running commands.
    values["problem"] = None
    return liveness(values, core.settings.dead_after())


def _run(core: Cluster, node: str, command: str, args: dict[str, Any], timeout: float) -> Result:
    store = core.store
    problem = _node_problem(core, node)
    if problem is not None:
        raise InvalidState(f"Node {quote(node)} cannot carry out {quote(command)}: {problem}. Nothing was done.")
    command_id = new_id()
    path = schema.command(command_id)
    now = time.time()
    entry = {"id": command_id, "node": node, "command": command, "args": args, "state": NEW,
             "created": now, "deadline": now + timeout, "timeout": timeout}
    try:
        store.commit([Create(path, encode(entry))])
    except NotFound:  # a tree initialised before /commands existed
        ensure_root(core)
        store.commit([Create(path, encode(entry))])
    start = time.monotonic()
    deadline = start + timeout
    watched = [path, schema.node_key(node, "daemonstate"), schema.node_key(node, "keepalive")]
    try:
        while True:
            found = _wait(core, watched, path, node, deadline)
            if found is None:  # the deadline passed first
                outcome = _expire(core, path, node, command, timeout)
                if outcome is not None:
                    return outcome
                # Its node started it: allow it the moment it needs to report.
                found = _wait(core, watched, path, node, time.monotonic() + REPORT_GRACE)
                if found is None:
                    raise Timeout(f"Node {quote(node)} started {quote(command)} but did not finish it within "
                                  f"{timeout:g} s; its outcome is unknown: check the object before trying again.")
            done = _finish(found, node, command)
            if done is not None:
                return done
            # The node stopped: fail now rather than at the deadline.
            state = (decode(found.value) or {}).get("state")
            if state == RUNNING:
                raise InvalidState(f"Node {quote(node)} stopped while carrying out {quote(command)}; its outcome is "
                                   "unknown: check the object before trying again.")
            if state != NEW:
                raise CommandFailed(f"The command for node {quote(node)} has an unreadable entry ({path}).")
            outcome = _expire(core, path, node, command, timeout, stopped=True)
            if outcome is not None:
                return outcome
            # Claimed just now after all: wait for it (the next look sees it running).
    finally:
        try:
            store.commit([Delete(path)])
        except NotFound:
            pass
        except PvcError:  # the agent sweeps finished entries; a leftover is harmless
            pass


def _wait(core: Cluster, watched: list[str], path: str, node: str, deadline: float) -> Entry | None:
    """The entry once it is finished, or once its node is not alive; None at the deadline."""
    store = core.store

    def ready() -> Entry | None:
        entry = store.get_many([path])[path]
        if entry is None:
            raise CommandFailed(f"The command for node {quote(node)} was deleted before it finished.")
        state = (decode(entry.value) or {}).get("state")
        if state in FINISHED or _node_problem(core, node) is not None:
            return entry
        return None

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return ready()
    try:
        return store.wait_for(watched, ready, remaining)
    except Timeout:
        return None


def _finish(entry: Entry, node: str, command: str) -> Result | None:
    """The Result of a finished entry; raises its failure; None when it is not finished."""
    value = decode(entry.value) or {}
    state = value.get("state")
    if state == DONE:
        return Result(str(value.get("message") or ""), value.get("data"))
    if state == FAILED:
        message = str(value.get("message") or f"Node {quote(node)} could not carry out {quote(command)}.")
        if value.get("error") == Timeout.kind:
            raise Timeout(message)
        raise CommandFailed(message)
    if state == EXPIRED:
        raise Timeout(f"Node {quote(node)} did not start {quote(command)} before its deadline; it was not run and "
                      "will not be.")
    return None


def _expire(core: Cluster, path: str, node: str, command: str, timeout: float, stopped: bool = False) -> Result | None:
    """Mark a command nobody started as expired, so that it never runs. Raises the matching
    error when that worked; returns its Result if it finished meanwhile; None when its node
    claimed it first (it is running)."""
    store = core.store
    for _ in range(3):
        entry = store.get_many([path])[path]
        if entry is None:
            raise CommandFailed(f"The command for node {quote(node)} was deleted before it finished.")
        value = decode(entry.value) or {}
        if value.get("state") != NEW:
            return _finish(entry, node, command)
        value["state"] = EXPIRED
        try:
            store.commit([Set(path, encode(value), entry.version)])
        except Conflict:
            continue  # claimed or finished meanwhile: look again
        if stopped:
            raise InvalidState(f"Node {quote(node)} stopped before it carried out {quote(command)}; it was not run "
                               "and will not be.")
        raise Timeout(f"Node {quote(node)} did not start {quote(command)} within {timeout:g} s; it was not run and "
                      "will not be.")
    return None
