"""The node agent itself: registration, keepalive, and the wiring of its workers.

Threads: one control thread (keepalives, the coordinator's duties, following ``/primary_node``),
one for flush and ready, one per VM while that VM is being acted on, and the command worker's
(one dispatcher, one thread per command being carried out, :mod:`pvc.agent.commands`). Store watches only wake
them: nothing slow runs on a watch callback. ``stop()`` ends them all within a bound, leaves the
VMs running (an agent restart must not stop guests) and reports ``stop``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

from pvc.agent import ceph as _ceph_handlers  # noqa: F401  (registers the Ceph commands' handlers)
from pvc.agent import host
from pvc.agent.ceph_figures import CephFigures
from pvc.agent.commands import CommandWorker
from pvc.agent.coordinator import check_nodes, follow_primary, release_primary
from pvc.agent.flush import DomainStateWorker
from pvc.agent.hypervisor import Hypervisor, HypervisorError
from pvc.agent.vms import VmController
from pvc.lib import schema
from pvc.lib.config_values import split_host_port
from pvc.lib.core import Cluster
from pvc.lib.errors import PvcError, quote
from pvc.lib.node_reports import NodeFigures, publish_figures, register_node
from pvc.lib.ops.node import this_node
from pvc.lib.store import WatchHandle
from pvc.lib.vm_records import vm_uuids

log = logging.getLogger("pvc.agent")

#: Least time between two publications of the figures outside the keepalive (a burst of VM
#: starts is published once, not once per VM).
FIGURES_SPACING = 0.2


def is_coordinator(core: Cluster, name: str, local: bool) -> bool:
    """pvc.node.coordinator when set; else whether the node is one of the coordinators' hosts
    (on the embedded store, the local node is the cluster's only coordinator)."""
    if core.settings.node_coordinator is not None:
        return core.settings.node_coordinator
    if local:
        return True
    return any(split_host_port(h)[0].split(".")[0] == name for h in core.settings.coordinators)


class Agent:
    """One node's agent. ``start()`` registers the node and starts the work; ``stop()`` ends it."""

    def __init__(self, core: Cluster, name: str | None = None, hypervisor: Hypervisor | None = None,
                 local: bool = False):
        settings = core.settings
        self.core = core
        self.name = schema.validate_name("node", name or settings.node_name or this_node())
        self.local = local
        self.coordinator = is_coordinator(core, self.name, local)
        if hypervisor is None:
            from pvc.agent.libvirt_hv import LibvirtHypervisor

            hypervisor = LibvirtHypervisor(settings.libvirt_uri, settings.migration_unsafe)
        self.hv = hypervisor
        self.stopping = threading.Event()
        #: True once the first keepalive said ``run``.
        self.running = False
        self.vms = VmController(self)
        self.domain_state = DomainStateWorker(self)
        self.commands = CommandWorker(core, self.name, self.stopping)
        self._wake = threading.Event()
        self._wake_at: float | None = None
        #: When this node was made secondary by someone else (it then holds back from claiming).
        self.demoted_at = float("-inf")
        #: Each other node's keepalive version and when this agent saw it change (its own clock).
        self.keepalives: dict[str, tuple[int | None, float]] = {}
        self._figures_due = False
        self._vms_due = True
        self._hv_problem: str | None = "the hypervisor is not connected yet"
        self._store_problem: str | None = None
        self._watched: dict[str, WatchHandle] = {}
        self._publish_lock = threading.Lock()
        self._handles: list[WatchHandle] = []
        self._control = threading.Thread(target=self._loop, name=f"pvc-agent-{self.name}", daemon=True)
        #: Ceph's figures, on a thread of their own (each `ceph` call takes ~0.3 s): only where
        #: Ceph is installed or configured.
        self._ceph: threading.Thread | None = None
        if settings.ceph_config or shutil.which("ceph"):
            figures = CephFigures(core, self.name, settings, self.is_primary)
            self._ceph = threading.Thread(target=figures.loop, args=(self.stopping,), name=f"pvc-ceph-{self.name}",
                                          daemon=True)

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Register the node, connect the hypervisor, watch the tree and start the workers.
        Raises a PvcError when the store cannot be used (nothing is left running then)."""
        store = self.core.store
        new = register_node(self.core, self.name, host.facts(), coordinator=self.coordinator,
                            new_domain_state="ready" if self.local else "flushed")
        log.info("Node %s registered%s as a %s; hypervisor %s", quote(self.name), " (new)" if new else "",
                 "coordinator" if self.coordinator else "hypervisor", self.hv.uri)
        self.hv.on_change(self._hypervisor_event)
        self._connect()
        try:
            self._handles.append(store.watch([schema.PRIMARY_NODE], lambda _p: self.wake()))
            self._handles.append(store.watch([schema.node_key(self.name, "domainstate")],
                                             lambda _p: self.domain_state.changed()))
            self._handles.append(store.watch([schema.DOMAINS], self._domains_changed, children=True))
            self.commands.start()
        except PvcError:
            self._cancel_watches()
            self.hv.close()
            try:  # a clean stop: a node left `init` would be taken for crashed and fenced
                self._report("stop")
            except PvcError:
                pass
            raise
        self.domain_state.start()
        self._control.start()
        if self._ceph is not None:
            self._ceph.start()

    def stop(self, timeout: float = 10.0, clean: bool = True) -> None:
        """Stop the work, hand over the primary role, report ``stop``. VMs keep running.

        ``clean=False`` writes nothing to the store, as a killed process would not: the node
        then looks like one that crashed (its coordinators mark it dead and fence it)."""
        if self.stopping.is_set():
            return
        log.info("Node agent %s stopping%s", quote(self.name), "" if clean else " without reporting it")
        self.stopping.set()
        self._wake.set()
        self.domain_state.stop()
        self.vms.wake_all()
        deadline = time.monotonic() + timeout
        if self._control.is_alive():
            self._control.join(max(deadline - time.monotonic(), 0.1))
        self.domain_state.join(max(deadline - time.monotonic(), 0.1))
        self.vms.join(max(deadline - time.monotonic(), 0.1))  # before the hypervisor closes
        self.commands.stop(max(deadline - time.monotonic(), 0.1))
        if self._ceph is not None and self._ceph.is_alive():
            self._ceph.join(max(deadline - time.monotonic(), 0.1))
        self._cancel_watches()
        if not clean:
            self.hv.close()
            return
        try:
            self._report("shutdown")
            if release_primary(self, self.name):
                log.info("Node %s handed over the primary coordinator role", quote(self.name))
            if self.coordinator:
                self.core.store.write({schema.node_key(self.name, "routerstate"): "secondary"})
            self._report("stop")
        except PvcError as e:
            log.warning("Node %s could not report its stop: %s", quote(self.name), e.message)
        self.hv.close()
        log.info("Node agent %s stopped", quote(self.name))

    def is_primary(self) -> bool:
        """Whether /primary_node names this node (False when the store cannot say)."""
        try:
            return self.core.store.get(schema.PRIMARY_NODE).value == self.name
        except PvcError:
            return False

    def _report(self, state: str) -> None:
        self.core.store.write({schema.node_key(self.name, "daemonstate"): state})

    def _cancel_watches(self) -> None:
        for handle in self._handles + list(self._watched.values()):
            handle.cancel()
        self._handles = []
        self._watched = {}

    # -- notifications (callbacks: quick, no store calls) -------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def wake_at(self, when: float) -> None:
        """Run the control loop again at ``when`` (monotonic), before the next keepalive."""
        self._wake_at = when if self._wake_at is None else min(self._wake_at, when)

    def figures_changed(self) -> None:
        """A VM started or stopped here: publish the figures soon, not at the next keepalive."""
        self._figures_due = True
        self._wake.set()

    def _domains_changed(self, _path: str) -> None:
        self._vms_due = True
        self._wake.set()

    def _hypervisor_event(self, uuid: str) -> None:
        self.vms.kick(uuid)
        self.figures_changed()

    # -- the hypervisor -----------------------------------------------------------------------
    def hypervisor_ok(self) -> bool:
        return self._hv_problem is None

    def _connect(self) -> None:
        try:
            self.hv.connect()
        except HypervisorError as e:
            self.report_hypervisor(e)
            return
        if self._hv_problem is not None and self._hv_problem != "the hypervisor is not connected yet":
            log.info("Hypervisor %s is reachable again", self.hv.uri)
        self._hv_problem = None

    def report_hypervisor(self, error: HypervisorError) -> None:
        """One log line per problem (not per attempt); the node then takes no VMs."""
        problem = f"hypervisor {self.hv.uri} unavailable: {error}"
        if problem != self._hv_problem:
            log.error("Node %s: %s; it takes no VMs until that is fixed", quote(self.name), problem)
        self._hv_problem = problem
        self._wake.set()

    # -- the control thread -------------------------------------------------------------------
    def _loop(self) -> None:
        interval = self.core.settings.keepalive_interval
        next_keepalive = time.monotonic()
        last_publish = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                if self._vms_due:
                    self._vms_due = False
                    self._sync_vms()
                if now >= next_keepalive:
                    next_keepalive = now + interval
                    self._keepalive()
                    last_publish = now
                elif self._figures_due and now - last_publish >= FIGURES_SPACING:
                    self._publish()
                    last_publish = now
                if self.running:
                    follow_primary(self)
                if self._store_problem is not None:
                    log.info("The store is reachable again")
                    self._store_problem = None
            except PvcError as e:
                if e.message != self._store_problem:
                    log.error("Node %s: %s (retrying every keepalive)", quote(self.name), e.message)
                self._store_problem = e.message
                self._vms_due = True
            except Exception:
                log.exception("Node %s: keepalive failed", quote(self.name))
            wake_at = next_keepalive
            if self._figures_due:  # a burst of VM changes publishes once per FIGURES_SPACING
                wake_at = min(wake_at, last_publish + FIGURES_SPACING)
            if self._wake_at is not None:
                wake_at, self._wake_at = min(wake_at, self._wake_at), None
            self._wake.wait(max(wake_at - time.monotonic(), 0))
            self._wake.clear()

    def _sync_vms(self) -> None:
        """Watch the keys of every VM in the tree (new ones are looked at at once)."""
        uuids = set(vm_uuids(self.core))
        for uuid in sorted(uuids - set(self._watched)):
            keys = [schema.domain_key(uuid, "state"), schema.domain_key(uuid, "node")]
            self._watched[uuid] = self.core.store.watch(keys, lambda _p, u=uuid: self.vms.kick(u))
            self.vms.kick(uuid)
        for uuid in sorted(set(self._watched) - uuids):
            self._watched.pop(uuid).cancel()
            self.vms.forget(uuid)

    def _keepalive(self) -> None:
        if not self.hypervisor_ok():
            self._connect()
        self._publish()
        if self.coordinator and self.running:
            check_nodes(self)

    def publish(self) -> None:
        """Publish the figures now (so ``runningdomains`` is current before a flush reports)."""
        self._publish()

    def _publish(self) -> None:
        """One keepalive: the figures, ``run`` and the time, in one atomic write."""
        if self.stopping.is_set():
            return  # a keepalive after stop() began would say `run` again
        with self._publish_lock:
            self._publish_locked()

    def _publish_locked(self) -> None:
        self._figures_due = False
        active = {}
        running: set[str] = set()
        if self.hypervisor_ok():
            try:
                active = self.hv.active()
                running = self.vms.check_all(set(active))
            except HypervisorError as e:
                self.report_hypervisor(e)
        total, used, free = host.memory_mib()
        figures = NodeFigures(
            memtotal=total, memused=used, memfree=free,
            memalloc=sum(d.memory_mib for d in active.values()),
            vcpualloc=sum(d.vcpus for d in active.values()),
            cpuload=host.load(),
            domainscount=len(active),
            running_domains=tuple(sorted(running)),
        )
        publish_figures(self.core, self.name, figures, daemon_state="run", problem=self._hv_problem or "")
        if not self.running:
            self.running = True
            log.info("Node %s is running", quote(self.name))
