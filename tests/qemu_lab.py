"""Two real hypervisors for the "qemu" tier: the session fixture around ``scripts/hypervisor-lab``.

Use it from any test module with::

    from tests.qemu_lab import hypervisor_lab  # noqa: F401  (the session fixture)

    pytestmark = pytest.mark.qemu

    def test_x(hypervisor_lab):  # a Lab: .uri1, .uri2, .workdir, .new_guest(...)
        ...

The lab starts once per session, however many modules import the fixture (each import is its own
fixture definition for pytest; they share one lab), and is stopped at the end of the session, also
when tests failed. A lab that cannot start is an error, never a skip. (Not ``pytest_plugins``: this
module, already imported by then, cannot be assertion-rewritten, and pytest warns.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from tests.guest import write_guest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "hypervisor-lab")
START_TIMEOUT = 900.0  # a fresh machine installs ~100 MB of packages first
STOP_TIMEOUT = 180.0


@dataclass(frozen=True)
class Guest:
    name: str
    uuid: str
    image: str
    serial_log: str
    xml: str


@dataclass
class Lab:
    uri1: str
    uri2: str
    workdir: str
    start_seconds: float = 0.0
    start_log: str = ""
    timings: list[tuple[str, float]] = field(default_factory=list)

    def new_guest(self, prefix: str = "pvc-qemu-test", memory_mib: int = 64) -> Guest:
        """A fresh tiny guest (its own image and serial log under workdir/guests), not started."""
        uuid = str(uuidlib.uuid4())
        name = f"{prefix}-{uuid[:8]}"
        guests = os.path.join(self.workdir, "guests")
        os.makedirs(guests, mode=0o755, exist_ok=True)
        image = os.path.join(guests, f"{name}.img")
        serial_log = os.path.join(guests, f"{name}.serial.log")
        return Guest(name, uuid, image, serial_log, write_guest(name, uuid, image, serial_log, memory_mib))

    def kill_node2_libvirtd(self) -> None:
        """Stop node2's libvirtd (its QEMUs go on running), as a crash or an upgrade would."""
        with open(os.path.join(self.workdir, "node2", "libvirtd.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _running(pid), 30.0, f"node2's libvirtd ({pid}) to exit")

    def ensure_started(self) -> None:
        """Start again whatever of the lab is not running (``scripts/hypervisor-lab start`` is idempotent)."""
        done = _run("start", self.workdir, START_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/hypervisor-lab start failed (exit {done.returncode}):\n{done.stderr}")

    def record(self, what: str, seconds: float) -> None:
        """Keep a timing for the session's summary, and print it now (visible with -s)."""
        self.timings.append((what, seconds))
        print(f"[qemu timing] {what}: {seconds * 1000:.0f} ms", flush=True)

    def summary(self) -> str:
        return "\n".join(f"  {what:<58} {seconds * 1000:9.0f} ms" for what, seconds in self.timings)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll ``predicate`` until it is true; return the seconds it took; fail after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (PID 1 here may be slow to reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _run(action: str, workdir: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, action, workdir], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def start_lab(workdir: str) -> Lab:
    """Run ``scripts/hypervisor-lab start``; on any failure stop what it started and raise."""
    started = time.monotonic()
    try:
        done = _run("start", workdir, START_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"scripts/hypervisor-lab start did not finish in {START_TIMEOUT:.0f} s: {e.stderr}"
                           f"{_stop_quietly(workdir)}") from None
    seconds = time.monotonic() - started
    uris = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if done.returncode != 0 or "node1" not in uris or "node2" not in uris:
        raise RuntimeError(f"scripts/hypervisor-lab start failed (exit {done.returncode}):\n{done.stderr}{done.stdout}"
                           f"{_stop_quietly(workdir)}")
    return Lab(uri1=uris["node1"], uri2=uris["node2"], workdir=workdir, start_seconds=seconds, start_log=done.stderr)


def stop_lab(workdir: str) -> str:
    done = _run("stop", workdir, STOP_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/hypervisor-lab stop failed (exit {done.returncode}):\n{done.stderr}")
    return done.stderr


def _stop_quietly(workdir: str) -> str:
    """Stop after a failed start; the stop's own failure is reported along, not instead."""
    try:
        stop_lab(workdir)
        return ""
    except Exception as e:
        return f"\n(and the stop after it failed too: {e})"


_lock = threading.Lock()
_lab: Lab | None = None
_users = 0


def _acquire() -> Lab:
    global _lab, _users
    with _lock:
        if _lab is None:
            # In /tmp (short: node2's socket path must fit a unix socket), traversable by libvirt-qemu.
            workdir = tempfile.mkdtemp(prefix="pvc-hvlab-", dir="/tmp")
            os.chmod(workdir, 0o755)
            try:
                _lab = start_lab(workdir)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            print(f"\n[qemu lab] {_lab.uri1} and {_lab.uri2} up in {_lab.start_seconds:.1f} s "
                  f"(workdir {workdir})\n{_lab.start_log}", flush=True)
        _users += 1
        return _lab


def _release() -> None:
    global _lab, _users
    with _lock:
        _users -= 1
        if _users > 0 or _lab is None:
            return
        lab, _lab = _lab, None
        started = time.monotonic()
        log = stop_lab(lab.workdir)  # raises (and keeps the workdir for a look) when the stop failed
        lab.record("lab stop (destroy domains, stop 4 daemons)", time.monotonic() - started)
        print(f"\n[qemu lab] timings:\n  {'lab start (scripts/hypervisor-lab start)':<58} "
              f"{lab.start_seconds * 1000:9.0f} ms\n{lab.summary()}\n{log}", flush=True)
        if not os.environ.get("PVC_HVLAB_KEEP"):
            shutil.rmtree(lab.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def hypervisor_lab() -> Iterator[Lab]:
    """node1 (the host's libvirtd, qemu:///system) and node2 (a second libvirtd in its own namespace)."""
    lab = _acquire()
    try:
        yield lab
    finally:
        _release()
