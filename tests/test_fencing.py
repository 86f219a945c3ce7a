"""Fencing a dead node through its BMC, on both engines: real agents (tests/agent_fixtures.py)
and one OpenIPMI ``ipmi_sim`` per fenced node (tests/bmc_sim.py), driven by the real ipmitool.

A node whose agent crashed (``crash``: no more keepalives, its daemon state left ``run``) is
dead after interval × fence_intervals = 3 s (as a real dead node is: a cleanly stopped agent
reports ``stop``). Every ipmitool call the agents make goes through a wrapper first on PATH that
logs its argv, so the tests can check that the password is never on a command line. No sleeps:
every wait polls with a deadline.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import pvc.agent.daemon
from pvc.lib.config import Bmc
from tests.agent_fixtures import AgentCluster, agents, until, uuid_of  # noqa: F401
from tests.bmc_sim import HOST, USER, BmcSims, IpmitoolSpy, bmc_sims, silent_bmc  # noqa: F401

#: Dead after 3 s, then a fence: against a simulator it takes ~0.2 s; against a BMC that does not
#: answer, the first ipmitool call fails after ~6 s (-N 1 -R 2).
FENCED_WITHIN = 10.0
UNANSWERED_WITHIN = 20.0


@pytest.fixture
def spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IpmitoolSpy:
    """The agents' ipmitool is this wrapper (fencing.py passes the process's PATH on)."""
    wrapper = IpmitoolSpy(tmp_path / "spy")
    monkeypatch.setenv("PATH", f"{wrapper.dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    return wrapper


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="pvc")
    return caplog


class Checks:
    """Counts each agent's coordinator checks of the other nodes; ``align(names)`` makes those
    coordinators enter each check together (a barrier), so they race for the same dead node
    with the same versions read, as coordinators whose clocks tick together would."""

    def __init__(self) -> None:
        self.done: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._aligned: frozenset[str] = frozenset()
        self._barrier: threading.Barrier | None = None

    def align(self, names: tuple[str, ...]) -> None:
        with self._lock:
            self._aligned = frozenset(names)
            self._barrier = threading.Barrier(len(names), timeout=2.0)

    def _rendezvous(self, name: str) -> None:
        with self._lock:
            barrier = self._barrier if name in self._aligned else None
        if barrier is None:
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:  # one was late (bounded by the timeout): start again
            with self._lock:
                if self._barrier is barrier:
                    self._barrier = threading.Barrier(barrier.parties, timeout=2.0)

    def wrap(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        def check_nodes(agent: Any) -> None:
            self._rendezvous(agent.name)
            try:
                original(agent)
            finally:
                self.done[agent.name] += 1

        return check_nodes


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Checks:
    found = Checks()
    monkeypatch.setattr(pvc.agent.daemon, "check_nodes", found.wrap(pvc.agent.daemon.check_nodes))
    return found


def crash(agents: AgentCluster, node: str) -> None:
    """End ``node``'s agent as a crash or a power loss would: its daemon state stays ``run`` and
    its keepalive just stops (a clean ``stop()`` would report ``stop``). Its domains keep running
    in its private hypervisor, as they would on a hung host."""
    agents.crash(node)


def record_starts(agents: AgentCluster, node: str, seen: Callable[[], Any]) -> list[tuple[str, float, Any]]:
    """Wrap ``node``'s hypervisor start: each start records (uuid, time, ``seen()`` at that moment)."""
    hv = agents.agents[node].hv
    original = hv.start
    starts: list[tuple[str, float, Any]] = []

    def start(uuid: str, xml: str) -> None:
        starts.append((uuid, time.time(), seen()))
        original(uuid, xml)

    hv.start = start  # type: ignore[method-assign]
    return starts


def problem_of(agents: AgentCluster, node: str, timeout: float) -> str:
    """The dead node's problem, once the coordinator has written the fence's outcome."""
    until(lambda: agents.node(node)["daemon_state"] == "dead", timeout=timeout, what=f"{node} dead")
    return agents.outcome(node, timeout)


def assert_secret_kept(agents: AgentCluster, password: str, spy: IpmitoolSpy, logs: pytest.LogCaptureFixture,
                       calls: int) -> None:
    """The password is in no key or value of the tree, no log record and no ipmitool argv;
    ipmitool got it in its environment (-E) for each of the ``calls`` it was run."""
    store = agents.core.store
    paths = store.subtree("/")
    assert len(paths) > 10
    entries = store.get_many(paths)
    for path in paths:
        assert password not in path
        entry = entries[path]
        assert entry is None or password not in (entry.value or ""), f"the BMC password is in {path}"
    assert password not in logs.text
    for record in logs.records:
        assert password not in record.getMessage() and password not in str(record.args)
    made = spy.calls()
    assert len(made) == calls, made
    for env_set, argv in made:
        assert env_set and "-E" in argv and "-P" not in argv and "-f" not in argv, argv
        assert not any(password in a for a in argv), argv


def test_a_fenced_nodes_vms_start_elsewhere_only_after_the_power_off(
        agents: AgentCluster, bmc_sims: BmcSims, spy: IpmitoolSpy, logs: pytest.LogCaptureFixture) -> None:
    sim = bmc_sims.start("hv2")
    agents.start("hv1", bmcs=(sim.bmc(),))  # successful_fence: migrate (the default)
    agents.start("hv2", coordinator=False)
    vm1, vm2 = agents.define("vm1", 1, "hv2"), agents.define("vm2", 2, "hv2")
    agents.define("vm3", 3, "hv2", start=False)
    starts = record_starts(agents, "hv1", lambda: sim.events())
    crash(agents, "hv2")

    problem = problem_of(agents, "hv2", FENCED_WITHIN)
    assert f"fenced (powered off through its BMC at {HOST}:{sim.port} and on again)" in problem, problem
    assert "its VMs were started elsewhere: vm1 → hv1, vm2 → hv1" in problem, problem
    for name in ("vm1", "vm2"):
        until(lambda name=name: agents.settled(name, "start", "hv1"), what=f"{name} started on hv1")
        assert agents.vm(name)["last_node"] == "hv2"
    vm3 = agents.vm("vm3")
    assert (vm3["node"], vm3["state"]) == ("hv2", "stop")  # a stopped VM is not started anywhere
    node = agents.node("hv2")
    assert node["daemon_state"] == "dead" and node["domain_state"] == "flushed"

    # The BMC: off, confirmed off, on again; exactly once.
    assert sim.commands() == ["set power 0", "get power", "set power 1"]
    assert sim.power() == "on"
    assert spy.commands(sim.port) == ["chassis power off", "chassis power status", "chassis power on"]
    # Each VM was started on hv1 after the BMC had switched hv2 off, never before.
    assert sorted(uuid for uuid, _, _ in starts) == sorted([vm1, vm2])
    off = next(e.time for e in sim.events() if e.command == "set power 0")
    for uuid, started, events in starts:
        assert "set power 0" in [e.command for e in events], f"{uuid} started before the power off"
        assert started > off
    assert_secret_kept(agents, sim.password, spy, logs, calls=3)


def test_successful_fence_none_fences_and_leaves_the_vms(
        agents: AgentCluster, bmc_sims: BmcSims, spy: IpmitoolSpy, logs: pytest.LogCaptureFixture) -> None:
    sim = bmc_sims.start("hv2")
    agents.start("hv1", bmcs=(sim.bmc(),), successful_fence="none")
    agents.start("hv2", coordinator=False)
    uuid = agents.define("vm1", 1, "hv2")
    crash(agents, "hv2")

    problem = problem_of(agents, "hv2", FENCED_WITHIN)
    assert "fenced (powered off" in problem and "not fenced" not in problem, problem
    assert "its VMs stay where they are (pvc.system.fencing.actions.successful_fence is none)" in problem
    assert sim.power_sets() == ["off", "on"]
    vm = agents.vm("vm1")
    assert (vm["node"], vm["state"]) == ("hv2", "start")
    assert uuid not in agents.active("hv1")
    assert agents.node("hv2")["domain_state"] == "flushed"
    assert_secret_kept(agents, sim.password, spy, logs, calls=3)


@pytest.mark.parametrize("failed_fence", ["none", "migrate"])
def test_a_bmc_that_does_not_answer(agents: AgentCluster, tmp_path: Path, spy: IpmitoolSpy,
                                     logs: pytest.LogCaptureFixture, failed_fence: str) -> None:
    """No simulator on the BMC's port (it is held, so nothing else answers there): no fence.
    The VMs stay (failed_fence none, the default) or start elsewhere (migrate)."""
    password_file = tmp_path / "hv2.password"
    password = "pwNeverAnswered1"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    with silent_bmc() as port:
        bmc = Bmc(node="hv2", host=HOST, user=USER, password_file=str(password_file), port=port)
        changes = {} if failed_fence == "none" else {"failed_fence": "migrate"}
        agents.start("hv1", bmcs=(bmc,), **changes)
        agents.start("hv2", coordinator=False)
        agents.define("vm1", 1, "hv2")
        crash(agents, "hv2")
        problem = problem_of(agents, "hv2", UNANSWERED_WITHIN)
    assert "not fenced: ipmitool chassis power off failed" in problem, problem
    assert "Unable to establish IPMI v2 / RMCP+ session" in problem, problem
    if failed_fence == "none":
        assert "its VMs stay where they are (pvc.system.fencing.actions.failed_fence is none)" in problem
        vm = agents.vm("vm1")
        assert (vm["node"], vm["state"]) == ("hv2", "start")
        assert uuid_of(1) not in agents.active("hv1")
    else:
        assert "its VMs were started elsewhere: vm1 → hv1" in problem, problem
        until(lambda: agents.settled("vm1", "start", "hv1"), what="vm1 started on hv1")
        assert agents.vm("vm1")["last_node"] == "hv2"
    assert agents.node("hv2")["domain_state"] == "flushed"
    assert spy.commands(port) == ["chassis power off"]  # nothing after a failed power off
    errors = [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR and "hv2" in r.getMessage()]
    assert any("Could not fence node 'hv2'" in m for m in errors), errors
    assert_secret_kept(agents, password, spy, logs, calls=1)


def test_one_fence_per_death_among_several_coordinators(
        agents: AgentCluster, bmc_sims: BmcSims, spy: IpmitoolSpy, logs: pytest.LogCaptureFixture,
        checks: Checks) -> None:
    """hv1, hv2 and hv3 are coordinators that all know the BMCs. hv4 (a hypervisor) dies with
    three coordinators alive, then hv3 with two: each BMC sees exactly one power off, although
    the live coordinators check the nodes at the same moments (aligned by a barrier)."""
    sims = {n: bmc_sims.start(n) for n in ("hv3", "hv4")}
    bmcs = tuple(s.bmc() for s in sims.values())
    for n in ("hv1", "hv2", "hv3"):
        agents.start(n, bmcs=bmcs)
    agents.start("hv4", coordinator=False, bmcs=bmcs)
    agents.define("vm1", 1, "hv4")

    for dead, alive in (("hv4", ("hv1", "hv2", "hv3")), ("hv3", ("hv1", "hv2"))):
        checks.align(alive)
        crash(agents, dead)
        problem = problem_of(agents, dead, FENCED_WITHIN)
        assert "fenced (powered off" in problem, problem
        # Each live coordinator has since run two more checks (so each saw the node dead), and
        # no fence of it is still running: any second fence would have reached the BMC by now.
        seen = dict(checks.done)
        until(lambda: all(checks.done[n] >= seen.get(n, 0) + 2 for n in alive),
              what="two more checks by each live coordinator")
        until(lambda: not any(t.name == f"pvc-fence-{dead}" and t.is_alive() for t in threading.enumerate()),
              what=f"the fence threads for {dead} to end")
        assert sims[dead].power_sets() == ["off", "on"], sims[dead].commands()
        assert spy.commands(sims[dead].port) == ["chassis power off", "chassis power status", "chassis power on"]
        warnings = [r.getMessage() for r in logs.records if r.getMessage().startswith(f"Node '{dead}' is dead")]
        assert len(warnings) == 1, warnings  # one coordinator marked it
    assert [(n, s.power_sets()) for n, s in sims.items()] == [("hv3", ["off", "on"]), ("hv4", ["off", "on"])]
    until(lambda: (node := agents.vm("vm1")["node"]) in ("hv1", "hv2") and agents.settled("vm1", "start", node),
          what="vm1 running on a live node")
    for sim in sims.values():
        assert_secret_kept(agents, sim.password, spy, logs, calls=6)


def test_the_simulator_checks_the_password(bmc_sims: BmcSims) -> None:
    """The fixture itself: a wrong password is refused (so the tests above prove the agents
    sent the right one), and the chassis records what it is told."""
    sim = bmc_sims.start("hv9")
    refused = sim.ipmitool("chassis", "power", "off", password="wrong")
    assert refused.returncode != 0 and sim.power_sets() == []
    assert sim.ipmitool("chassis", "power", "off").returncode == 0
    assert sim.power() == "off" and "off" in sim.ipmitool("chassis", "power", "status").stdout
    assert sim.power_sets() == ["off"]
    assert oct(os.stat(sim.password_file).st_mode & 0o777) == "0o600"
