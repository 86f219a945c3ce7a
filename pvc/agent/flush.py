"""Flush and ready (the original's §4.5.2, fixed): emptying this node of its running VMs, and
bringing them back.

A client writes ``flush`` or ``unflush`` to the node's ``domainstate``; this node's agent does the
work and reports ``flushed`` or ``ready``. Several VMs move at a time (``flush_parallel``); every
wait has a deadline, so a VM that fails to move never hangs the flush (the original waited for
ever); a VM that no node can take is shut down. A new request stops the one in progress between
VMs. The outcome is always a clear state, with what went wrong in the node's ``problem``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

from pvc.agent.coordinator import rewrite_vm
from pvc.lib import schema
from pvc.lib.errors import AlreadyExists, Conflict, InvalidState, NotFound, PvcError, quote
from pvc.lib.placement import select_node
from pvc.lib.store import Entry, Set
from pvc.lib.vm_records import Vm, read_vms, vm_uuids

if TYPE_CHECKING:
    from pvc.agent.daemon import Agent

log = logging.getLogger("pvc.agent.flush")


class Cancelled(Exception):
    """A newer request replaced the one in progress."""


class DomainStateWorker:
    """Runs flush and ready requests for this node, one at a time, on a thread of its own."""

    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.core = agent.core
        self.name = agent.name
        self._event = threading.Event()
        self._request: Entry | None = None
        self._thread = threading.Thread(target=self._loop, name="pvc-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._event.set()  # a request written while the agent was down is carried out now

    def stop(self) -> None:
        self._event.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():  # never started when the agent failed to start
            self._thread.join(timeout)

    def changed(self) -> None:
        """The node's domainstate changed (watch callback: only wake the thread)."""
        self._event.set()

    def _key(self) -> str:
        return schema.node_key(self.name, "domainstate")

    def _current(self) -> Entry | None:
        return self.core.store.get_many([self._key()])[self._key()]

    def _check(self) -> None:
        """Between VMs: stop when the agent stops or a new request replaced ours."""
        if self.agent.stopping.is_set():
            raise Cancelled()
        current = self._current()
        if self._request is None or current is None or current.version != self._request.version:
            raise Cancelled()

    def _loop(self) -> None:
        retry: float | None = None  # a request that failed is tried again after an interval
        while not self.agent.stopping.is_set():
            self._event.wait(None if retry is None else max(retry - time.monotonic(), 0))
            self._event.clear()
            retry = None
            if self.agent.stopping.is_set():
                return
            try:
                request = self._current()
                if request is None or request.value not in ("flush", "unflush"):
                    continue
                self._request = request
                if request.value == "flush":
                    self._run("flushed", self._flush)
                else:
                    self._run("ready", self._ready)
            except PvcError as e:
                log.warning("Flush/ready of %s: %s (trying again)", quote(self.name), e.message)
                retry = time.monotonic() + self.core.settings.keepalive_interval
            except Exception:
                log.exception("Flush/ready of %s failed (trying again)", quote(self.name))
                retry = time.monotonic() + self.core.settings.keepalive_interval

    def _run(self, done: str, work: Callable[[], list[str]]) -> None:
        what = "Flush" if done == "flushed" else "Ready"
        log.info("%s of node %s started", what, quote(self.name))
        try:
            problems = work()
        except Cancelled:
            why = "the agent stops" if self.agent.stopping.is_set() else "a newer request replaced it"
            log.info("%s of node %s stopped: %s", what, quote(self.name), why)
            return
        if self.agent.stopping.is_set():
            return
        # The node's running domains first, so that whoever sees the outcome sees them current;
        # then the outcome, at the version of the request: a newer request is not overwritten.
        self.agent.publish()
        assert self._request is not None
        try:
            self.core.store.commit([Set(self._key(), done, self._request.version)])
        except (Conflict, NotFound, AlreadyExists):
            log.info("%s of node %s done, but a newer request came meanwhile", what, quote(self.name))
            self._event.set()
            return
        log.info("%s of node %s done: %s%s", what, quote(self.name), done, f" ({'; '.join(problems)})" if problems else "")

    # -- the work -----------------------------------------------------------------------------
    def _each(self, vms: list[Vm], move: Callable[[Vm], str | None]) -> list[str]:
        """Run ``move`` for each VM, ``flush_parallel`` at a time; the problems it reported."""
        problems: list[str] = []

        def one(vm: Vm) -> None:
            try:
                self._check()
                problem = move(vm)
            except Cancelled:
                raise
            except PvcError as e:  # a deadline, the store lost: this VM's problem, not the flush's end
                problem = f"{vm.name}: {e.message}"
            except Exception as e:
                log.exception("Flush/ready of %s: VM %s", quote(self.name), quote(vm.name))
                problem = f"{vm.name}: {type(e).__name__}: {e}"
            if problem:
                problems.append(problem)

        with ThreadPoolExecutor(max_workers=self.core.settings.flush_parallel,
                                thread_name_prefix="pvc-flush-vm") as pool:
            futures = [pool.submit(one, vm) for vm in vms]
            cancelled = False
            for f in futures:
                try:
                    f.result()
                except Cancelled:
                    cancelled = True
            if cancelled:
                raise Cancelled()
        return problems

    def _deadline(self) -> float:
        s = self.core.settings
        return s.migration_timeout + s.shutdown_timeout + 2 * s.keepalive_interval

    def _wait_settled(self, vm: Vm, settled: Callable[[Vm], bool], target: str | None = None) -> Vm:
        """Wait (watch, with a deadline) until the VM's keys satisfy ``settled``; with
        ``target``, a VM in state ``start`` on it is settled only once the target's agent
        reports it running (a VM handed over cold may still fail to start there)."""
        keys = [schema.domain_key(vm.uuid, f) for f in ("state", "node")]
        running_key = schema.node_key(target, "runningdomains") if target else None
        if running_key:
            keys.append(running_key)
        latest: list[Vm] = [vm]

        def check() -> bool:
            found = read_vms(self.core, [vm.uuid], ("state", "node", "lastnode"))
            if not found:
                return True  # undefined meanwhile: nothing left to move
            latest[0] = v = found[0]
            if self.agent.stopping.is_set():
                raise Cancelled()  # never "moved" because the agent stops
            if not settled(v):
                return False
            if running_key and v.state == "start" and v.node == target:
                running = self.core.store.get_many([running_key])[running_key]
                return running is not None and vm.uuid in running.value.split()
            return True

        self.core.store.wait_for(keys, check, self._deadline(),
                                 describe=lambda: f"it is still {latest[0].state} on {latest[0].node}")
        return latest[0]

    def _flush(self) -> list[str]:
        vms = [v for v in read_vms(self.core, vm_uuids(self.core), ("state", "node", "lastnode"))
               if v.node == self.name and v.state in ("start", "restart", "migrate")]
        return self._each(vms, self._move_away)

    def _move_away(self, vm: Vm) -> str | None:
        if vm.state != "start":  # restarting or arriving: let it settle here first
            vm = self._wait_settled(vm, lambda v: v.state not in ("restart", "migrate") or v.node != self.name)
            if vm.node != self.name or vm.state != "start":
                return None
        try:
            target = select_node(self.core, None, exclude=self.name)
        except InvalidState as e:
            log.info("Flush of %s: no node can take VM %s; shutting it down", quote(self.name), quote(vm.name))
            if not self._write(vm, {"state": "shutdown"}):
                return f"{vm.name} changed meanwhile; left as it is"
            self._wait_settled(vm, lambda v: v.state != "shutdown" or v.node != self.name)
            return f"{vm.name} shut down ({e.message.rstrip('.')})"
        if not self._write(vm, {"state": "migrate", "node": target, "lastnode": vm.last_node or self.name}):
            return f"{vm.name} changed meanwhile; left as it is"
        done = self._wait_settled(vm, lambda v: v.state != "migrate", target)
        if done.state == "failed":
            return f"{vm.name} failed to move to {target}"
        log.info("Flush of %s: VM %s moved to %s", quote(self.name), quote(vm.name), quote(target))
        return None

    def _ready(self) -> list[str]:
        vms = [v for v in read_vms(self.core, vm_uuids(self.core), ("state", "node", "lastnode"))
               if v.last_node == self.name]
        return self._each(vms, self._bring_back)

    def _bring_back(self, vm: Vm) -> str | None:
        if vm.node == self.name:  # already here (a stopped VM re-homed before)
            self._write(vm, {"lastnode": ""})
            return None
        if vm.state in ("restart", "migrate", "shutdown"):
            vm = self._wait_settled(vm, lambda v: v.state not in ("restart", "migrate", "shutdown"))
        if vm.state != "start":
            # A stopped or failed VM is only re-homed (the original set it to migrate: D4).
            self._write(vm, {"node": self.name, "lastnode": ""})
            return None
        if not self._write(vm, {"state": "migrate", "node": self.name, "lastnode": ""}):
            return f"{vm.name} changed meanwhile; left where it is"
        done = self._wait_settled(vm, lambda v: v.state != "migrate", self.name)
        if done.state == "failed":
            return f"{vm.name} failed to come back"
        log.info("Ready of %s: VM %s is back", quote(self.name), quote(vm.name))
        return None

    def _write(self, vm: Vm, values: dict[str, str]) -> bool:
        return rewrite_vm(self.core, vm, values)
