"""LibvirtHypervisor against real hypervisors: libvirtd + QEMU (TCG), two nodes on this machine.

The session's lab (``scripts/hypervisor-lab``, see tests/qemu_lab.py) runs node1 = the host's libvirtd
and node2 = a second libvirtd in its own mount and UTS namespace. The guest is a boot sector that
prints a line to COM1 and then a dot about 4 times a second (tests/guest.py): a growing serial log
proves the guest is alive. Run with ``-s`` to see the timings.

    .venv/bin/python -m pytest -m qemu -s tests/test_hypervisor_qemu.py
"""

from __future__ import annotations

import os
import threading
import time
from typing import Iterator

import pytest

from pvc.agent.hypervisor import HypervisorError, HypervisorUnavailable, MigrationUnsupported
from pvc.agent.libvirt_hv import LibvirtHypervisor
from tests.guest import BOOT_MESSAGE, TICK_CHAR, serial_output
from tests.qemu_lab import Guest, Lab, hypervisor_lab, wait_until  # noqa: F401  (hypervisor_lab: the fixture)

pytestmark = pytest.mark.qemu

DATA_URI = "tcp://127.0.0.1"
BOOT_TIMEOUT = 30.0
EVENT_TIMEOUT = 10.0
MIGRATION_TIMEOUT = 60.0


class Changes:
    """The on_change callback: every UUID it was called with, and when."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[float, str]] = []

    def __call__(self, uuid: str) -> None:
        with self._lock:
            self.calls.append((time.monotonic(), uuid))

    def count(self, uuid: str) -> int:
        with self._lock:
            return sum(1 for _t, u in self.calls if u == uuid)

    def wait_more(self, uuid: str, than: int, what: str) -> None:
        """Wait until the callback was called for ``uuid`` more than ``than`` times."""
        wait_until(lambda: self.count(uuid) > than, EVENT_TIMEOUT, f"on_change({uuid}) after {what}")


def ticks(guest: Guest) -> int:
    return serial_output(guest.serial_log).count(TICK_CHAR)


def wait_alive(guest: Guest, what: str, more: int = 3) -> float:
    """Wait until the guest wrote ``more`` further dots: it runs (and keeps time) right now."""
    before = ticks(guest)
    return wait_until(lambda: ticks(guest) >= before + more, 15.0, f"{more} more serial ticks from the guest {what}")


def connected(uri: str, unsafe: bool = True) -> LibvirtHypervisor:
    hv = LibvirtHypervisor(uri, unsafe_migration=unsafe)
    hv.connect()
    return hv


@pytest.fixture
def hv1(hypervisor_lab: Lab) -> Iterator[LibvirtHypervisor]:
    hv = connected(hypervisor_lab.uri1)
    yield hv
    hv.close()


@pytest.fixture
def hv2(hypervisor_lab: Lab) -> Iterator[LibvirtHypervisor]:
    hv = connected(hypervisor_lab.uri2)
    yield hv
    hv.close()


@pytest.fixture
def guest(hypervisor_lab: Lab) -> Iterator[Guest]:
    """A fresh guest, destroyed and undefined on both nodes afterwards wherever the test left it."""
    g = hypervisor_lab.new_guest()
    yield g
    for uri in (hypervisor_lab.uri1, hypervisor_lab.uri2):
        hv = connected(uri)
        try:
            hv.destroy(g.uuid)
            hv.undefine(g.uuid)
        finally:
            hv.close()


def raw(uri: str):  # type: ignore[no-untyped-def]
    """A plain libvirt connection, only to observe what LibvirtHypervisor does not report (job
    statistics, definitions); every action under test goes through LibvirtHypervisor."""
    import libvirt

    return libvirt.open(uri)


def defined(uri: str, uuid: str) -> bool:
    import libvirt

    conn = raw(uri)
    try:
        conn.lookupByUUIDString(uuid)
        return True
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise
    finally:
        conn.close()


def downtime_ms(uri: str, uuid: str) -> int:
    """The last completed migration's downtime, as the destination's libvirt measured it."""
    import libvirt

    conn = raw(uri)
    try:
        stats = conn.lookupByUUIDString(uuid).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    finally:
        conn.close()
    assert "downtime" in stats, stats
    return int(stats["downtime"])


def boot(hv: LibvirtHypervisor, lab: Lab, guest: Guest, where: str) -> None:
    started = time.monotonic()
    hv.start(guest.uuid, guest.xml)
    lab.record(f"start() on {where} (define + create)", time.monotonic() - started)
    seen = wait_until(lambda: BOOT_MESSAGE in serial_output(guest.serial_log), BOOT_TIMEOUT,
                      f"{BOOT_MESSAGE!r} on the guest's serial port")
    lab.record(f"first serial line after start() returned ({where})", seen)


# -- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", [
    "qemu+unix:///system?socket=/nonexistent/pvc-lab/libvirt-sock",  # no daemon there
    "qemu+tcp://127.0.0.1:1/system",                                 # nothing listens
    "nosuchdriver:///system",                                        # libvirt knows no such hypervisor
])
def test_an_unreachable_hypervisor_is_one_clear_line(uri: str) -> None:
    for call in ("connect", "host", "active"):
        hv = LibvirtHypervisor(uri)
        with pytest.raises(HypervisorUnavailable) as caught:
            getattr(hv, call)()
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("cannot connect: "), message  # the agent names the URI around it
        assert len(message) > len("cannot connect: ") + 5  # libvirt's reason follows
        hv.close()


def test_both_nodes_answer_with_the_hosts_figures(hypervisor_lab: Lab, hv1: LibvirtHypervisor,
                                                   hv2: LibvirtHypervisor) -> None:
    for hv in (hv1, hv2):
        started = time.monotonic()
        host = hv.host()
        hypervisor_lab.record(f"host() on {hv.uri.split('?')[0]} ({'node1' if hv is hv1 else 'node2'})",
                              time.monotonic() - started)
        assert host.cpus == os.cpu_count()
        assert host.memory_mib > 0
        assert isinstance(hv.active(), dict)
    # Two hypervisors, not one seen twice: different host names and host UUIDs.
    c1, c2 = raw(hypervisor_lab.uri1), raw(hypervisor_lab.uri2)
    try:
        assert c1.getHostname() != c2.getHostname()
        assert c2.getHostname() == "node2"
        assert c1.getCapabilities().split("<uuid>")[1][:36] != c2.getCapabilities().split("<uuid>")[1][:36]
    finally:
        c1.close()
        c2.close()


def test_start_boots_the_guest_shutdown_is_ignored_destroy_stops_it(hypervisor_lab: Lab, hv1: LibvirtHypervisor,
                                                                    hv2: LibvirtHypervisor, guest: Guest) -> None:
    changes = Changes()
    hv1.on_change(changes)
    assert not hv1.is_active(guest.uuid)

    boot(hv1, hypervisor_lab, guest, "node1")
    changes.wait_more(guest.uuid, 0, "start()")
    assert hv1.is_active(guest.uuid)
    info = hv1.active()[guest.uuid]
    assert (info.uuid, info.name, info.memory_mib, info.vcpus) == (guest.uuid, guest.name, 64, 1)
    assert not hv2.is_active(guest.uuid) and guest.uuid not in hv2.active()  # node2 is another hypervisor
    wait_alive(guest, "after boot")

    # start() of an active domain leaves it alone: no second boot.
    hv1.start(guest.uuid, guest.xml)
    assert serial_output(guest.serial_log).count(BOOT_MESSAGE) == 1

    # No ACPI in this guest: the request returns at once and the guest goes on running.
    started = time.monotonic()
    hv1.shutdown(guest.uuid)
    hypervisor_lab.record("shutdown() request (guest without ACPI)", time.monotonic() - started)
    wait_alive(guest, "after shutdown()")
    assert hv1.is_active(guest.uuid)
    assert serial_output(guest.serial_log).count(BOOT_MESSAGE) == 1  # not rebooted either

    before = changes.count(guest.uuid)
    started = time.monotonic()
    hv1.destroy(guest.uuid)
    hypervisor_lab.record("destroy()", time.monotonic() - started)
    assert not hv1.is_active(guest.uuid)
    assert guest.uuid not in hv1.active()
    changes.wait_more(guest.uuid, before, "destroy()")
    assert defined(hypervisor_lab.uri1, guest.uuid)  # stopped, still defined

    hv1.destroy(guest.uuid)  # not active: nothing
    hv1.shutdown(guest.uuid)  # not active: nothing
    hv1.undefine(guest.uuid)
    assert not defined(hypervisor_lab.uri1, guest.uuid)
    hv1.undefine(guest.uuid)  # not defined: nothing


def test_live_migration_there_and_back(hypervisor_lab: Lab, hv1: LibvirtHypervisor, hv2: LibvirtHypervisor,
                                       guest: Guest) -> None:
    changes1, changes2 = Changes(), Changes()
    hv1.on_change(changes1)
    hv2.on_change(changes2)
    boot(hv1, hypervisor_lab, guest, "node1")
    wait_alive(guest, "before the migration")

    for source, target, src_name, dst_name, src_changes, dst_changes in (
        (hv1, hv2, "node1", "node2", changes1, changes2),
        (hv2, hv1, "node2", "node1", changes2, changes1),
    ):
        src_before, dst_before = src_changes.count(guest.uuid), dst_changes.count(guest.uuid)
        started = time.monotonic()
        source.migrate(guest.uuid, target.uri, DATA_URI, MIGRATION_TIMEOUT)
        hypervisor_lab.record(f"migrate() {src_name} -> {dst_name} (whole call)", time.monotonic() - started)

        assert target.is_active(guest.uuid)
        assert guest.uuid in target.active()
        assert not source.is_active(guest.uuid)
        assert guest.uuid not in source.active()
        assert defined(target.uri, guest.uuid)  # the definition went with it (PERSIST_DEST)
        assert not defined(source.uri, guest.uuid)  # and left the source (UNDEFINE_SOURCE)
        src_changes.wait_more(guest.uuid, src_before, f"migrating away from {src_name}")
        dst_changes.wait_more(guest.uuid, dst_before, f"migrating onto {dst_name}")
        wait_alive(guest, f"on {dst_name} after the migration")  # the target's QEMU runs the guest on
        assert serial_output(guest.serial_log).count(BOOT_MESSAGE) == 1  # the same run, not a reboot
        downtime = downtime_ms(target.uri, guest.uuid)
        hypervisor_lab.record(f"migration downtime {src_name} -> {dst_name} (libvirt job stats)", downtime / 1000)
        assert 0 < downtime < 5000

    hv1.destroy(guest.uuid)
    assert not hv1.is_active(guest.uuid)


def test_a_failed_migration_leaves_the_guest_running_here(hypervisor_lab: Lab, hv2: LibvirtHypervisor,
                                                          guest: Guest) -> None:
    safe = connected(hypervisor_lab.uri1, unsafe=False)
    try:
        boot(safe, hypervisor_lab, guest, "node1")

        # A local image is not shared storage: libvirt refuses unless told the storage is safe.
        with pytest.raises(HypervisorError) as caught:
            safe.migrate(guest.uuid, hypervisor_lab.uri2, DATA_URI, MIGRATION_TIMEOUT)
        assert not isinstance(caught.value, MigrationUnsupported)
        assert "unsafe" in str(caught.value).lower() and "\n" not in str(caught.value)

        # A target that does not answer.
        with pytest.raises(HypervisorError) as caught:
            safe.migrate(guest.uuid, "qemu+unix:///system?socket=/nonexistent/pvc-lab/libvirt-sock", DATA_URI,
                         MIGRATION_TIMEOUT)
        assert "cannot connect to the target hypervisor" in str(caught.value)

        # A domain that is not here.
        with pytest.raises(HypervisorError) as caught:
            safe.migrate("00000000-0000-4000-8000-000000000000", hypervisor_lab.uri2, DATA_URI, MIGRATION_TIMEOUT)
        assert "not running here" in str(caught.value)

        assert safe.is_active(guest.uuid)
        assert not hv2.is_active(guest.uuid) and not defined(hypervisor_lab.uri2, guest.uuid)
        wait_alive(guest, "after the failed migrations")
    finally:
        safe.close()


def test_a_migration_past_its_deadline_is_aborted(hypervisor_lab: Lab, hv1: LibvirtHypervisor,
                                                  hv2: LibvirtHypervisor, guest: Guest) -> None:
    """The deadline fires while the target prepares (starting its QEMU takes ~0.5 s): libvirt cancels the
    migration and the domain keeps running here. (An abort requested later than that, during the short
    transfer of this tiny guest, waits for the migration's end and changes nothing: libvirt 9.0.)"""
    boot(hv1, hypervisor_lab, guest, "node1")
    started = time.monotonic()
    with pytest.raises(HypervisorError) as caught:
        hv1.migrate(guest.uuid, hypervisor_lab.uri2, DATA_URI, 0.15)
    hypervisor_lab.record("migrate() aborted at its 0.15 s deadline (whole call)", time.monotonic() - started)
    assert "abort" in str(caught.value) or "cancel" in str(caught.value), caught.value
    assert hv1.is_active(guest.uuid)
    assert not hv2.is_active(guest.uuid) and not defined(hypervisor_lab.uri2, guest.uuid)
    wait_alive(guest, "after the aborted migration")
    # and the next migration, without a deadline problem, goes through
    hv1.migrate(guest.uuid, hypervisor_lab.uri2, DATA_URI, MIGRATION_TIMEOUT)
    assert hv2.is_active(guest.uuid) and not hv1.is_active(guest.uuid)


def test_a_restarted_libvirtd_is_reconnected_and_its_guests_kept(hypervisor_lab: Lab, hv1: LibvirtHypervisor,
                                                                 hv2: LibvirtHypervisor, guest: Guest) -> None:
    boot(hv2, hypervisor_lab, guest, "node2")
    try:
        hypervisor_lab.kill_node2_libvirtd()
        # Down: every call says so in one line, the same connection object keeps being usable.
        for call, args in (("host", ()), ("active", ()), ("is_active", (guest.uuid,)),
                           ("migrate", (guest.uuid, hypervisor_lab.uri1, DATA_URI, MIGRATION_TIMEOUT))):
            with pytest.raises(HypervisorUnavailable) as caught:
                getattr(hv2, call)(*args)
            assert str(caught.value).startswith("cannot connect: ")
        wait_alive(guest, "while node2's libvirtd is down")  # QEMU does not depend on libvirtd
    finally:
        started = time.monotonic()
        hypervisor_lab.ensure_started()
        hypervisor_lab.record("node2 libvirtd restart (scripts/hypervisor-lab start)", time.monotonic() - started)
    # Up again: the same LibvirtHypervisor re-opens its connection and finds the running guest.
    assert hv2.is_active(guest.uuid)
    assert hv2.active()[guest.uuid].memory_mib == 64
    changes = Changes()
    hv2.on_change(changes)  # events are registered again on the new connection
    hv2.migrate(guest.uuid, hypervisor_lab.uri1, DATA_URI, MIGRATION_TIMEOUT)
    assert hv1.is_active(guest.uuid) and not hv2.is_active(guest.uuid)
    changes.wait_more(guest.uuid, 0, "migrating away from the restarted node2")
    wait_alive(guest, "on node1 after the migration")
