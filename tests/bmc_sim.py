"""Simulated BMCs for the fencing tests: one OpenIPMI ``ipmi_sim`` per fake node on 127.0.0.1.

Each simulator runs in a directory of its own, on a free loopback UDP port, with one user
``admin`` whose password (random, per simulator) is also written to a password file of mode 0600
for the agents' ``Bmc.password_file``. Its chassis is a shell script that keeps the power state
in a file (``power``: 1 on, 0 off; on at the start) and appends every command it is given to
``chassis.log`` with the time, so a test can assert that the power went off and on again, how
often, and in which order relative to other events.

``ipmi_sim`` is ready when ``ipmitool ... chassis power status`` answers (polled with a deadline,
never a fixed sleep); a start that lost its port to another process is retried on another port.
``stop()`` kills the process group (SIGTERM, then SIGKILL), so nothing is left behind even when
the test fails. ``silent_bmc()`` holds a UDP port that never answers: a BMC that is down.
``IpmitoolSpy`` is an ``ipmitool`` wrapper to put first on PATH: it logs every argv (and whether
``IPMI_PASSWORD`` was set, never its value) and execs the real ipmitool.

Debian packages: ``ipmitool`` (the client) and ``openipmi`` (``ipmi_sim``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from pvc.lib.config import Bmc

#: The real ipmitool, resolved before any test puts a wrapper first on PATH.
REAL_IPMITOOL = shutil.which("ipmitool") or "/usr/bin/ipmitool"
IPMI_SIM = shutil.which("ipmi_sim") or "/usr/bin/ipmi_sim"
HOST = "127.0.0.1"
USER = "admin"

LAN_CONF = """name "{name}"
set_working_mc 0x20
  startlan 1
    addr {host} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid {guid}
  endlan
  chassis_control "{chassis} 0x20"
  user 2 true "{user}" "{password}" admin 10 none md2 md5 straight
"""

CMDS_EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""

#: Called by ipmi_sim as `chassis.sh <dev> get power` (prints power:0|1) or `<dev> set power 0|1`
#: / `<dev> set reset 1`. One line per call in chassis.log: "<epoch seconds> <words...>".
CHASSIS_SH = """#!/bin/sh
dir=$(dirname "$0")
echo "$(date +%s.%N) $2 $3${4:+ $4}" >> "$dir/chassis.log"
case "$2 $3" in
  "get power") echo "power:$(cat "$dir/power")" ;;
  "set power") echo "$4" > "$dir/power.new" && mv "$dir/power.new" "$dir/power" ;;
esac
exit 0
"""


def free_udp_port(host: str = HOST) -> int:
    """A UDP port free on ``host`` right now (the kernel's choice among its ephemeral ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def udp_bound(port: int) -> bool:
    """Whether some socket is bound to UDP ``port`` on 127.0.0.1 (read from /proc, which does
    not disturb the bind the simulator is about to make)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            return any(line.split()[1] == want for line in list(f)[1:] if len(line.split()) > 1)
    except OSError:
        return True  # no /proc: let the ipmitool probe decide


def _pause(seconds: float) -> None:
    threading.Event().wait(seconds)


@dataclass(frozen=True)
class ChassisEvent:
    time: float
    command: str  # "get power", "set power 0", "set power 1", "set reset 1"


class BmcSim:
    """One simulated BMC for node ``node``. Use as a context manager (or start()/stop())."""

    def __init__(self, node: str, workdir: Path, password: str | None = None):
        self.node = node
        self.host = HOST
        self.user = USER
        # 16 characters: the most an IPMI 1.5 user password takes; distinctive in any text.
        self.password = password or f"pw{secrets.token_hex(7)}"
        self.dir = Path(workdir) / f"bmc-{node}"
        self.dir.mkdir(parents=True, exist_ok=False)
        self.password_file = self.dir / "password"
        self.chassis_log = self.dir / "chassis.log"
        self.power_file = self.dir / "power"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        chassis = self.dir / "chassis.sh"
        chassis.write_text(CHASSIS_SH)
        chassis.chmod(0o755)
        (self.dir / "cmds.emu").write_text(CMDS_EMU)
        (self.dir / "state").mkdir()

    # -- life ---------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0, attempts: int = 5) -> "BmcSim":
        if not os.access(IPMI_SIM, os.X_OK) or not os.access(REAL_IPMITOOL, os.X_OK):
            raise RuntimeError("the fencing tests need ipmitool and ipmi_sim: apt-get install -y ipmitool openipmi")
        deadline = time.monotonic() + timeout
        last = ""
        for _ in range(attempts):
            self._launch(free_udp_port())
            ready, last = self._wait_ready(deadline)
            if ready:
                self.clear()  # the readiness probes are not the test's events
                return self
            self._kill()
            if "already in use" not in last or time.monotonic() > deadline:
                break  # not a lost port race: retrying will not help
        raise RuntimeError(f"ipmi_sim for {self.node} did not become ready: {last or 'no answer'}")

    def _launch(self, port: int) -> None:
        self.port = port
        conf = self.dir / "lan.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
        with os.fdopen(fd, "w") as f:
            f.write(LAN_CONF.format(name=self.node, host=self.host, port=port, guid=secrets.token_hex(16),
                                    chassis=shlex.quote(str(self.dir / "chassis.sh")), user=self.user,
                                    password=self.password))
        self.power_file.write_text("1\n")
        self.clear()
        with open(self.dir / "ipmi_sim.out", "ab") as out:
            self.process = subprocess.Popen(
                [IPMI_SIM, "-c", str(conf), "-f", str(self.dir / "cmds.emu"), "-s", str(self.dir / "state"), "-n"],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills it and its chassis scripts
            )

    def _wait_ready(self, deadline: float) -> tuple[bool, str]:
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                return False, f"ipmi_sim exited with {self.process.returncode}: {self.output()}"
            if udp_bound(self.port):
                done = self.ipmitool("chassis", "power", "status", retries=1)
                if done.returncode == 0 and "Chassis Power is" in done.stdout:
                    return True, ""
                last = (done.stderr or done.stdout).strip()
            else:
                last = f"port {self.port} not bound yet"
            if time.monotonic() > deadline:
                return False, last
            _pause(0.02)

    def stop(self) -> None:
        self._kill()

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the group is the leader's pid
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # a chassis script still running, if any
            os.killpg(pgid, signal.SIGKILL)

    def __enter__(self) -> "BmcSim":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use ----------------------------------------------------------------------------------
    def bmc(self) -> Bmc:
        """The agents' configuration of this BMC."""
        return Bmc(node=self.node, host=self.host, user=self.user, password_file=str(self.password_file),
                   port=self.port)

    def ipmitool(self, *command: str, retries: int = 2,
                 password: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real ipmitool against this simulator, as the agents call it."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "IPMI_PASSWORD": self.password if password is None else password}
        argv = [REAL_IPMITOOL, "-I", "lanplus", "-C", "3", "-N", "1", "-R", str(retries), "-H", self.host,
                "-p", str(self.port), "-U", self.user, "-E", *command]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, check=False)

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return " ".join((self.dir / "ipmi_sim.out").read_text(errors="replace").split())
        return ""

    def clear(self) -> None:
        """Forget the chassis events so far."""
        self.chassis_log.write_text("")

    def events(self) -> list[ChassisEvent]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.chassis_log.read_text().splitlines():
                stamp, _, command = line.partition(" ")
                if command:
                    found.append(ChassisEvent(float(stamp), command))
        return found

    def commands(self) -> list[str]:
        return [e.command for e in self.events()]

    def power_sets(self) -> list[str]:
        """The power commands (``off``/``on``/``reset``) in the order the BMC got them."""
        names = {"set power 0": "off", "set power 1": "on", "set reset 1": "reset"}
        return [names[c] for c in self.commands() if c in names]

    def power(self) -> str:
        return "on" if self.power_file.read_text().strip() == "1" else "off"


class IpmitoolSpy:
    """An ``ipmitool`` wrapper for the front of PATH: logs each argv, execs the real one."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "argv.log"
        self.log.write_text("")
        script = self.dir / "ipmitool"
        # One printf per call, so concurrent calls do not interleave; \037 separates arguments.
        script.write_text(
            "#!/bin/sh\n"
            'line=$(printf \'%s\\037\' "$@")\n'
            f'printf \'%s %s\\n\' "env=${{IPMI_PASSWORD:+set}}" "$line" >> {shlex.quote(str(self.log))}\n'
            f'exec {shlex.quote(REAL_IPMITOOL)} "$@"\n'
        )
        script.chmod(0o755)

    def calls(self) -> list[tuple[bool, list[str]]]:
        """(IPMI_PASSWORD was set, argv without the program name) per call, in order."""
        found = []
        for line in self.log.read_text().splitlines():
            env, _, args = line.partition(" ")
            found.append((env == "env=set", args.split("\x1f")[:-1] if args else []))
        return found

    def commands(self, port: int | None = None) -> list[str]:
        """The commands (``chassis power off`` ...) of the calls, to one BMC port or all."""
        out = []
        for _env, argv in self.calls():
            if port is not None and argv[argv.index("-p") + 1] != str(port):
                continue
            out.append(" ".join(argv[argv.index("chassis"):] if "chassis" in argv else argv))
        return out


@contextlib.contextmanager
def silent_bmc() -> Iterator[int]:
    """A loopback UDP port that is bound (nobody else gets it) but never answers: a dead BMC."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        yield s.getsockname()[1]


class BmcSims:
    """The simulators of one test: ``start(node)`` each; all stopped at the end."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.sims: dict[str, BmcSim] = {}

    def start(self, node: str) -> BmcSim:
        sim = BmcSim(node, self.workdir)
        self.sims[node] = sim
        return sim.start()

    def __getitem__(self, node: str) -> BmcSim:
        return self.sims[node]

    def stop(self) -> None:
        for sim in self.sims.values():
            sim.stop()


@pytest.fixture
def bmc_sims(tmp_path: Path) -> Iterator[BmcSims]:
    sims = BmcSims(tmp_path / "bmcs")
    try:
        yield sims
    finally:
        sims.stop()
