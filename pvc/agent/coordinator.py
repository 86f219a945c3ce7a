"""The coordinators' duties: one primary, and dead nodes detected, fenced and their VMs restarted.

Primary (original §4.5.3, fixed): ``/primary_node`` names the primary or is ``none``. A running
coordinator claims it when it is ``none`` with a write at the version it read, so of several
coordinators racing exactly one wins. Each node's ``routerstate`` follows the key: ``primary`` on
the node it names, ``secondary`` on the other coordinators, ``client`` on the hypervisors. Nobody
re-asserts the key (the original's keepalive did, racing with requested switches).

Dead nodes (original §4.5.4, fixed): every coordinator looks at every keepalive; a node silent
for interval × fence_intervals is marked ``dead`` with a write at the version read, so one
coordinator wins and fences it (one fence per death). A dead primary's key is released at once,
so a live coordinator takes over within an interval. The dead node's VMs are started elsewhere
only after its fence is confirmed (or when ``failed_fence`` says so): two copies of a VM writing
one disk is the worst failure a cluster can have. Otherwise they stay, and the node says why.

A node whose agent stopped cleanly (it reported ``stop``) is marked dead the same way, so nothing
is placed on it, but it is not fenced: its agent left its VMs running on purpose (an upgrade, a
restart), and power-cycling the host would kill them. Its VMs stay until its agent runs again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Mapping

from pvc.agent.fencing import fence
from pvc.lib import schema
from pvc.lib.errors import AlreadyExists, Conflict, InvalidState, NotFound, PvcError, quote
from pvc.lib.node_records import keepalive_age, node_names, read_nodes
from pvc.lib.placement import select_node
from pvc.lib.core import Cluster
from pvc.lib.store import Check, Create, Entry, Op, Set
from pvc.lib.vm_records import Vm, read_vms, vm_uuids

if TYPE_CHECKING:
    from pvc.agent.daemon import Agent

log = logging.getLogger("pvc.agent.coordinator")

#: VM states of a VM that was running on a node that died.
WAS_RUNNING = ("start", "restart", "migrate")


def follow_primary(agent: "Agent") -> None:
    """Claim ``/primary_node`` when it is free (coordinators whose daemon runs), and set this
    node's ``routerstate`` from it."""
    store = agent.core.store
    me = agent.name
    primary = store.get(schema.PRIMARY_NODE)
    if agent.coordinator and primary.value == schema.NO_PRIMARY and agent.running:
        try:
            store.commit([Set(schema.PRIMARY_NODE, me, primary.version)])
            log.info("This node %s is now the primary coordinator", quote(me))
            primary = store.get(schema.PRIMARY_NODE)
        except (Conflict, NotFound):
            primary = store.get(schema.PRIMARY_NODE)  # another coordinator won
    want = ("primary" if primary.value == me else "secondary") if agent.coordinator else "client"
    key = schema.node_key(me, "routerstate")
    current = store.get_many([key])[key]
    if current is None or current.value != want:
        store.write({key: want})
        if want == "primary" or (current is not None and current.value == "primary"):
            log.info("Coordinator state of %s: %s", quote(me), want)


def release_primary(agent: "Agent", node: str) -> bool:
    """Set ``/primary_node`` to ``none`` if it names ``node`` (at the version read)."""
    store = agent.core.store
    primary = store.get(schema.PRIMARY_NODE)
    if primary.value != node:
        return False
    try:
        store.commit([Set(schema.PRIMARY_NODE, schema.NO_PRIMARY, primary.version)])
    except (Conflict, NotFound):
        return False
    return True


def check_nodes(agent: "Agent") -> None:
    """Mark the nodes whose keepalive is too old ``dead`` and have them fenced (coordinators)."""
    core = agent.core
    limit = core.settings.dead_after()
    names = [n for n in node_names(core) if n != agent.name]
    if not names:
        return
    fields = ("daemonstate", "keepalive", "routerstate", "daemonmode")
    nodes = read_nodes(core, names, fields)
    for name, values in nodes.items():
        if values["daemonstate"] in (None, "dead"):
            continue
        age = keepalive_age(values)
        if age is not None and age <= limit:
            continue
        # Look again, with versions: a keepalive since the first look means alive after all.
        state_key, keepalive_key = schema.node_key(name, "daemonstate"), schema.node_key(name, "keepalive")
        entries = core.store.get_many([state_key, keepalive_key])
        state, keepalive = entries[state_key], entries[keepalive_key]
        if state is None or state.value == "dead":
            continue
        clean = state.value == "stop"
        age = keepalive_age({"keepalive": keepalive.value if keepalive else None})
        if age is not None and age <= limit:
            continue
        ops: list[Op] = [Set(state_key, "dead", state.version)]
        if keepalive is not None:
            ops.append(Check(keepalive_key, keepalive.version))
        try:
            # At the versions read: the node's own keepalive in between, or another coordinator
            # marking it first, makes this write fail. One winner, one fence.
            core.store.commit(ops)
        except (Conflict, NotFound, AlreadyExists):
            continue
        age_text = f"for {age:.0f} s" if age is not None else "at all"
        log.warning("Node %s is dead: no keepalive %s (limit %g s)", quote(name), age_text, limit)
        if release_primary(agent, name):
            log.warning("Released the primary coordinator role of dead node %s", quote(name))
        if values.get("daemonmode") == "coordinator" and values.get("routerstate") == "primary":
            core.store.write({schema.node_key(name, "routerstate"): "secondary"})
        agent.wake()  # a free /primary_node is claimed at once
        threading.Thread(target=_fence_and_recover, args=(agent, name, clean), name=f"pvc-fence-{name}",
                         daemon=True).start()


def _fence_and_recover(agent: "Agent", node: str, clean: bool) -> None:
    try:
        handle_dead_node(agent, node, clean)
    except PvcError as e:
        log.error("Handling dead node %s failed: %s", quote(node), e.message)
    except Exception:
        log.exception("Handling dead node %s failed", quote(node))


def handle_dead_node(agent: "Agent", node: str, clean: bool = False) -> str:
    """Fence ``node``, then start its VMs elsewhere or leave them, as the configuration says
    (``clean``: its agent stopped cleanly; it is not fenced and its VMs stay). Returns (and
    records as the node's ``problem``) what was done."""
    core = agent.core
    settings = core.settings
    if clean:
        problem = (f"dead since {time.strftime('%Y-%m-%d %H:%M:%S')}: its agent stopped cleanly and has not come "
                   "back; not fenced, its VMs stay where they are until its agent runs again")
        log.warning("Node %s: %s", quote(node), problem)
        _record(core, node, problem)
        return problem
    result = fence(settings.bmc_of(node))
    if result.confirmed:
        log.warning("Fenced node %s: %s", quote(node), result.detail)
        action, how = settings.successful_fence, f"fenced ({result.detail})"
    else:
        log.error("Could not fence node %s: %s", quote(node), result.detail)
        action, how = settings.failed_fence, f"not fenced: {result.detail}"
    moved, stranded = [], []
    if action == "migrate":
        for vm in read_vms(core, vm_uuids(core), ("state", "node", "lastnode")):
            if vm.node != node or vm.state not in WAS_RUNNING + ("shutdown",):
                continue
            if vm.state == "shutdown":
                rewrite_vm(core, vm, {"state": "stop"})
                continue
            try:
                target = select_node(core, None, exclude=node)
            except InvalidState as e:
                stranded.append(f"{vm.name} ({e.message})")
                continue
            if rewrite_vm(core, vm, {"state": "start", "node": target, "lastnode": vm.last_node or node}):
                moved.append(f"{vm.name} → {target}")
        vms = f"its VMs were started elsewhere: {', '.join(moved) or 'none were running'}"
        if stranded:
            vms += f"; not restarted: {', '.join(stranded)}"
    else:
        which = "successful_fence" if result.confirmed else "failed_fence"
        vms = f"its VMs stay where they are (pvc.system.fencing.actions.{which} is none)"
    problem = f"dead since {time.strftime('%Y-%m-%d %H:%M:%S')}: {how}; {vms}"
    log.warning("Node %s: %s", quote(node), problem)
    _record(core, node, problem)
    return problem


def _record(core: Cluster, node: str, problem: str) -> None:
    """The dead node's outcome: ``flushed`` and the problem, only while it is still dead (a node
    that came back meanwhile keeps its own state)."""
    state_key = schema.node_key(node, "daemonstate")
    keys = [state_key, schema.node_key(node, "domainstate"), schema.node_key(node, "problem")]
    entries = core.store.get_many(keys)
    if entries[state_key] is not None and entries[state_key].value == "dead":
        ops = put_ops(entries, dict(zip(keys[1:], ("flushed", problem)))) + [Check(state_key, entries[state_key].version)]
        try:
            core.store.commit(ops)
        except (Conflict, NotFound, AlreadyExists):
            pass


def put_ops(entries: Mapping[str, Entry | None], values: Mapping[str, str]) -> list[Op]:
    """Writes of ``values`` at the versions of ``entries`` (creating the keys that are missing)."""
    ops: list[Op] = []
    for path, value in values.items():
        entry = entries.get(path)
        ops.append(Create(path, value) if entry is None else Set(path, value, entry.version))
    return ops


def rewrite_vm(core: Cluster, vm: Vm, values: dict[str, str]) -> bool:
    """Write some of a VM's keys at the versions read; False when it changed meanwhile."""
    entries = {schema.domain_key(vm.uuid, f): vm.entries.get(f) for f in values}
    try:
        core.store.commit(put_ops(entries, {schema.domain_key(vm.uuid, f): v for f, v in values.items()}))
        return True
    except (Conflict, NotFound, AlreadyExists):
        return False
