"""Reading nodes from the store: their keys in one batch, the node object of the original's shape
(its §2.7.1) with JSON types, and whether a node is alive.

A node is `/nodes/<name>` (its value is the daemon mode) with the children of
``schema.NODE_FIELDS``. It is alive while its agent runs and its keepalive is fresh: a node whose
agent was killed still says `run` until a coordinator marks it `dead`, so placement must never
trust `daemonstate` alone.
"""

from __future__ import annotations

import time
from typing import Any

from pvc.lib import schema
from pvc.lib.core import Cluster, not_initialised
from pvc.lib.errors import NotFound
from pvc.lib.store import Entry

DAEMON_STATES = ("init", "run", "shutdown", "stop", "dead")
DOMAIN_STATES = ("flushed", "flush", "unflush", "ready")

#: What a domain-state request writes, and the state the agent reports once it is done.
DOMAIN_REQUESTS = {"flush": ("flush", "flushed"), "ready": ("unflush", "ready")}


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def node_object(name: str, values: dict[str, str | None]) -> dict[str, Any]:
    """A node in the original's shape (its §2.7.1), with numbers as numbers and gaps as null."""
    static = (values.get("staticdata") or "").split()
    static += [None] * (4 - len(static))
    cpu_count = _int(static[0])
    return {
        "name": name,
        "daemon_state": values.get("daemonstate"),
        "coordinator_state": values.get("routerstate"),
        "domain_state": values.get("domainstate"),
        "cpu_count": cpu_count,
        "kernel": static[1],
        "os": static[2],
        "arch": static[3],
        "load": _float(values.get("cpuload")),
        "domains_count": _int(values.get("domainscount")),
        "running_domains": (values.get("runningdomains") or "").split(),
        "vcpu": {"total": cpu_count, "allocated": _int(values.get("vcpualloc"))},
        "memory": {
            "total": _int(values.get("memtotal")),
            "allocated": _int(values.get("memalloc")),
            "used": _int(values.get("memused")),
            "free": _int(values.get("memfree")),
        },
        "problem": values.get("problem") or None,
    }


def node_names(core: Cluster) -> list[str]:
    """Names of all nodes, sorted."""
    try:
        return core.store.children(schema.NODES)
    except NotFound:
        raise not_initialised(core) from None


def read_node_entries(core: Cluster, names: list[str],
                      fields: tuple[str, ...] = schema.NODE_FIELDS) -> dict[str, dict[str, Entry | None]]:
    """The entries (values and versions) of the given fields of many nodes in one batch; nodes
    that do not exist are left out."""
    paths = [schema.node(n) for n in names] + [schema.node_key(n, f) for n in names for f in fields]
    entries = core.store.get_many(paths)
    return {n: {f: entries[schema.node_key(n, f)] for f in fields} for n in names if entries[schema.node(n)] is not None}


def read_nodes(core: Cluster, names: list[str], fields: tuple[str, ...] = schema.NODE_FIELDS) -> dict[str, dict[str, str | None]]:
    """The given fields of many nodes in one batch; nodes that do not exist are left out."""
    return {n: {f: _value(e) for f, e in entries.items()} for n, entries in read_node_entries(core, names, fields).items()}


def _value(entry: Entry | None) -> str | None:
    return None if entry is None else entry.value




def keepalive_age(values: dict[str, str | None], now: float | None = None) -> float | None:
    """Seconds since the node's last keepalive; None when it has none (or an unreadable one)."""
    try:
        stamp = float(values.get("keepalive") or "")
    except ValueError:
        return None
    return (time.time() if now is None else now) - stamp


def liveness(values: dict[str, str | None], dead_after: float, now: float | None = None) -> str | None:
    """Why the node cannot take VMs as far as its agent goes, or None when it is alive: its
    daemon runs, its keepalive is fresh and it reports no problem of its own."""
    state = values.get("daemonstate")
    if state != "run":
        return f"its daemon is {state or 'unknown'}"
    age = keepalive_age(values, now)
    if age is None or age > dead_after:
        return "its keepalive is stale" if age is not None else "it has no keepalive"
    problem = values.get("problem")
    if problem:
        return problem
    return None


def why_not_alive(core: Cluster, node: str) -> str | None:
    """Why ``node`` is not alive (see :func:`liveness`; a missing node is not), or None."""
    found = read_nodes(core, [node], ("daemonstate", "keepalive", "problem"))
    if node not in found:
        return "it does not exist"
    return liveness(found[node], core.settings.dead_after())
