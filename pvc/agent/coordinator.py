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
import re
import threading
import time
from typing import TYPE_CHECKING, Mapping

from pvc.agent.fencing import fence
from pvc.lib import schema
from pvc.lib.errors import AlreadyExists, Conflict, InvalidState, NotFound, PvcError, quote
from pvc.lib.node_records import keepalive_age, node_names, read_node_entries, read_nodes, why_not_alive
from pvc.lib.placement import select_node
from pvc.lib.core import Cluster
from pvc.lib.store import Check, Create, Entry, Op, Set
from pvc.lib.vm_records import Vm, read_vms, vm_uuids

if TYPE_CHECKING:
    from pvc.agent.daemon import Agent

log = logging.getLogger("pvc.agent.coordinator")



def follow_primary(agent: "Agent") -> None:
    """Claim ``/primary_node`` when it is free (coordinators whose daemon runs), and set this
    node's ``routerstate`` from it.

    A primary that was made secondary (``pvc node secondary``) holds back for a keepalive
    interval, so that another coordinator takes over as asked; it claims again only if none did.
    """
    store = agent.core.store
    me = agent.name
    key = schema.node_key(me, "routerstate")
    entries = store.get_many([schema.PRIMARY_NODE, key])
    primary, current = entries[schema.PRIMARY_NODE], entries[key]
    if primary is None:
        return  # not initialised (pvc init --yes in progress)
    if primary.value == schema.NO_PRIMARY and current is not None and current.value == "primary":
        agent.demoted_at = time.monotonic()  # released by someone else: step aside for a while
    holding_back = time.monotonic() - agent.demoted_at < agent.core.settings.keepalive_interval
    if agent.coordinator and primary.value == schema.NO_PRIMARY and agent.running and not holding_back:
        try:
            store.commit([Set(schema.PRIMARY_NODE, me, primary.version)])
            log.info("This node %s is now the primary coordinator", quote(me))
        except (Conflict, NotFound):
            pass  # another coordinator won
        primary = store.get(schema.PRIMARY_NODE)
    want = ("primary" if primary.value == me else "secondary") if agent.coordinator else "client"
    if current is None or current.value != want:
        store.write({key: want})
        if want == "primary" or (current is not None and current.value == "primary"):
            log.info("Coordinator state of %s: %s", quote(me), want)
    if holding_back:
        agent.wake_at(agent.demoted_at + agent.core.settings.keepalive_interval)


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


#: The ``problem`` of a dead node while a coordinator fences it: its name and when it began.
FENCING = re.compile(r"^dead: being fenced by (\S+) since (\d+)$")
#: After this long, a fence still "in progress" is taken over by another coordinator (each
#: ipmitool call has a deadline, so a live fencer is done long before).
FENCE_TAKEOVER = 300.0


def check_nodes(agent: "Agent") -> None:
    """Mark the nodes whose keepalive is too old ``dead`` and have them fenced (coordinators);
    take over the fences of coordinators that died while fencing."""
    core = agent.core
    limit = core.settings.dead_after()
    names = [n for n in node_names(core) if n != agent.name]
    if not names:
        return
    fields = ("daemonstate", "keepalive", "routerstate", "daemonmode", "problem")
    found = read_node_entries(core, names, fields)
    now = time.monotonic()
    for name, entries in found.items():
        # When this coordinator last saw the keepalive change, on its own clock: a node whose
        # keepalive still changes is alive, whatever the clocks of the two hosts say.
        entry = entries["keepalive"]
        version = entry.version if entry is not None else None
        if agent.keepalives.get(name, (None, 0.0))[0] != version:
            agent.keepalives[name] = (version, now)
    for name, entries in found.items():
        values = {f: e.value if e is not None else None for f, e in entries.items()}
        if values["daemonstate"] == "dead":
            _take_over(agent, name, values)
            continue
        if values["daemonstate"] is None:
            continue
        age = keepalive_age(values)
        if age is not None and age <= limit:
            continue
        if now - agent.keepalives.get(name, (None, now))[1] < core.settings.keepalive_interval:
            continue  # its keepalive changed a moment ago: its clock is behind ours
        _mark_dead(agent, name, values, age, limit)


def _mark_dead(agent: "Agent", name: str, values: dict[str, str | None], age: float | None, limit: float) -> None:
    core = agent.core
    # Look again, with versions: a keepalive since the first look means alive after all.
    state_key, keepalive_key = schema.node_key(name, "daemonstate"), schema.node_key(name, "keepalive")
    problem_key, router_key = schema.node_key(name, "problem"), schema.node_key(name, "routerstate")
    entries = core.store.get_many([state_key, keepalive_key, problem_key, router_key, schema.PRIMARY_NODE])
    state, keepalive, primary = entries[state_key], entries[keepalive_key], entries[schema.PRIMARY_NODE]
    if state is None or state.value == "dead":
        return
    age = keepalive_age({"keepalive": keepalive.value if keepalive else None})
    if age is not None and age <= limit:
        return
    clean = state.value == "stop"
    values_to_write = {problem_key: f"dead: being fenced by {agent.name} since {int(time.time())}"}
    if values.get("routerstate") == "primary":
        values_to_write[router_key] = "secondary"
    # One transaction: dead, the fence claimed by this coordinator, and the primary role released
    # (nothing is left half done if the store fails in between). At the versions read: the node's
    # own keepalive in between, or another coordinator marking it first, makes it fail.
    ops: list[Op] = [Set(state_key, "dead", state.version)] + put_ops(entries, values_to_write)
    if keepalive is not None:
        ops.append(Check(keepalive_key, keepalive.version))
    released = primary is not None and primary.value == name
    if released:
        ops.append(Set(schema.PRIMARY_NODE, schema.NO_PRIMARY, primary.version))
    try:
        core.store.commit(ops)
    except (Conflict, NotFound, AlreadyExists):
        return
    age_text = f"for {age:.0f} s" if age is not None else "at all"
    log.warning("Node %s is dead: no keepalive %s (limit %g s)%s", quote(name), age_text, limit,
                "; released its primary coordinator role" if released else "")
    agent.wake()  # a free /primary_node is claimed at once
    _start_handling(agent, name, clean)


def _take_over(agent: "Agent", name: str, values: dict[str, str | None]) -> None:
    """A dead node whose fence was claimed by a coordinator that is gone (or took far too long)
    is fenced by this one: nothing is left unhandled when the fencer dies too."""
    claim = FENCING.match(values.get("problem") or "")
    if claim is None or claim.group(1) == agent.name:
        return
    fencer, since = claim.group(1), int(claim.group(2))
    if why_not_alive(agent.core, fencer) is None and time.time() - since < FENCE_TAKEOVER:
        return
    problem_key = schema.node_key(name, "problem")
    entry = agent.core.store.get_many([problem_key])[problem_key]
    if entry is None or entry.value != values.get("problem"):
        return
    try:
        agent.core.store.commit([Set(problem_key, f"dead: being fenced by {agent.name} since {int(time.time())}",
                                     entry.version)])
    except (Conflict, NotFound):
        return
    log.warning("Node %s: taking over its fence from %s", quote(name), quote(fencer))
    _start_handling(agent, name, False)


def _start_handling(agent: "Agent", name: str, clean: bool) -> None:
    threading.Thread(target=_fence_and_recover, args=(agent, name, clean), name=f"pvc-fence-{name}",
                     daemon=True).start()


def _fence_and_recover(agent: "Agent", node: str, clean: bool) -> None:
    try:
        handle_dead_node(agent, node, clean)
    except Exception as e:  # the outcome must be recorded, or the node would wait for ever
        text = e.message if isinstance(e, PvcError) else f"{type(e).__name__}: {e}"
        log.error("Handling dead node %s failed: %s", quote(node), text, exc_info=not isinstance(e, PvcError))
        try:
            _record(agent.core, node, f"dead since {time.strftime('%Y-%m-%d %H:%M:%S')}: handling it failed "
                                      f"({text}); its VMs stay where they are")
        except PvcError:
            pass  # the claim stays; another coordinator takes it over


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
    if action == "migrate":
        moved, stranded = _restart_vms(core, node)
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


def _restart_vms(core: Cluster, node: str) -> tuple[list[str], list[str]]:
    """Start the VMs that ran on the fenced ``node`` on other nodes: those homed there that were
    running, and those it was migrating away (their target waits). A VM that another live node
    reports running is left alone; one being migrated *to* the dead node still runs on its
    source, whose agent takes it back."""
    names = node_names(core)
    running = read_nodes(core, names, ("runningdomains", "daemonstate"))
    elsewhere = {u for n, v in running.items() if n != node and v["daemonstate"] == "run"
                 for u in (v["runningdomains"] or "").split()}
    was_here = set((running.get(node, {}).get("runningdomains") or "").split())
    moved, stranded = [], []
    for vm in read_vms(core, vm_uuids(core), ("state", "node", "lastnode")):
        if vm.uuid in elsewhere:
            continue
        if vm.node == node and vm.state == "shutdown":
            rewrite_vm(core, vm, {"state": "stop"})  # it is off now
        elif vm.node == node and vm.state in ("start", "restart"):
            try:
                target = select_node(core, None, exclude=node)
            except InvalidState as e:
                stranded.append(f"{vm.name} ({e.message})")
                continue
            if rewrite_vm(core, vm, {"state": "start", "node": target, "lastnode": vm.last_node or node}):
                moved.append(f"{vm.name} → {target}")
        elif vm.node != node and vm.state == "migrate" and vm.uuid in was_here:
            if rewrite_vm(core, vm, {"state": "start"}):  # its target starts it
                moved.append(f"{vm.name} → {vm.node}")
    return moved, stranded


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
