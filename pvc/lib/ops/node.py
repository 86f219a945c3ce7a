"""Node operations: the manual's node endpoints.

Nodes are created by their agent (see :mod:`pvc.lib.node_reports`), never by clients. Clients read
them and ask for changes — primary/secondary coordinator, flush/ready — which the tree records
and the node agents carry out.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from pvc.lib import schema
from pvc.lib.core import Cluster, not_initialised
from pvc.lib.errors import Conflict, InvalidState, NotFound, quote
from pvc.lib.match import select
from pvc.lib.node_records import DAEMON_STATES, DOMAIN_REQUESTS, DOMAIN_STATES, node_names, node_object, read_nodes
from pvc.lib.registry import Param, Variant, completer, operation
from pvc.lib.store import Check, Create, Set
from pvc.lib.vm_records import read_vms, vm_uuids

__all__ = ["DAEMON_STATES", "DOMAIN_STATES", "node_names", "node_object", "read_nodes"]

def this_node() -> str:
    """The short host name of this machine: the default NODE of the node commands."""
    return socket.gethostname().split(".")[0]


NODE_ARG = Param("Name of the node.", positional=True, complete="node")
LOCAL_NODE_ARG = Param("Name of the node (default: this host).", positional=True, complete="node", cli_default=this_node)


def _one(core: Cluster, node: str, fields: tuple[str, ...] = schema.NODE_FIELDS) -> dict[str, str | None]:
    schema.validate_name("node", node)
    found = read_nodes(core, [node], fields)
    if node not in found:
        raise NotFound(f"Node {quote(node)} not found.")
    return found[node]


@completer("node")
def complete_nodes(core: Cluster, incomplete: str) -> list[str]:
    return [n for n in node_names(core) if n.startswith(incomplete)]


@operation("node", "list", "GET", "/node", result="list", render="node_list",
           params={"limit": Param("Show only nodes whose name matches this fuzzy regex.", positional=True)})
def list_nodes(core: Cluster, limit: str | None = None) -> list[dict[str, Any]]:
    """List the nodes of the cluster.

    LIMIT is the original's fuzzy regex: a substring unless it starts with ^ or contains $.
    """
    found = read_nodes(core, select(node_names(core), limit, timeout=core.settings.regex_timeout))
    return [node_object(n, values) for n, values in sorted(found.items())]


@operation("node", "info", "GET", "/node/<node>", result="list", render="node_info", params={"node": LOCAL_NODE_ARG})
def get_node(core: Cluster, node: str) -> list[dict[str, Any]]:
    """Show one node (exact name)."""
    return [node_object(node, _one(core, node))]


def _state(core: Cluster, node: str, field: str, key: str) -> dict[str, Any]:
    return {"name": node, key: _one(core, node, (field,))[field]}


@operation("node", "daemon-state", "GET", "/node/<node>/daemon-state", result="object", render="state",
           params={"node": NODE_ARG})
def get_daemon_state(core: Cluster, node: str) -> dict[str, Any]:
    """Show the daemon state of a node (init, run, shutdown, stop, dead)."""
    return _state(core, node, "daemonstate", "daemon_state")


@operation("node", "coordinator-state", "GET", "/node/<node>/coordinator-state", result="object", render="state",
           params={"node": NODE_ARG})
def get_coordinator_state(core: Cluster, node: str) -> dict[str, Any]:
    """Show the coordinator state of a node (client, secondary, primary)."""
    return _state(core, node, "routerstate", "coordinator_state")


@operation("node", "domain-state", "GET", "/node/<node>/domain-state", result="object", render="state",
           params={"node": NODE_ARG})
def get_domain_state(core: Cluster, node: str) -> dict[str, Any]:
    """Show the domain state of a node (flushed, flush, unflush, ready)."""
    return _state(core, node, "domainstate", "domain_state")


@operation(
    "node", "set-coordinator-state", "POST", "/node/<node>/coordinator-state",
    params={
        "node": NODE_ARG,
        "state": Param("The new coordinator state.", kind="choice", choices=("primary", "secondary"), http="coordinator-state"),
    },
    variants=(
        Variant("primary", {"state": "primary"},
                "Make a coordinator node the primary coordinator.\n\nThe node must be a coordinator whose daemon "
                "runs; /primary_node moves to it. Asking again changes nothing."),
        Variant("secondary", {"state": "secondary"},
                "Make the primary coordinator node a secondary one.\n\n/primary_node is cleared so that another "
                "coordinator takes over. Asking again changes nothing."),
    ),
)
def set_coordinator_state(core: Cluster, node: str, state: str) -> str:
    """Set a coordinator node primary or secondary.

    The node must exist, be a coordinator and have a running daemon. Becoming primary moves
    /primary_node to the node; becoming secondary clears it so that another coordinator takes
    over. Asking for the state the node is already in changes nothing.
    """
    mode_key, daemon_key = schema.node_key(node, "daemonmode"), schema.node_key(node, "daemonstate")
    entries = core.store.get_many([schema.node(node), mode_key, daemon_key, schema.PRIMARY_NODE])
    if entries[schema.node(node)] is None:
        raise NotFound(f"Node {quote(node)} not found.")
    mode, daemon, primary = entries[mode_key], entries[daemon_key], entries[schema.PRIMARY_NODE]
    if mode is None or mode.value != "coordinator":
        raise InvalidState(f"Node {quote(node)} is not a coordinator; only coordinators can be primary or secondary.")
    if daemon is None or daemon.value != "run":
        state_text = quote(daemon.value) if daemon else "unknown"
        raise InvalidState(f"Node {quote(node)} is not running (its daemon state is {state_text}).")
    if primary is None:
        raise not_initialised(core)
    if state == "primary":
        if primary.value == node:
            return f"Node {quote(node)} is already the primary coordinator; nothing changed."
        new = node
        message = f"Setting node {quote(node)} as the primary coordinator."
    else:
        if primary.value != node:
            return f"Node {quote(node)} is already a secondary coordinator; nothing changed."
        new = schema.NO_PRIMARY
        message = f"Setting node {quote(node)} as a secondary coordinator."
    # Everything at the versions we checked: a concurrent switch, or the node's daemon stopping
    # meanwhile, makes this request fail instead of both landing.
    try:
        core.store.commit([Check(mode_key, mode.version), Check(daemon_key, daemon.version),
                           Set(schema.PRIMARY_NODE, new, primary.version)])
    except Conflict:
        raise Conflict(f"The coordinators changed while setting node {quote(node)} {state}; "
                       "nothing was changed, try again.") from None
    return message


#: VM states in which a VM runs on its node (or is about to).
RUNNING = ("start", "restart", "migrate")


def movable_vms(core: Cluster, node: str, state: str | None = None) -> dict[str, set[str]]:
    """What a flush or ready of ``node`` will move: the VMs running there (``here``) and those
    migrated away from it (``away``), read before the request so that no move is missed."""
    vms = read_vms(core, vm_uuids(core), ("state", "node", "lastnode"))
    return {"here": {v.uuid for v in vms if v.node == node and v.state in RUNNING},
            "away": {v.uuid for v in vms if v.last_node == node and v.node != node}}


def wait_domain_state(core: Cluster, node: str, state: str, timeout: float | None = None,
                      progress: Callable[[str], None] | None = None,
                      before: dict[str, set[str]] | None = None) -> str:
    """Wait until the node's agent reports the result of a flush (``flushed``) or ready (``ready``).

    ``progress`` gets a line for each VM moved meanwhile, of those :func:`movable_vms` found
    (``before``, read before the request; else now)."""
    _, done = DOMAIN_REQUESTS[state]
    path = schema.node_key(node, "domainstate")
    current: dict[str, str | None] = {}
    tracked: set[str] = set()
    if progress is not None:
        tracked = (before if before is not None else movable_vms(core, node))["here" if state == "flush" else "away"]
    reported: set[str] = set()

    def report() -> None:
        for v in read_vms(core, sorted(tracked - reported), ("state", "node")):
            if v.state == "migrate" or v.state in ("restart", "shutdown"):
                continue  # still moving
            if state == "flush" and v.node != node:
                line = f"VM {quote(v.name)} left node {quote(node)}: {v.state} on {quote(v.node)}"
            elif state == "flush" and v.state in ("stop", "failed"):
                line = f"VM {quote(v.name)} could not move and is {v.state} on node {quote(node)}"
            elif state == "ready" and v.node == node:
                line = f"VM {quote(v.name)} is back on node {quote(node)}: {v.state}"
            else:
                continue
            reported.add(v.uuid)
            assert progress is not None
            progress(line)

    def reached() -> bool:
        entry = core.store.get_many([path])[path]
        if entry is None:
            raise NotFound(f"Node {quote(node)} not found.")
        if tracked:
            report()
        current["state"] = entry.value
        return entry.value == done

    timeout = core.settings.wait_timeout if timeout is None else timeout
    keys = [path] + [schema.domain_key(u, "state") for u in sorted(tracked)]
    core.store.wait_for(
        keys, reached, timeout,
        describe=lambda: f"node {quote(node)} still reports domain state {quote(current.get('state'))}, not {quote(done)}.",
    )
    return f"Node {quote(node)} reports domain state {quote(done)}."


@operation(
    "node", "set-domain-state", "POST", "/node/<node>/domain-state",
    params={
        "node": LOCAL_NODE_ARG,
        "state": Param("The new domain state.", kind="choice", choices=tuple(DOMAIN_REQUESTS), http="domain-state"),
    },
    variants=(
        Variant("flush", {"state": "flush"},
                "Flush a node: move its running VMs away.\n\nWrites `flush` for the node agent to carry out; "
                "it reports `flushed` when done (--wait waits for that, with a line per VM moved). A flushed "
                "node changes nothing.",
                wait=wait_domain_state, before=movable_vms),
        Variant("ready", {"state": "ready"},
                "Return a flushed node to service.\n\nWrites `unflush` for the node agent to carry out; it "
                "reports `ready` when done (--wait waits for that, with a line per VM brought back). A ready "
                "node changes nothing.",
                aliases=("unflush",), wait=wait_domain_state, before=movable_vms),
    ),
)
def set_domain_state(core: Cluster, node: str, state: str) -> str:
    """Flush a node of its VMs, or make it ready for VMs again.

    Writes `flush` or `unflush` for the node agent to carry out; it reports `flushed` or `ready`
    when done. Asking again while a change is still in progress starts it afresh; asking for the
    state the node has already reached changes nothing.
    """
    request, done = DOMAIN_REQUESTS[state]
    path = schema.node_key(node, "domainstate")
    entries = core.store.get_many([schema.node(node), path])
    if entries[schema.node(node)] is None:
        raise NotFound(f"Node {quote(node)} not found.")
    entry = entries[path]
    if entry is not None and entry.value == done:
        return f"Node {quote(node)} is already {done}; nothing changed."
    # At the version we read, so a report from the agent in between is not overwritten blindly.
    core.store.commit([Create(path, request) if entry is None else Set(path, request, entry.version)])
    if state == "flush":
        return f"Flushing node {quote(node)} of running VMs."
    return f"Restoring node {quote(node)} to active service."
