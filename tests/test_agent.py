"""The node agent on both engines: several real agents in one test process, each with its own store
session and a private hypervisor (libvirt's test driver), and `pvc agent` processes for kill -9.

No sleeps: every wait polls a condition with a deadline (``until``) or waits on the store.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pvc.lib import schema
from pvc.lib.errors import InvalidState
from pvc.lib.ops import node as node_ops
from pvc.lib.ops import vm as vm_ops
from pvc.lib.placement import check_target, select_node
from tests.agent_fixtures import AgentCluster, agents, config_file, spawn, until, uuid_of, vm_xml  # noqa: F401


def meminfo_total_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal")


def test_registration_keepalive_and_real_figures(agents: AgentCluster) -> None:
    agents.start("hv1", ready=False)
    node = agents.node("hv1")
    assert node["daemon_state"] == "run"
    assert node["domain_state"] == "flushed"  # a new node must be made ready first (original §3.4)
    assert node["memory"]["total"] == meminfo_total_mib()
    assert node["memory"]["used"] + node["memory"]["free"] == node["memory"]["total"]
    assert node["cpu_count"] >= 1 and node["kernel"] and node["arch"]
    assert node["problem"] is None
    first = int(agents.core.store.get(schema.node_key("hv1", "keepalive")).value)
    until(lambda: int(agents.core.store.get(schema.node_key("hv1", "keepalive")).value) > first,
          what="a newer keepalive")
    agents.define("vm1", 1, "hv1", start=False)
    with pytest.raises(InvalidState, match="it is flushed"):  # a flushed node takes no running VM
        check_target(agents.core, "hv1", running=True)
    node_ops.set_domain_state(agents.core, "hv1", "ready")
    assert node_ops.wait_domain_state(agents.core, "hv1", "ready", timeout=10)
    vm_ops.set_vm_state(agents.core, "vm1", "start")
    until(lambda: agents.node("hv1")["running_domains"] == [uuid_of(1)], what="vm1 in running_domains")
    node = agents.node("hv1")
    assert node["memory"]["allocated"] == 256 and node["vcpu"]["allocated"] == 1 and node["domains_count"] == 1


def test_the_originals_reader_reads_an_agents_node(agents: AgentCluster) -> None:
    """The original API's getNodeInformation (its §2.7.1): every key read as text, any missing
    key an error; our agent's node must give it everything it reads."""
    agents.start("hv1")
    store = agents.core.store

    def read(field: str) -> str:
        return store.get(f"/nodes/hv1/{field}").value

    static = read("staticdata").split()
    original = {
        "name": "hv1", "daemon_state": read("daemonstate"), "coordinator_state": read("routerstate"),
        "domain_state": read("domainstate"), "cpu_count": static[0], "kernel": static[1], "os": static[2],
        "arch": static[3], "load": read("cpuload"), "domains_count": read("domainscount"),
        "running_domains": read("runningdomains").split(),
        "vcpu": {"total": static[0], "allocated": read("vcpualloc")},
        "memory": {k: int(read(f"mem{k}")) for k in ("total", "alloc", "used", "free")},
    }
    assert original["daemon_state"] == "run" and original["coordinator_state"] == "primary"
    assert original["domain_state"] == "ready" and original["memory"]["total"] == meminfo_total_mib()
    float(original["load"]), int(original["domains_count"]), int(original["vcpu"]["allocated"])
    assert store.get("/nodes/hv1").value == "coordinator" and read("daemonmode") == "coordinator"
    assert read("networkscount") == "0" and int(read("keepalive")) <= time.time() + 1


def test_vm_lifecycle(agents: AgentCluster) -> None:
    agents.start("hv1")
    uuid = agents.define("vm1", 1, "hv1")
    assert agents.vm("vm1")["failed_reason"] == ""
    # restart: the domain goes down and up again with the stored XML
    xml = vm_xml("vm1", uuid, memory_mib=512)
    vm_ops.modify_vm(agents.core, "vm1", xml, restart=True)
    until(lambda: agents.vm("vm1")["state"] == "start" and agents.agents["hv1"].hv.active().get(uuid)
          and agents.agents["hv1"].hv.active()[uuid].memory_mib == 512, what="the restart with 512 MiB")
    vm_ops.set_vm_state(agents.core, "vm1", "shutdown")
    until(lambda: agents.settled("vm1", "stop", "hv1"), what="the shutdown")
    vm_ops.set_vm_state(agents.core, "vm1", "start")
    until(lambda: agents.settled("vm1", "start", "hv1"), what="the start")
    vm_ops.set_vm_state(agents.core, "vm1", "restart")
    until(lambda: agents.settled("vm1", "start", "hv1"), what="the restart")
    vm_ops.set_vm_state(agents.core, "vm1", "stop")
    until(lambda: agents.settled("vm1", "stop", "hv1"), what="the stop")
    vm_ops.set_vm_state(agents.core, "vm1", "start")
    until(lambda: agents.settled("vm1", "start", "hv1"), what="the start")
    vm_ops.undefine_vm(agents.core, "vm1")  # a running VM: its domain goes when its keys go
    until(lambda: uuid not in agents.active("hv1"), what="the domain of the undefined VM to stop")


def test_a_start_the_hypervisor_refuses_is_failed_with_the_reason(agents: AgentCluster) -> None:
    agents.start("hv1")
    bad = "<interface type='bridge'><source bridge='vmbr1'/><model type='no such model'/></interface>"
    agents.define("vm1", 1, "hv1", start=False, extra=bad)
    vm_ops.set_vm_state(agents.core, "vm1", "start")
    vm = until(lambda: (v := agents.vm("vm1"))["state"] == "failed" and v, what="the failed start")
    assert "Model name contains invalid characters" in vm["failed_reason"]
    assert agents.active("hv1") == set()


def test_a_domain_that_died_is_restarted_by_the_keepalive(agents: AgentCluster) -> None:
    agents.start("hv1")
    uuid = agents.define("vm1", 1, "hv1")
    agents.agents["hv1"].hv.destroy(uuid)  # behind pvc's back, as a crash would
    until(lambda: uuid in agents.active("hv1"), what="the keepalive to start it again")
    assert agents.vm("vm1")["state"] == "start"


def test_a_long_shutdown_does_not_delay_another_vm(agents: AgentCluster) -> None:
    """The test driver shuts down at once; a guest that ignores ACPI is simulated by a domain
    whose shutdown request the test swallows. Its forced-off deadline is 5 s; meanwhile
    another VM starts at once."""
    agent = agents.start("hv1")
    slow = agents.define("slow", 1, "hv1")
    agents.define("quick", 2, "hv1", start=False)
    original = agent.hv.shutdown
    agent.hv.shutdown = lambda uuid: None if uuid == slow else original(uuid)  # type: ignore[method-assign]
    vm_ops.set_vm_state(agents.core, "slow", "shutdown")
    until(lambda: agents.vm("slow")["state"] == "shutdown")
    started = time.monotonic()
    vm_ops.set_vm_state(agents.core, "quick", "start")
    until(lambda: uuid_of(2) in agents.active("hv1"), what="quick to start")
    assert time.monotonic() - started < 2.0
    assert slow in agents.active("hv1")  # still waiting for its guest
    vm_ops.set_vm_state(agents.core, "slow", "stop")  # a stop cuts the wait short
    until(lambda: agents.settled("slow", "stop", "hv1"), timeout=3, what="the stop to interrupt the shutdown")


def test_migrate_move_and_unmigrate_between_agents(agents: AgentCluster) -> None:
    agents.start("hv1")
    agents.start("hv2")
    agents.define("vm1", 1, "hv1")
    vm_ops.set_vm_node(agents.core, "vm1", "migrate", node="hv2")
    until(lambda: agents.settled("vm1", "start", "hv2"), what="the migration to hv2")
    assert agents.vm("vm1")["last_node"] == "hv1"
    vm_ops.set_vm_node(agents.core, "vm1", "unmigrate")
    until(lambda: agents.settled("vm1", "start", "hv1"), what="the unmigration to hv1")
    assert agents.vm("vm1")["last_node"] == ""
    vm_ops.set_vm_node(agents.core, "vm1", "migrate", node="hv2", permanent=True)
    until(lambda: agents.settled("vm1", "start", "hv2"), what="the move to hv2")
    assert agents.vm("vm1")["last_node"] == ""


def test_flush_and_ready_with_several_vms(agents: AgentCluster, cli: Any) -> None:
    for n in ("hv1", "hv2", "hv3"):
        agents.start(n)
    for i in range(5):
        agents.define(f"vm{i}", i, "hv1")
    agents.define("stopped", 9, "hv1", start=False)
    result = cli("node", "flush", "hv1", "--wait", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert "reports domain state 'flushed'" in result.output
    assert result.output.count("left node 'hv1': start on") == 5  # a progress line per VM moved
    assert agents.node("hv1")["domain_state"] == "flushed" and agents.active("hv1") == set()
    for i in range(5):
        vm = agents.vm(f"vm{i}")
        assert vm["node"] in ("hv2", "hv3") and vm["last_node"] == "hv1"
        until(lambda i=i, vm=vm: agents.settled(f"vm{i}", "start", vm["node"]))
    assert agents.vm("stopped")["node"] == "hv1"  # stopped VMs are not moved
    assert select_node(agents.core, None, exclude="hv2") == "hv3"  # never the flushed hv1
    with pytest.raises(InvalidState, match="'hv1' cannot take a running VM: it is flushed"):
        _only("hv1", agents)
    result = cli("node", "ready", "hv1", "--wait", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert result.output.count("is back on node 'hv1': start") == 5
    for i in range(5):
        until(lambda i=i: agents.settled(f"vm{i}", "start", "hv1"), what=f"vm{i} back on hv1")
        assert agents.vm(f"vm{i}")["last_node"] == ""


def _only(node: str, agents: AgentCluster) -> None:
    check_target(agents.core, node, running=True)


def test_flush_shuts_down_a_vm_no_node_can_take(agents: AgentCluster) -> None:
    agents.start("hv1")
    agents.start("hv2", ready=False)  # flushed: takes nothing
    agents.define("vm1", 1, "hv1")
    node_ops.set_domain_state(agents.core, "hv1", "flush")
    node_ops.wait_domain_state(agents.core, "hv1", "flush", timeout=15)
    until(lambda: agents.settled("vm1", "stop", "hv1"), what="vm1 shut down")
    assert agents.node("hv1")["domain_state"] == "flushed"


def test_a_vm_that_fails_to_arrive_does_not_hang_the_flush(agents: AgentCluster) -> None:
    """hv2's hypervisor refuses the VM (the network exists only on hv1's side... here: hv2's
    agent swallows starts), so the VM ends failed after the receive deadline; the flush ends."""
    agents.start("hv1")
    hv2 = agents.start("hv2", migration_timeout=1.0, shutdown_timeout=1.0)
    agents.define("vm1", 1, "hv1")

    def refuse(uuid: str, xml: str) -> None:
        from pvc.agent.hypervisor import HypervisorError
        raise HypervisorError("cannot start the domain: simulated refusal")

    hv2.hv.start = refuse  # type: ignore[method-assign]
    node_ops.set_domain_state(agents.core, "hv1", "flush")
    node_ops.wait_domain_state(agents.core, "hv1", "flush", timeout=30)
    vm = agents.vm("vm1")
    assert vm["state"] == "failed" and "simulated refusal" in vm["failed_reason"]


def test_one_primary_among_racing_coordinators_and_switches(agents: AgentCluster) -> None:
    import threading

    threads = [threading.Thread(target=agents.start, args=(n,)) for n in ("hv1", "hv2", "hv3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def primaries() -> list[str]:
        return [n for n in ("hv1", "hv2", "hv3") if agents.node(n)["coordinator_state"] == "primary"]

    winner = until(lambda: len(primaries()) == 1 and primaries()[0], what="one primary")
    assert agents.core.store.get(schema.PRIMARY_NODE).value == winner
    other = next(n for n in ("hv1", "hv2", "hv3") if n != winner)
    node_ops.set_coordinator_state(agents.core, other, "primary")
    until(lambda: primaries() == [other], what=f"{other} to become primary")
    node_ops.set_coordinator_state(agents.core, other, "secondary")  # another coordinator takes over
    # Each node reports its own coordinator state once it has seen /primary_node move: wait until
    # the reports have settled on one primary, which /primary_node names.
    successor = until(lambda: len(p := primaries()) == 1 and p[0] != other and p[0], what="another primary")
    assert agents.core.store.get(schema.PRIMARY_NODE).value == successor
    assert agents.node(other)["coordinator_state"] == "secondary"
    agents.agents[successor].stop()  # a primary that stops hands over
    third = until(lambda: len(p := primaries()) == 1 and p[0] != successor and p[0],
                  what="another primary after a clean stop")
    assert agents.core.store.get(schema.PRIMARY_NODE).value == third


def test_hypervisor_clients_are_clients(agents: AgentCluster) -> None:
    agents.start("hv1")
    agents.start("hv5", coordinator=False)
    assert agents.node("hv5")["coordinator_state"] == "client"


def test_an_unreachable_hypervisor_is_one_line_and_takes_no_vms(agents: AgentCluster,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "pvc.agent")
    agents.start("hv1")
    agents.start("hv2", libvirt_uri="test:///nonexistent/node.xml", ready=True)
    until(lambda: agents.node("hv2")["problem"], what="hv2's problem")
    assert "test:///nonexistent/node.xml" in agents.node("hv2")["problem"]
    lines = [r for r in caplog.records if "hv2" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage() and not lines[0].exc_info
    agents.define("vm1", 1, "hv1", start=False)
    with pytest.raises(InvalidState, match="hypervisor test:///nonexistent/node.xml unavailable"):
        check_target(agents.core, "hv2", running=True)
    assert select_node(agents.core, None) == "hv1"


def test_a_cleanly_stopped_agent_becomes_dead_and_is_never_chosen(agents: AgentCluster) -> None:
    """Dead (nothing is placed on it), but not fenced: its agent left its VMs running on purpose,
    and they stay, whatever failed_fence says."""
    agents.start("hv1", failed_fence="migrate")
    agents.start("hv2")
    agents.define("vm1", 1, "hv2")
    agents.agents["hv2"].stop()
    assert agents.node("hv2")["daemon_state"] == "stop"
    until(lambda: agents.node("hv2")["daemon_state"] == "dead", timeout=3 + 2, what="hv2 dead")
    problem = agents.outcome("hv2")
    assert uuid_of(1) not in agents.active("hv1")
    assert "its agent stopped cleanly" in problem and "not fenced" in problem and "stay where they are" in problem
    vm = agents.vm("vm1")
    assert vm["node"] == "hv2" and vm["state"] == "start"  # unfenced: not started elsewhere
    assert agents.node("hv2")["domain_state"] == "flushed"
    with pytest.raises(InvalidState, match="its daemon is dead"):
        check_target(agents.core, "hv2", running=True)
    assert select_node(agents.core, None) == "hv1"


def test_a_dead_nodes_vms_start_elsewhere_when_the_config_says_so(agents: AgentCluster) -> None:
    agents.start("hv1", failed_fence="migrate")
    agents.start("hv2", failed_fence="migrate")
    agents.define("vm1", 1, "hv2")
    agents.crash("hv2")
    until(lambda: agents.settled("vm1", "start", "hv1"), timeout=8, what="vm1 restarted on hv1")
    assert agents.vm("vm1")["last_node"] == "hv2"
    assert "started elsewhere: vm1 → hv1" in agents.outcome("hv2")


def test_kill_9_of_the_primarys_agent(agents: AgentCluster, tmp_path: Path) -> None:
    """A `pvc agent` process killed with SIGKILL: no clean-up at all. Its node is dead within
    interval × fence_intervals plus an interval, the other coordinator is primary, and no VM is
    placed on it."""
    agents.start("hv2")
    uri = agents.node_uri("hv1")
    config = config_file(tmp_path / "hv1.yaml", agents.settings, name="hv1", libvirt_uri=uri, coordinator=True)
    # hv1 becomes primary: hv2 gives the role up first
    proc = spawn(["agent"], config)
    try:
        until(lambda: "hv1" in node_ops.node_names(agents.core) and agents.node("hv1")["daemon_state"] == "run",
              timeout=20, what="the hv1 process to run")
        node_ops.set_domain_state(agents.core, "hv1", "ready")
        node_ops.wait_domain_state(agents.core, "hv1", "ready", timeout=10)
        node_ops.set_coordinator_state(agents.core, "hv1", "primary")
        until(lambda: agents.node("hv1")["coordinator_state"] == "primary"
              and agents.node("hv2")["coordinator_state"] == "secondary", what="hv1 primary")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed = time.monotonic()
        until(lambda: agents.node("hv1")["daemon_state"] == "dead", timeout=10, what="hv1 dead")
        detected = time.monotonic() - killed
        limit = agents.settings.dead_after() + agents.settings.keepalive_interval + 1  # + whole-second stamps
        assert detected <= limit, f"detected after {detected:.1f} s"
        until(lambda: agents.node("hv2")["coordinator_state"] == "primary", timeout=2, what="hv2 primary")
        assert agents.core.store.get(schema.PRIMARY_NODE).value == "hv2"
        assert select_node(agents.core, None) == "hv2"
        vm_ops.define_vm(agents.core, vm_xml("vm9", uuid_of(9)), node="hv1")  # hv1 exists: used as asked ...
        assert agents.vm("vm9")["node"] == "hv1"
        with pytest.raises(InvalidState, match="'hv1' cannot take a running VM: its daemon is dead"):
            check_target(agents.core, "hv1", running=True)  # ... but never for a running VM
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_vm_migrating_to_a_node_that_dies_stays_on_its_source(agents: AgentCluster) -> None:
    """The target dies during a (slow) live migration: the VM still runs on its source, so it is
    not started anywhere else even with failed_fence: migrate; the source takes it back."""
    import threading

    from pvc.agent.hypervisor import HypervisorError

    agents.start("hv1", failed_fence="migrate")
    agents.start("hv2")
    agents.start("hv3", failed_fence="migrate")
    uuid = agents.define("vm1", 1, "hv1")
    release, entered = threading.Event(), threading.Event()

    def slow_migration(*_args: Any) -> None:
        entered.set()
        release.wait(30)
        raise HypervisorError("live migration to hv2 failed: simulated: connection lost")

    agents.agents["hv1"].hv.migrate = slow_migration  # type: ignore[method-assign]
    vm_ops.set_vm_node(agents.core, "vm1", "migrate", node="hv2")
    until(entered.is_set, what="the migration to begin")
    agents.crash("hv2")
    assert "not fenced" in agents.outcome("hv2", timeout=10)
    assert uuid not in agents.active("hv3") and uuid in agents.active("hv1")
    release.set()
    until(lambda: agents.settled("vm1", "start", "hv1"), what="vm1 back on hv1")
    assert uuid not in agents.active("hv3")


def test_the_target_waits_for_the_source_to_finish_a_live_migration(agents: AgentCluster) -> None:
    """An incoming domain is active (paused) before a live migration completes: the target must
    not report the VM started; the source does, once the migration returned."""
    import threading

    agents.start("hv1")
    hv2 = agents.start("hv2")
    uuid = agents.define("vm1", 1, "hv1")
    xml = vm_xml("vm1", uuid)
    release = threading.Event()

    def live_migration(*_args: Any) -> None:  # what libvirt does, step by step, on two test drivers
        hv2.hv.start(uuid, xml)
        hv2.hv._conn.lookupByUUIDString(uuid).suspend()  # type: ignore[attr-defined]  # arriving: paused
        release.wait(30)
        hv2.hv._conn.lookupByUUIDString(uuid).resume()  # type: ignore[attr-defined]
        agents.agents["hv1"].hv.destroy(uuid)
        agents.agents["hv1"].hv.undefine(uuid)

    agents.agents["hv1"].hv.migrate = live_migration  # type: ignore[method-assign]
    vm_ops.set_vm_node(agents.core, "vm1", "migrate", node="hv2")
    until(lambda: uuid in agents.active("hv2"), what="the incoming domain on hv2")
    hv2.vms.kick(uuid)  # as the hypervisor's event would; the keepalive kicks it too
    until(lambda: agents.agents["hv2"].vms.busy() > 0 or agents.vm("vm1")["state"] != "migrate")
    assert agents.vm("vm1")["state"] == "migrate"
    release.set()
    until(lambda: agents.settled("vm1", "start", "hv2"), what="vm1 running on hv2")


def test_stopping_an_agent_during_a_flush_does_not_report_it_flushed(agents: AgentCluster) -> None:
    hv1 = agents.start("hv1", shutdown_timeout=20.0)
    agents.start("hv2")
    agents.define("vm1", 1, "hv1")
    hv1.hv.shutdown = lambda uuid: None  # type: ignore[method-assign]  # a guest that ignores ACPI
    node_ops.set_domain_state(agents.core, "hv1", "flush")
    until(lambda: agents.vm("vm1")["state"] == "migrate", what="the flush to move vm1")
    hv1.stop()
    node = agents.node("hv1")
    assert (node["daemon_state"], node["domain_state"]) == ("stop", "flush")


def test_a_fence_claimed_by_a_coordinator_that_is_gone_is_taken_over(agents: AgentCluster) -> None:
    from pvc.lib.node_reports import NodeFacts, register_node

    register_node(agents.core, "hv7", NodeFacts(2, "6.1", "GNU/Linux", "x86_64"))
    agents.core.store.write({schema.node_key("hv7", "daemonstate"): "dead",
                             schema.node_key("hv7", "problem"): "dead: being fenced by hv9 since 1"})
    agents.start("hv1")
    outcome = agents.outcome("hv7")
    assert "not fenced: no BMC is configured" in outcome


def test_a_node_whose_clock_is_behind_is_not_taken_for_dead(agents: AgentCluster) -> None:
    """Its keepalive stamps look old, but they keep changing: it is alive. Once they stop
    changing, it is dead."""
    import threading

    from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node

    agents.start("hv1")
    register_node(agents.core, "hv7", NodeFacts(2, "6.1", "GNU/Linux", "x86_64"))
    stop = threading.Event()

    def keepalive() -> None:  # hv7's clock is 100 s behind
        publish_figures(agents.core, "hv7", NodeFigures())
        agents.core.store.write({schema.node_key("hv7", "keepalive"): str(int(time.time()) - 100)})

    def keepalives() -> None:
        while not stop.wait(0.2):
            keepalive()

    keepalive()
    writer = threading.Thread(target=keepalives)
    writer.start()
    try:
        watched_until = time.monotonic() + agents.settings.dead_after() + 2 * agents.settings.keepalive_interval
        while time.monotonic() < watched_until:  # a bounded observation, not a wait for a state
            assert agents.node("hv7")["daemon_state"] == "run"
            threading.Event().wait(0.1)
    finally:
        stop.set()
        writer.join()
    until(lambda: agents.node("hv7")["daemon_state"] == "dead", timeout=5, what="hv7 dead once it went quiet")
