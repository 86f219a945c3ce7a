"""A real lab Ceph for the storage tests: the session fixture ``ceph_lab`` around ``scripts/ceph-lab``.

tests/conftest.py imports the fixture, so any test can take it::

    def test_x(ceph_lab):            # a CephLab
        ceph_lab.ceph("osd", "pool", "create", "p1", "8")          # JSON mode; None when Ceph printed nothing
        assert "p1" in ceph_lab.ceph("osd", "pool", "ls")
        ceph_lab.rbd("create", "--size", "64M", "p1/v1")
        assert ceph_lab.rbd("info", "--format", "json", "p1/v1")["size"] == 64 << 20
        subprocess.run([...], env=ceph_lab.env)                    # CEPH_CONF set, no venv leaking in

and conftest marks it ``ceph`` at collection (``-m "not ceph"`` runs without the lab).

The lab (1 mon, 1 mgr, 2 memstore OSDs: pools get size 2 and one OSD can go out and back in with every
PG still active) starts once per session, on the first test that asks for it, in its own directory
under /tmp, on a free random mon port (and that port + 3489, Ceph's msgr1 port) in 20000-27999: below
the kernel's ephemeral range, and away from a developer's own lab or cluster on 3300/6789. The OSDs and
the mgr take free ports from 6800 up by themselves, so labs side by side do not collide. Start to
HEALTH_OK takes ~5-6 s; ~420 MB RSS. It does not install Ceph (scripts/test does): without Ceph the
fixture fails, it never skips.

It is stopped (SIGKILL of its own daemons, then rm -rf of its directory) three ways, because a lab left
behind costs ~420 MB and keeps ports:
  1. the fixture's finalizer, at the end of the session, also after failures;
  2. atexit, for an interpreter that exits without running the session's finalizers;
  3. a watchdog started by ``scripts/ceph-lab start`` with ``CEPH_LAB_WATCH_PID`` = this process: it
     checks once a second that this process (same PID and start time) still exists, and stops the lab
     when it does not. This is what covers a pytest killed by SIGKILL or by a SIGTERM it does not
     handle (no Python code runs then), a crash, or ``os._exit``. It runs in a session of its own, so a
     Ctrl-C to the terminal's process group does not take it (or the daemons) down half-way; it exits by
     itself when the lab was stopped. Signal handlers in pytest were not used: they would replace
     pytest's own and still not cover SIGKILL.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "ceph-lab")
#: Ceph's programs the lab and the tests use, and where the test command installs them from.
PROGRAMS = ("ceph", "ceph-mon", "ceph-mgr", "ceph-osd", "ceph-authtool", "monmaptool", "rbd", "rados")
INSTALL = "apt-get install -y --no-install-recommends ceph-mon ceph-mgr ceph-osd ceph-common"
#: Deadline of one start (conftest's extend_first_timeouts adds it to the first user's timeout). A
#: start takes 5-8 s; the script itself gives up on a step after 30-90 s.
START_TIMEOUT = 150.0
STOP_TIMEOUT = 60.0
HEALTH_TIMEOUT = 60.0
#: The lab's mon listens on PORT (msgr2) and PORT + MSGR1_OFFSET (msgr1): see scripts/ceph-lab.
MSGR1_OFFSET = 3489
PORT_RANGE = (20000, 28000)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: The lab's daemons, as /proc/PID/comm names them.
DAEMONS = ("ceph-mon", "ceph-mgr", "ceph-osd")


#: The session's lab fixtures: a test whose fixture closure holds one uses Ceph (conftest marks it ``ceph``).
CEPH_FIXTURES = frozenset({"ceph_lab"})


def uses_ceph(item: pytest.Item) -> bool:
    """Whether collection shows ``item`` using the lab: ``ceph_lab`` anywhere in its fixture closure
    (directly, or through a fixture of a test file that takes it). A test that asks for the lab only
    at run time (``request.getfixturevalue``) must be marked ``@pytest.mark.ceph`` by hand."""
    return bool(CEPH_FIXTURES.intersection(getattr(item, "fixturenames", ())))


class CephCommandError(Exception):
    """A Ceph command exited non-zero or did not finish in time; ``stderr`` holds Ceph's own words."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str) -> None:
        self.argv, self.returncode, self.stdout, self.stderr = list(argv), returncode, stdout, stderr
        status = "timed out" if returncode is None else f"exit {returncode}"
        super().__init__(f"{' '.join(self.argv)}: {status}: {stderr.strip() or stdout.strip()}")


def clean_env(conf: str | None = None) -> dict[str, str]:
    """An environment for Ceph's programs: this process's, without what a virtualenv or a test runner
    sets for *its* Python (``ceph`` is a /usr/bin/python3 script: PYTHONHOME makes it fail to find its
    own standard library, PYTHONPATH could shadow its modules), the system's directories first on PATH
    (not the venv's bin), and ``CEPH_CONF`` when ``conf`` is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "CEPH_CONF")}
    rest = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and d not in SYSTEM_PATH.split(":") and not _in_venv(d)]
    env["PATH"] = os.pathsep.join([SYSTEM_PATH, *rest])
    env.setdefault("LANG", "C.UTF-8")
    if conf is not None:
        env["CEPH_CONF"] = conf
    return env


def _in_venv(directory: str) -> bool:
    """A virtualenv's bin directory (ours, by sys.prefix, or any other: it has pyvenv.cfg beside it)."""
    real = os.path.realpath(directory)
    return (sys.prefix != sys.base_prefix and real.startswith(os.path.realpath(sys.prefix) + os.sep)) \
        or os.path.exists(os.path.join(os.path.dirname(real), "pyvenv.cfg"))


def require_ceph(path: str | None = None) -> None:
    """Fail (never skip) with what to do when Ceph's programs are not installed."""
    missing = [p for p in PROGRAMS if shutil.which(p, path=path if path is not None else clean_env()["PATH"]) is None]
    if missing:
        pytest.fail(f"Ceph is not installed (no {', '.join(missing)}): scripts/test installs it, or as root: "
                    f"{INSTALL}", pytrace=False)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (PID 1 here may be slow to reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_mon_port(rng: random.Random | None = None) -> int:
    """A random port P in PORT_RANGE with P and P + 3489 (the mon's two ports) free on 127.0.0.1."""
    rng = rng or random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        if _port_free(port) and _port_free(port + MSGR1_OFFSET):
            return port
    raise RuntimeError(f"no free pair of ports (P, P + {MSGR1_OFFSET}) in {PORT_RANGE}")


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``predicate`` until it is true; return the seconds it took; fail the test after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class CephLab:
    """One running lab. ``dir`` holds everything (conf, keyrings, logs in ``dir``/log, OSD data in
    ``dir``/osd.N); ``conf`` is its ceph.conf, ``env`` a complete environment for Ceph's programs
    (``CEPH_CONF`` = ``conf``, see ``clean_env``); ``mon_port`` the mon's msgr2 port."""

    dir: str
    conf: str
    mon_port: int
    env: dict[str, str]
    osds: int
    start_seconds: float = 0.0
    start_log: str = ""
    stopped: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)

    # -- running Ceph's programs (argument lists, a timeout, this lab's conf) --

    def run(self, *argv: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` with this lab's environment; raise CephCommandError on a non-zero exit (with
        ``check``) or when it does not finish within ``timeout`` seconds."""
        try:
            done = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise CephCommandError(argv, None, _text(e.stdout), f"timed out after {timeout:.0f} s; "
                                   f"{_text(e.stderr)}") from None
        if check and done.returncode != 0:
            raise CephCommandError(argv, done.returncode, done.stdout, done.stderr)
        return done

    def ceph(self, *args: str, timeout: float = 60.0) -> Any:
        """``ceph ARGS --format json``: the parsed JSON; the text when Ceph gives none for this command
        (``osd status`` in 16.2 prints its table anyway); None when it printed nothing on stdout (many
        commands only confirm on stderr: ``pool 'x' created``)."""
        return _parsed(self.run("ceph", "--connect-timeout", "15", *args, "--format", "json",
                                timeout=timeout).stdout)

    def ceph_text(self, *args: str, timeout: float = 60.0) -> str:
        """``ceph ARGS`` in plain text: stdout, or stderr when stdout is empty (the confirmation)."""
        done = self.run("ceph", "--connect-timeout", "15", *args, timeout=timeout)
        return done.stdout.strip() or done.stderr.strip()

    def rbd(self, *args: str, timeout: float = 60.0) -> Any:
        """``rbd ARGS`` (add ``--format json`` where rbd offers it: info, ls, du, snap ls): the parsed
        JSON when the output is JSON, else the text; None when it printed nothing."""
        return _parsed(self.run("rbd", *args, timeout=timeout).stdout)

    def rados(self, *args: str, timeout: float = 60.0) -> Any:
        """``rados ARGS``, like ``rbd``."""
        return _parsed(self.run("rados", *args, timeout=timeout).stdout)

    # -- state --

    def health(self) -> str:
        """HEALTH_OK, HEALTH_WARN or HEALTH_ERR."""
        return str(self.ceph("health")["status"])

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> float:
        """Poll until HEALTH_OK; fail with Ceph's own report after ``timeout``."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            report = self.ceph("health", "detail")
            if report["status"] == "HEALTH_OK":
                return time.monotonic() - start
            if time.monotonic() >= deadline:
                pytest.fail(f"lab {self.dir} not HEALTH_OK after {timeout:.0f} s: {json.dumps(report)}")
            time.sleep(0.2)

    def pids(self) -> set[int]:
        """Every running process of this lab: the daemons (whether ``start`` recorded them or an agent
        started them, with ``-c`` this conf or ``CEPH_CONF`` set to it) and the watchdog."""
        found: set[int] = set()
        try:
            with open(os.path.join(self.dir, "watchdog")) as f:
                watchdog = int(f.read().strip() or 0)
            if watchdog and _running(watchdog) and f" watch {self.dir} " in _cmdline(watchdog):
                found.add(watchdog)
        except (OSError, ValueError):
            pass
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _comm(int(entry)) in DAEMONS and _running(int(entry)) \
                    and (_names_conf(int(entry), self.conf) or _env_conf(int(entry), self.conf)):
                found.add(int(entry))
        return found

    # -- changing it --

    def add_file_osd(self, path: str, timeout: float = 90.0) -> int:
        """Add a BlueStore OSD on the plain file ``path`` (outside ``dir``/osd.N) as a node agent does
        (``scripts/ceph-lab add-file-osd``; the recipe is in that script's header); its id once up and in."""
        done = self.run(SCRIPT, "add-file-osd", path, self.dir, timeout=timeout)
        return int(done.stdout.strip().splitlines()[-1])

    def record(self, what: str, seconds: float) -> None:
        """Keep a timing for the session's summary, and print it now (visible with -s)."""
        self.timings.append((what, seconds))
        print(f"[ceph timing] {what}: {seconds * 1000:.0f} ms", flush=True)

    def stop(self) -> float:
        """Kill this lab's daemons and remove ``dir`` (``scripts/ceph-lab stop``); the seconds it took."""
        if self.stopped:
            return 0.0
        started = time.monotonic()
        done = subprocess.run([SCRIPT, "stop", self.dir], env=clean_env(), capture_output=True, text=True,
                              timeout=STOP_TIMEOUT, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/ceph-lab stop {self.dir} failed (exit {done.returncode}): {done.stderr}")
        self.stopped = True
        return time.monotonic() - started


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _parsed(stdout: str) -> Any:
    text = stdout.strip()
    if not text:
        return None
    if text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _names_conf(pid: int, conf: str) -> bool:
    """Whether the process's command line names ``conf`` as its conf (-c/--conf), as ceph-lab's stop checks."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    want = conf.encode()
    return any((a in (b"-c", b"--conf") and b == want) or a == b"--conf=" + want for a, b in zip(argv, argv[1:]))


def _env_conf(pid: int, conf: str) -> bool:
    """Whether the process runs with CEPH_CONF=``conf`` (a daemon started without -c), as ceph-lab's stop checks."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"CEPH_CONF=" + conf.encode() in f.read().split(b"\0")
    except OSError:
        return False


def start_lab(directory: str | None = None, osds: int = 2, mgr: bool = True, mon_port: int | None = None,
              watch_pid: int | None = None, store: str = "memstore", timeout: float = START_TIMEOUT) -> CephLab:
    """Start a lab with ``scripts/ceph-lab start`` in ``directory`` (a new one under /tmp by default) on
    ``mon_port`` (a free random one by default: an occupied port found by the script is retried on
    another), with a watchdog on ``watch_pid`` (this process by default); wait for HEALTH_OK. On any
    failure, stop what was started and raise with the script's output."""
    require_ceph()
    directory = directory or tempfile.mkdtemp(prefix="pvc-ceph-", dir="/tmp")
    directory = os.path.realpath(directory)
    conf = os.path.join(directory, "ceph.conf")
    attempts = 1 if mon_port is not None else 3
    for attempt in range(attempts):
        port = mon_port if mon_port is not None else free_mon_port()
        env = {**clean_env(), "CEPH_LAB_MON_PORT": str(port), "CEPH_LAB_OSDS": str(osds), "CEPH_LAB_STORE": store,
               "CEPH_LAB_WATCH_PID": str(watch_pid if watch_pid is not None else os.getpid())}
        if not mgr:
            env["CEPH_LAB_NO_MGR"] = "1"
        lab = CephLab(dir=directory, conf=conf, mon_port=port, env=clean_env(conf), osds=osds)
        started = time.monotonic()
        try:
            done = subprocess.run([SCRIPT, "start", directory], env=env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"scripts/ceph-lab start did not finish in {timeout:.0f} s:\n{_text(e.stderr)}"
                               f"{_stop_quietly(lab)}") from None
        if done.returncode == 0:
            lab.start_log = done.stderr
            try:
                if mgr:
                    lab.wait_healthy(HEALTH_TIMEOUT)
            except BaseException:
                _stop_quietly(lab)
                raise
            lab.start_seconds = time.monotonic() - started
            return lab
        failure = f"scripts/ceph-lab start failed (exit {done.returncode}):\n{done.stderr}{done.stdout}"
        if os.path.exists(os.path.join(directory, "pids")):
            failure += _stop_quietly(lab)
        if "is taken" not in done.stderr or attempt == attempts - 1:
            raise RuntimeError(failure)
    raise AssertionError("unreachable")


def _stop_quietly(lab: CephLab) -> str:
    """Stop after a failed start; the stop's own failure is reported along, not instead."""
    try:
        lab.stop()
        return ""
    except Exception as e:
        return f"\n(and the stop after it failed too: {e})"


_lock = threading.Lock()
_lab: CephLab | None = None
_users = 0


def _acquire() -> CephLab:
    global _lab, _users
    with _lock:
        if _lab is None:
            _lab = start_lab()
            print(f"\n[ceph lab] HEALTH_OK in {_lab.start_seconds:.1f} s (dir {_lab.dir}, mon port "
                  f"{_lab.mon_port})\n{_lab.start_log}", flush=True)
        _users += 1
        return _lab


def _release() -> None:
    global _lab, _users
    with _lock:
        _users -= 1
        if _users > 0 or _lab is None:
            return
        lab, _lab = _lab, None
        lab.record("lab stop", lab.stop())
        print(f"\n[ceph lab] start {lab.start_seconds * 1000:.0f} ms; "
              + "; ".join(f"{what} {seconds * 1000:.0f} ms" for what, seconds in lab.timings), flush=True)


@atexit.register
def _stop_at_exit() -> None:
    """An interpreter exiting without the session's teardown (the watchdog covers the rest)."""
    global _lab
    lab, _lab = _lab, None
    if lab is not None:
        _stop_quietly(lab)


@pytest.fixture(scope="session")
def ceph_lab() -> Iterator[CephLab]:
    """The session's lab Ceph (1 mon, 1 mgr, 2 memstore OSDs), HEALTH_OK, no pools. Missing Ceph is an
    error, never a skip. Tests share it: name pools uniquely and remove what you create."""
    lab = _acquire()
    try:
        yield lab
    finally:
        _release()
