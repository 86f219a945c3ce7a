"""Fencing a dead node through its BMC with ipmitool (IPMI over LAN).

The BMC's password stays in its file until a fence runs, and then goes to ipmitool in its
environment (``-E`` reads ``IPMI_PASSWORD``): never in the tree, a log or a command line, where
``ps`` would show it (the original passed ``-P``). Every call has a deadline.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass

from pvc.lib.config import Bmc

log = logging.getLogger("pvc.agent.fencing")

#: Seconds a BMC gets to report the power off after the command.
POWER_OFF_WAIT = 20.0
#: Seconds one ipmitool call may take (a BMC that does not answer fails in about 2 s with -N 1 -R 1).
CALL_TIMEOUT = 20.0


@dataclass(frozen=True)
class FenceResult:
    confirmed: bool
    detail: str


def _ipmitool(bmc: Bmc, password: str, *command: str) -> str:
    # -C 3: a cipher suite every BMC offers, which skips a slow discovery; -N/-R bound the retries.
    argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "1", "-H", bmc.host, "-p", str(bmc.port),
            "-U", bmc.user, "-E", *command]
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "IPMI_PASSWORD": password}
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=CALL_TIMEOUT, check=False)
    except FileNotFoundError:
        raise RuntimeError("ipmitool is not installed") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ipmitool {' '.join(command)} did not answer within {CALL_TIMEOUT:g} s") from None
    if done.returncode != 0:
        text = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise RuntimeError(f"ipmitool {' '.join(command)} failed: {text}")
    return done.stdout


def fence(bmc: Bmc | None) -> FenceResult:
    """Power the node off through its BMC and confirm it is off; then power it on again, so it
    boots clean (no VM survives) and its agent comes back as a new start."""
    if bmc is None:
        return FenceResult(False, "no BMC is configured for it (pvc.system.fencing.ipmi)")
    try:
        with open(bmc.password_file, encoding="utf-8") as f:
            password = f.read().strip()
    except OSError as e:
        return FenceResult(False, f"cannot read the BMC password file {bmc.password_file}: {e.strerror or e}")
    try:
        _ipmitool(bmc, password, "chassis", "power", "off")
        # Many BMCs report the power off only after a moment: ask again until a deadline.
        deadline = time.monotonic() + POWER_OFF_WAIT
        pause = threading.Event()
        while True:
            status = _ipmitool(bmc, password, "chassis", "power", "status")
            if "off" in status.lower():
                break
            if time.monotonic() > deadline:
                return FenceResult(False, f"the BMC at {bmc.host} still reports {' '.join(status.split())!r} "
                                          f"{POWER_OFF_WAIT:g} s after power off")
            pause.wait(1.0)
    except RuntimeError as e:
        return FenceResult(False, str(e))
    detail = f"powered off through its BMC at {bmc.host}:{bmc.port}"
    try:
        _ipmitool(bmc, password, "chassis", "power", "on")
        detail += " and on again"
    except RuntimeError as e:
        log.warning("Fenced node's BMC %s: %s", bmc.host, e)
    return FenceResult(True, detail)
