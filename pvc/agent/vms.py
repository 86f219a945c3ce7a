"""Carrying out the wanted state of VMs on this node (the original's §4.4, fixed).

Each VM is reconciled on its own thread, one at a time per VM: the wanted state and node are
read from the tree, the actual state from the hypervisor, and the difference is acted on. A
watch on the VM's keys, a hypervisor event or the keepalive "kicks" a VM; a kick during an action
is remembered and the VM is reconciled again afterwards. So a 90-second shutdown of one VM never
delays another, and a new request (a stop during a shutdown) interrupts the wait at once.

What each agent does with a VM (``node`` is the VM's node in the tree):

================  ==================  ===============================================================
node              active here?        action
================  ==================  ===============================================================
this node         no, state start     start it from the stored XML; a refusal → ``failed`` + reason
this node         any, migrate        wait for the source to say it is done (state ``start``); at the
                                      deadline: ``start`` if it runs here, else ``failed``
this node         any, restart        shut down (deadline, then forced off), start, state ``start``
this node         any, shutdown       shut down (deadline, then forced off), state ``stop``
this node         yes, stop           forced off
another node      yes, migrate        live migration, then state ``start``; when impossible or failed,
                                      shut down here and hand over (state ``start``: the target
                                      starts it); a target that is not alive: back to this node
another node      yes, shutdown       shut down here
another node      yes, anything else  forced off: it must not run in two places
undefined         yes                 forced off and undefined
================  ==================  ===============================================================
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from pvc.agent.coordinator import rewrite_vm
from pvc.agent.hypervisor import HypervisorError, HypervisorUnavailable, MigrationUnsupported
from pvc.lib import schema
from pvc.lib.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, PvcError, quote
from pvc.lib.store import Set
from pvc.lib.node_records import why_not_alive
from pvc.lib.vm_records import Vm, read_vms, vm_uuids
from pvc.lib.vm_xml import canonical_uuid, read

if TYPE_CHECKING:
    from pvc.agent.daemon import Agent

log = logging.getLogger("pvc.agent.vms")

FIELDS = ("state", "node", "lastnode", "failedreason", "xml")
#: Longest wait between looks at a domain while waiting for it (events normally wake us first).
RECHECK = 1.0


@dataclass
class _Task:
    """The thread reconciling one VM, and what happened since it last looked."""

    dirty: bool = True
    changed: threading.Event = field(default_factory=threading.Event)


class Interrupted(Exception):
    """The VM's wanted state changed (or the agent is stopping) during a wait: look again."""


class VmController:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.core = agent.core
        self.hv = agent.hv
        self.name = agent.name
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        #: VMs this agent saw in the tree that are gone from it: their domains are stopped here.
        self._undefined: set[str] = set()

    # -- scheduling ---------------------------------------------------------------------------
    def kick(self, uuid: str) -> None:
        """Reconcile ``uuid`` soon (now, or again once the action in progress ends)."""
        if self.agent.stopping.is_set():
            return
        with self._lock:
            task = self._tasks.get(uuid)
            if task is not None:
                task.dirty = True
                task.changed.set()
                return
            task = self._tasks[uuid] = _Task()
        threading.Thread(target=self._run, args=(uuid, task), name=f"pvc-vm-{uuid[:8]}", daemon=True).start()

    def forget(self, uuid: str) -> None:
        """The VM's keys are gone from the tree: stop its domain here if it runs."""
        with self._lock:
            self._undefined.add(uuid)
        self.kick(uuid)

    def busy(self) -> int:
        with self._lock:
            return len(self._tasks)

    def join(self, timeout: float) -> bool:
        """Wait until no VM is being acted on (after wake_all); False at the deadline."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while self.busy():
            if time.monotonic() > deadline:
                return False
            pause.wait(0.01)
        return True

    def wake_all(self) -> None:
        """Interrupt every wait (the agent is stopping)."""
        with self._lock:
            for task in self._tasks.values():
                task.changed.set()

    def _run(self, uuid: str, task: _Task) -> None:
        while True:
            with self._lock:
                if not task.dirty or self.agent.stopping.is_set():
                    del self._tasks[uuid]
                    return
                task.dirty = False
                task.changed.clear()
            try:
                self.reconcile(uuid, task)
            except Interrupted:
                pass
            except HypervisorUnavailable as e:
                self.agent.report_hypervisor(e)
            except HypervisorError as e:
                log.warning("VM %s: %s (looked at again on the next change or keepalive)", uuid, e)
            except PvcError as e:  # the store is unreachable, or the VM changed under us
                log.warning("VM %s: %s (looked at again on the next change or keepalive)", uuid, e.message)
            except Exception:
                log.exception("VM %s: unexpected failure", uuid)

    # -- reconciling --------------------------------------------------------------------------
    def _read(self, uuid: str) -> Vm | None:
        found = read_vms(self.core, [uuid], FIELDS)
        return found[0] if found else None

    def reconcile(self, uuid: str, task: _Task) -> None:
        if not self.agent.hypervisor_ok():
            return  # the keepalive kicks every VM again once the hypervisor is back
        vm = self._read(uuid)
        active = self.hv.is_active(uuid)
        if vm is None:
            with self._lock:
                gone = uuid in self._undefined
                self._undefined.discard(uuid)
            if gone:  # only domains pvc knew: never one an administrator runs by hand
                if active:
                    self.hv.destroy(uuid)
                    log.info("VM %s was undefined; stopped its domain", uuid)
                self.hv.undefine(uuid)
            return
        state, name = vm.state, quote(vm.name)
        if vm.node == self.name:
            if state == "start" and not active:
                self._start(vm)
            elif state == "migrate":
                # Only the source knows when a live migration is done: an incoming domain is
                # active (paused) before it completes, and gone again if it fails.
                self._receive(vm, task)
            elif state == "restart":
                if active:
                    self._shut_down(vm, task)
                if self._start(vm):
                    self._set_state(vm, "start")
            elif state == "shutdown":
                if active:
                    self._shut_down(vm, task)
                self._set_state(vm, "stop")
            elif state == "stop" and active:
                self.hv.destroy(uuid)
                self.hv.undefine(uuid)
                self.agent.figures_changed()
                log.info("VM %s stopped", name)
        elif active:
            if state == "migrate":
                self._migrate_out(vm, task)
            elif state == "shutdown":
                self._shut_down(vm, task)
            else:
                # Its node is another: it must not run here too (two copies writing one disk).
                self.hv.destroy(uuid)
                self.hv.undefine(uuid)
                self.agent.figures_changed()
                log.warning("VM %s ran here although its node is %s; stopped it", name, quote(vm.node))

    def _set_state(self, vm: Vm, state: str, reason: str | None = None) -> bool:
        """Write the VM's state at the version read; False when it changed meanwhile (the watch
        then brings the VM back here with the new wish)."""
        ops = [Set(schema.domain_key(vm.uuid, "state"), state, vm.version("state"))]
        if reason is not None and vm.version("failedreason") is not None:
            ops.append(Set(schema.domain_key(vm.uuid, "failedreason"), reason))
        try:
            self.core.store.commit(ops)
            return True
        except (Conflict, NotFound, AlreadyExists):
            return False

    def _start(self, vm: Vm) -> bool:
        """Start the VM from its stored XML; on a refusal, state ``failed`` with the reason."""
        xml = vm.value("xml") or ""
        try:
            # Exactly the document pvc checked: libvirt gets the same text (UTF-8, no DOCTYPE).
            doc = read(xml)
            if canonical_uuid(doc.uuid or "") != vm.uuid:
                raise InvalidArgument(f"Invalid VM XML: its <uuid> is {quote(doc.uuid)}, not the VM's {vm.uuid}.")
            self.hv.start(vm.uuid, xml)
        except (InvalidArgument, HypervisorError) as e:
            reason = e.message if isinstance(e, InvalidArgument) else str(e)
            log.warning("VM %s failed to start: %s", quote(vm.name), reason)
            self._set_state(vm, "failed", reason)
            return False
        log.info("VM %s started", quote(vm.name))
        if vm.value("failedreason"):
            try:
                self.core.store.commit([Set(schema.domain_key(vm.uuid, "failedreason"), "")])
            except PvcError:
                pass
        self.agent.figures_changed()
        return True

    def _changed(self, vm: Vm) -> bool:
        """Whether the VM's wanted state or node differs from ``vm`` (as read)."""
        now = read_vms(self.core, [vm.uuid], ("state", "node"))
        if not now:
            return True
        return now[0].version("state") != vm.version("state") or now[0].node != vm.node

    def _wait(self, vm: Vm, task: _Task, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()``; False at the deadline. Interrupted when the VM's wish changes."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.agent.stopping.is_set():
                raise Interrupted()
            if task.dirty and self._changed(vm):
                raise Interrupted()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            task.changed.wait(min(remaining, RECHECK))
            task.changed.clear()
        return True

    def _shut_down(self, vm: Vm, task: _Task) -> None:
        """Graceful shutdown; forced off after the deadline (a guest may ignore ACPI)."""
        timeout = self.core.settings.shutdown_timeout
        self.hv.shutdown(vm.uuid)
        log.info("VM %s shutting down", quote(vm.name))
        if not self._wait(vm, task, lambda: not self.hv.is_active(vm.uuid), timeout):
            log.warning("VM %s did not shut down within %g s; forcing it off", quote(vm.name), timeout)
            self.hv.destroy(vm.uuid)
        self.hv.undefine(vm.uuid)
        self.agent.figures_changed()

    def _receive(self, vm: Vm, task: _Task) -> None:
        """The VM is being migrated here: its source writes ``start`` once a live migration is
        done, or once it shut the VM down for a cold move (then this agent starts it). Neither
        within the deadline: ``start`` if the VM runs here (the source went quiet after a live
        migration), else ``failed``."""
        settings = self.core.settings
        timeout = settings.migration_timeout + settings.shutdown_timeout + 2 * settings.keepalive_interval
        self._wait(vm, task, lambda: False, timeout)
        if self.hv.is_running(vm.uuid):
            self._set_state(vm, "start")
            log.info("VM %s arrived here (its source did not report it)", quote(vm.name))
            self.agent.figures_changed()
            return
        reason = f"The migration to {self.name} did not complete within {timeout:g} s."
        log.warning("VM %s: %s", quote(vm.name), reason)
        self._set_state(vm, "failed", reason)

    def _migrate_out(self, vm: Vm, task: _Task) -> None:
        settings = self.core.settings
        target = vm.node or ""
        name = quote(vm.name)
        why = why_not_alive(self.core, target)
        if why is None:
            uri = settings.migration_target_uri.format(node=target)
            data = settings.migration_data_uri.format(node=target) if settings.migration_data_uri else None
            try:
                started = time.monotonic()
                self.hv.migrate(vm.uuid, uri, data, settings.migration_timeout)
                log.info("VM %s live-migrated to %s in %.2f s", name, quote(target), time.monotonic() - started)
                self.agent.figures_changed()
                self._set_state(vm, "start")
                return
            except MigrationUnsupported as e:
                log.info("VM %s moves to %s cold (%s)", name, quote(target), e)
            except HypervisorError as e:
                log.warning("VM %s: %s; moving it cold", name, e)
            why = why_not_alive(self.core, target)
        if why is not None:
            # Never hand a VM to a node that cannot run it: it stays here, where it runs.
            lastnode = "" if vm.last_node == self.name else vm.last_node
            if rewrite_vm(self.core, vm, {"state": "start", "node": self.name, "lastnode": lastnode}):
                log.warning("VM %s stays on %s: its target %s is not alive (%s)", name, quote(self.name),
                            quote(target), why)
            return
        self._shut_down(vm, task)
        # Hand over at the version read: a newer wish (stop, another target) wins.
        if self._set_state(vm, "start"):
            log.info("VM %s handed over to %s", name, quote(target))

    # -- the keepalive's look at every VM -----------------------------------------------------
    def check_all(self, active: set[str]) -> set[str]:
        """Kick the VMs whose domain is not as the tree wants it; return the UUIDs of the pvc
        VMs that run here (the node's ``runningdomains``)."""
        vms = read_vms(self.core, vm_uuids(self.core), ("state", "node"))
        mine = set()
        for v in vms:
            here = v.uuid in active
            if here:
                mine.add(v.uuid)
            if v.node == self.name:
                if (v.state == "start") != here or v.state in ("restart", "shutdown", "migrate"):
                    self.kick(v.uuid)
            elif here:
                self.kick(v.uuid)
        return mine
