"""Choosing a node for a VM: the manual's selectors over the nodes that can take VMs.

A node given by name is used when it exists (the manual: one that does not means automatic
selection); a running VM only goes to a node that is alive (its daemon runs, its keepalive is
fresh, its agent reports no problem) and ready. A dead or stale node is never chosen.
"""

from __future__ import annotations

from pvc.lib.config_values import SELECTORS
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument, InvalidState, quote
from pvc.lib.node_records import liveness, node_names, read_nodes
from pvc.lib.vm_records import read_vms, vm_uuids

#: Node keys that tell whether a node can take a running VM.
STATE_FIELDS = ("daemonstate", "domainstate", "keepalive", "problem")
#: Node figure each selector minimises (None: counted from the VMs' nodes).
SELECTOR_FIELDS = {"mem": "memalloc", "vcpus": "vcpualloc", "load": "cpuload", "vms": None}


def _figure(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else 0.0
    except ValueError:
        return float("inf")  # an unreadable figure never wins


def select_node(core: Cluster, selector: str | None, exclude: str | None = None) -> str:
    """The node a VM should go to: among nodes whose daemon runs and which are ready, except
    ``exclude``, the one with the least of the selector's figure; ties go to the first name.

    InvalidState, saying why each node was passed over, when there is no candidate; never a
    fallback to a dead or flushed node.
    """
    selector = selector or core.settings.target_selector
    if selector not in SELECTOR_FIELDS:
        raise InvalidArgument(f"Invalid selector {quote(selector)}: it must be one of {', '.join(SELECTORS)}.")
    field = SELECTOR_FIELDS[selector]
    fields = STATE_FIELDS + ((field,) if field else ())
    nodes = read_nodes(core, node_names(core), fields)
    reasons = []
    candidates = []
    for name, values in sorted(nodes.items()):
        why = "it is the VM's current node" if name == exclude else _unfit(core, values)
        if why:
            reasons.append(f"{name}: {why}")
        else:
            candidates.append(name)
    if not candidates:
        detail = "; ".join(reasons) if reasons else "the cluster has no nodes"
        raise InvalidState(f"No node can take the VM: {detail}.")
    if field is None:
        counts = {n: 0 for n in candidates}
        for v in read_vms(core, vm_uuids(core), ("node",)):
            if v.node in counts:
                counts[v.node] += 1
        return min(candidates, key=lambda n: (counts[n], n))
    return min(candidates, key=lambda n: (_figure(nodes[n][field]), n))


def _unfit(core: Cluster, values: dict[str, str | None]) -> str | None:
    """Why a node cannot take a running VM, or None when it can."""
    why = liveness(values, core.settings.dead_after())
    if why:
        return why
    if values["domainstate"] != "ready":
        return f"it is {values['domainstate'] or 'not ready'}"
    return None


def _node_state(core: Cluster, node: str) -> dict[str, str | None] | None:
    """The node's state keys, or None when there is no such node (or the name cannot be a
    node's: the manual's "not valid")."""
    try:
        return read_nodes(core, [node], STATE_FIELDS).get(node)
    except InvalidArgument:
        return None


def _check_state(core: Cluster, node: str, state: dict[str, str | None] | None, running: bool) -> None:
    if state is None:
        raise InvalidState(f"Node {quote(node)} does not exist.")
    why = _unfit(core, state) if running else None
    if why:
        raise InvalidState(f"Node {quote(node)} cannot take a running VM: {why}.")


def check_target(core: Cluster, node: str, running: bool) -> None:
    """The node must exist; a running VM can only go to one whose daemon runs and that is ready."""
    _check_state(core, node, _node_state(core, node), running)


def choose_node(core: Cluster, node: str | None, selector: str | None, exclude: str | None = None,
                running: bool = False) -> tuple[str, str]:
    """The target node and a note on how it was chosen, as the manual says: a given node that
    exists is used; one that does not means automatic selection with ``selector``."""
    if node:
        state = _node_state(core, node)  # one read tells whether it exists and can take the VM
        if state is not None:
            if node == exclude:
                raise InvalidState(f"The VM is already on node {quote(node)}.")
            _check_state(core, node, state, running)
            return node, ""
        chosen = select_node(core, selector, exclude)
        return chosen, f" (node {quote(node)} does not exist; chosen by {selector or core.settings.target_selector})"
    return select_node(core, selector, exclude), ""
