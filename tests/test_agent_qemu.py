"""Node agents on a real hypervisor: two libvirt daemons with QEMU (scripts/hypervisor-lab), a tiny
guest that boots from a boot sector and writes to its serial console. The agents start it, live-
migrate it between the daemons through pvc (migrate, unmigrate), and shut it down (it has no ACPI,
so the shutdown deadline forces it off). Timings are printed (run with -s)."""

from __future__ import annotations

import os
import time
from typing import Iterator

import pytest

from pvc.agent.libvirt_hv import LibvirtHypervisor
from pvc.lib.ops import vm as vm_ops
from tests.agent_fixtures import AgentCluster, agents, until  # noqa: F401
from tests.guest import serial_output
from tests.qemu_lab import Lab, hypervisor_lab  # noqa: F401

pytestmark = pytest.mark.qemu

BOOT_LINE = "pvc guest up"


@pytest.fixture
def lab_nodes(hypervisor_lab: Lab) -> Iterator[tuple[Lab, str]]:  # noqa: F811
    """The lab's two daemons as nodes named node1 and node2, and the migration URI template that
    reaches each by name (a socket link per node: the template has only {node} to work with)."""
    links = os.path.join(hypervisor_lab.workdir, "sock")
    os.makedirs(links, exist_ok=True)
    for node, uri in (("node1", hypervisor_lab.uri1), ("node2", hypervisor_lab.uri2)):
        socket = uri.split("socket=", 1)[1] if "socket=" in uri else "/run/libvirt/libvirt-sock"
        link = os.path.join(links, node)
        if not os.path.islink(link):
            os.symlink(socket, link)
    yield hypervisor_lab, f"qemu+unix:///system?socket={links}/{{node}}"


def test_start_live_migrate_and_shut_down_a_real_guest(agents: AgentCluster,  # noqa: F811
                                                        lab_nodes: tuple[Lab, str]) -> None:
    lab, template = lab_nodes
    common = {"migration_target_uri": template, "migration_data_uri": "tcp://127.0.0.1", "migration_unsafe": True,
              "shutdown_timeout": 3.0, "migration_timeout": 60.0}
    agents.start("node1", libvirt_uri=lab.uri1, **common)
    agents.start("node2", libvirt_uri=lab.uri2, **common)
    guest = lab.new_guest("pvc-agent")
    try:
        vm_ops.define_vm(agents.core, guest.xml, node="node1")
        started = time.monotonic()
        vm_ops.set_vm_state(agents.core, guest.name, "start")
        until(lambda: BOOT_LINE in serial_output(guest.serial_log), timeout=30, what="the guest's boot line")
        boot = time.monotonic() - started
        until(lambda: agents.settled(guest.name, "start", "node1"), timeout=10, what="the guest running on node1")
        lab.record("agent: start → guest's first serial line", boot)

        for target, how in (("node2", "migrate"), ("node1", "unmigrate")):
            printed = len(serial_output(guest.serial_log))
            moved = time.monotonic()
            if how == "migrate":
                vm_ops.set_vm_node(agents.core, guest.name, "migrate", node=target)
            else:
                vm_ops.set_vm_node(agents.core, guest.name, "unmigrate")
            until(lambda t=target: agents.settled(guest.name, "start", t), timeout=60, what=f"the guest on {target}")
            lab.record(f"agent: {how} → running on {target}", time.monotonic() - moved)
            # Live: the guest kept running (its console grows) and did not boot again.
            until(lambda p=printed: len(serial_output(guest.serial_log)) > p, timeout=10, what="more console output")
            assert serial_output(guest.serial_log).count(BOOT_LINE) == 1
        assert agents.vm(guest.name)["last_node"] == ""

        # No ACPI in this guest: the graceful shutdown is ignored, and forced off at the deadline.
        down = time.monotonic()
        vm_ops.set_vm_state(agents.core, guest.name, "shutdown")
        until(lambda: agents.settled(guest.name, "stop", "node1"), timeout=30, what="the guest stopped")
        took = time.monotonic() - down
        lab.record("agent: shutdown of an ACPI-less guest → forced off", took)
        assert took >= 3.0  # it waited for the guest first
        vm_ops.undefine_vm(agents.core, guest.name)
    finally:
        for uri in (lab.uri1, lab.uri2):  # whatever a failure left behind
            hv = LibvirtHypervisor(uri)
            hv.connect()
            hv.destroy(guest.uuid)
            hv.undefine(guest.uuid)
            hv.close()
    print("\n" + lab.summary())
