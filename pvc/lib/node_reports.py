"""What a node agent writes about its own node: registration and its periodic figures.

Clients never create nodes (the manual: "Nodes are created automatically during daemon
startup"); the node agent calls these functions, and tests use them to build clusters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument, NotFound, quote
from pvc.lib.node_records import DAEMON_STATES, DOMAIN_STATES


@dataclass(frozen=True)
class NodeFacts:
    """What does not change while the agent runs (the original's `staticdata`)."""

    cpu_count: int
    kernel: str
    os: str
    arch: str

    def text(self) -> str:
        words = [str(self.cpu_count), self.kernel, self.os, self.arch]
        if any(not w or any(c.isspace() for c in w) for w in words):
            raise InvalidArgument("Node facts must be single words.")
        return " ".join(words)


@dataclass(frozen=True)
class NodeFigures:
    """What the agent publishes with every keepalive (MiB for memory)."""

    memtotal: int = 0
    memused: int = 0
    memfree: int = 0
    memalloc: int = 0
    vcpualloc: int = 0
    cpuload: float = 0.0
    domainscount: int = 0
    running_domains: tuple[str, ...] = ()


def register_node(core: Cluster, name: str, facts: NodeFacts, coordinator: bool = False,
                  new_domain_state: str = "flushed") -> bool:
    """Register (or re-register) a node; returns True when it was new.

    A new node starts `init`, ``new_domain_state`` (`flushed` in a real cluster: it must be made
    ready before it gets VMs) and with zero figures. A known node keeps its domain state and
    figures; its mode, facts, daemon state (`init`) and keepalive time are rewritten (so that a
    node coming back is not taken for dead before its first keepalive). One atomic write.
    """
    if new_domain_state not in DOMAIN_STATES:
        raise InvalidArgument(f"Invalid domain state {quote(new_domain_state)}.")
    mode = "coordinator" if coordinator else "hypervisor"
    node = schema.node(name)

    def key(field: str) -> str:
        return schema.node_key(name, field)

    values = {
        node: mode,
        key("daemonmode"): mode,
        key("daemonstate"): "init",
        key("routerstate"): "secondary" if coordinator else "client",
        key("staticdata"): facts.text(),
        key("keepalive"): str(int(time.time())),
    }
    new = not core.store.exists(node)
    if new:
        values.update({key(f): "0" for f in ("memtotal", "memused", "memfree", "memalloc", "vcpualloc",
                                              "domainscount", "networkscount")})
        values.update({key("domainstate"): new_domain_state, key("cpuload"): "0.0", key("runningdomains"): "",
                       key("problem"): ""})
    core.store.write(values)
    return new


def publish_figures(core: Cluster, name: str, figures: NodeFigures, daemon_state: str = "run",
                    problem: str = "") -> None:
    """Publish a keepalive: the node's figures, its daemon state, what keeps it from taking VMs
    (``problem``, empty when nothing) and the time, in one write."""
    if daemon_state not in DAEMON_STATES:
        raise InvalidArgument(f"Invalid daemon state {quote(daemon_state)}.")
    node = schema.node(name)
    if not core.store.exists(node):
        raise NotFound(f"Node {quote(name)} not found.")
    values = {
        "daemonstate": daemon_state,
        "memtotal": str(figures.memtotal),
        "memused": str(figures.memused),
        "memfree": str(figures.memfree),
        "memalloc": str(figures.memalloc),
        "vcpualloc": str(figures.vcpualloc),
        "cpuload": f"{figures.cpuload:.2f}",
        "domainscount": str(figures.domainscount),
        "runningdomains": " ".join(figures.running_domains),
        "keepalive": str(int(time.time())),
        "problem": " ".join(problem.split()),
    }
    core.store.write({schema.node_key(name, k): v for k, v in values.items()})


def report_domain_state(core: Cluster, name: str, state: str) -> None:
    """The agent reports where a flush or ready stands (`flushed`, `ready`, ...)."""
    if state not in DOMAIN_STATES:
        raise InvalidArgument(f"Invalid domain state {quote(state)}.")
    if not core.store.exists(schema.node(name)):
        raise NotFound(f"Node {quote(name)} not found.")
    core.store.write({schema.node_key(name, "domainstate"): state})
