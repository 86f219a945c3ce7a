"""Running Ceph's own tools for the node agent: ``ceph``, ``rbd``, ``rados``, ``ceph-osd`` and
``ceph-volume``.

Every call is an argument list (never a shell) with a deadline: the command's, from its
:class:`~pvc.agent.commands.Context`. A call still running at the deadline, or when the agent
stops, is killed (its whole process group) and reported. The tools get a clean environment: the
agent's virtual environment must not leak into ``ceph``, which is a script of the system's
Python (``PYTHONPATH``/``PYTHONHOME`` from a venv break its ``rados`` module), and the C locale
keeps Ceph's messages and tables in the English the agent reads. ``CEPH_CONF`` is
``pvc.ceph.config`` when set. A tool that fails raises :class:`~pvc.lib.errors.CommandFailed`
with Ceph's own error text, trimmed of log prefixes and progress meters, and bounded in size.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Any, Sequence

from pvc.agent.commands import Bounds
from pvc.lib.config import Settings
from pvc.lib.errors import CommandFailed, Timeout, quote

#: Longest piece of a tool's error text carried into a message (its end: Ceph says why last).
MAX_ERROR_CHARS = 1000
#: How often a running tool is checked against the agent's ``stopping`` event (it ends sooner
#: when the tool finishes: the wait is on its output).
STOP_CHECK = 0.1
#: Where the tools live on Debian (``ceph-volume`` is in /usr/sbin), whatever the agent's PATH.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

#: A Ceph log line's prefix: "2026-11-30T10:12:15.048+0000 7f4f24491380 -1 ".
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+[+-]\d{4} [0-9a-f]+ +-?\d+ ")
#: rbd's progress meter: "Removing image: 42% complete..." with "done."/"failed." at its end.
_PROGRESS = re.compile(r"[A-Za-z][A-Za-z ]*: \d+% complete\.\.\.(?:done\.|failed\.)?")


def environment(settings: Settings) -> dict[str, str]:
    """The tools' environment: the system's PATH (no venv's bin, no pyenv shims: the tools are
    scripts of the system's python3), the C locale, and ``CEPH_CONF`` when configured. Nothing
    else of the agent's leaks in."""
    env = {"PATH": os.pathsep.join(SYSTEM_PATH), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    if os.environ.get("HOME"):  # ceph-volume writes its log beside it when /var/log/ceph is not writable
        env["HOME"] = os.environ["HOME"]
    if settings.ceph_config:
        env["CEPH_CONF"] = settings.ceph_config
    return env


def error_text(stderr: str, stdout: str = "") -> str:
    """Ceph's reason from a tool's output: log prefixes and progress meters removed, lines joined,
    at most MAX_ERROR_CHARS (the end kept: the tools say why last)."""
    lines = []
    for line in (stderr.strip() or stdout.strip()).splitlines():
        line = _PROGRESS.sub("", _LOG_PREFIX.sub("", line.strip())).strip()
        if line and line not in lines:
            lines.append(line)
    text = " ".join(lines)
    if len(text) > MAX_ERROR_CHARS:
        text = "..." + text[-MAX_ERROR_CHARS:]
    return text


def describe(argv: Sequence[str]) -> str:
    """The tool and its sub-command for messages ("rbd snap create"), never its values."""
    words = [argv[0]]
    for word in argv[1:4]:
        if not re.fullmatch(r"[a-z][a-z-]*", word) or word in ("--format", "--size", "json"):
            break
        words.append(word)
    return " ".join(words)


def run(ctx: Bounds, argv: Sequence[str], *, json_out: bool = False, stdin: str | None = None,
        timeout: float | None = None) -> Any:
    """Run one tool; return its stdout (text, or parsed when ``json_out``: ``--format json`` is
    added). Raises CommandFailed (non-zero exit, a missing tool, output that is not JSON, the
    agent stopping) or Timeout (the command's deadline passed: the tool was killed)."""
    return call(ctx, argv, json_out=json_out, stdin=stdin, timeout=timeout)[0]


def call(ctx: Bounds, argv: Sequence[str], *, json_out: bool = False, stdin: str | None = None,
         timeout: float | None = None) -> tuple[Any, str]:
    """As :func:`run`, and also return the tool's stderr (``ceph`` confirms, and reports some
    refusals such as "pool 'x' already exists", there with exit code 0)."""
    argv = [*argv, "--format", "json"] if json_out else list(argv)
    what = describe(argv)
    limit = ctx.remaining() if timeout is None else min(timeout, ctx.remaining())
    if limit <= 0:
        raise Timeout(f"No time was left on node {quote(ctx.node)} to run '{what}'.")
    if ctx.stopping.is_set():
        raise CommandFailed(f"Node {quote(ctx.node)}'s agent is stopping; '{what}' was not run.")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                env=environment(ctx.settings), start_new_session=True, close_fds=True)
    except FileNotFoundError:
        raise CommandFailed(f"Ceph is not installed on node {quote(ctx.node)}: {argv[0]} was not found.") from None
    except OSError as e:
        raise CommandFailed(f"Node {quote(ctx.node)} cannot run {argv[0]}: {e.strerror or e}.") from None
    stdout, stderr = _wait(ctx, proc, what, time.monotonic() + limit, stdin)
    if proc.returncode != 0:
        reason = error_text(stderr, stdout) or f"exit code {proc.returncode}"
        raise CommandFailed(f"Ceph refused ('{what}' on node {quote(ctx.node)}): {reason}")
    if not json_out:
        return stdout, stderr
    try:
        return json.loads(stdout), stderr
    except ValueError:
        raise CommandFailed(f"'{what}' on node {quote(ctx.node)} printed no JSON: "
                            f"{error_text(stdout)[:200] or 'nothing'}") from None


def _wait(ctx: Bounds, proc: subprocess.Popen, what: str, deadline: float, stdin: str | None) -> tuple[str, str]:
    """The tool's output once it exits; killed at the deadline or when the agent stops."""
    text_in = stdin
    while True:
        left = deadline - time.monotonic()
        try:
            # communicate() may be called again after a timeout without losing output; the short
            # slices only bound how late a stopping agent notices.
            return proc.communicate(text_in, timeout=max(min(left, STOP_CHECK), 0.001))
        except subprocess.TimeoutExpired:
            text_in = None  # handed over on the first call
        if ctx.stopping.is_set():
            kill(proc)
            raise CommandFailed(f"Node {quote(ctx.node)}'s agent stopped while '{what}' ran; it was killed.")
        if time.monotonic() >= deadline:
            kill(proc)
            raise Timeout(f"'{what}' did not finish in time on node {quote(ctx.node)}; it was killed.")


def kill(proc: subprocess.Popen) -> None:
    """Kill a tool with everything it started (its own process group), and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


def spawn(ctx: Bounds, argv: Sequence[str], log_path: str) -> subprocess.Popen:
    """Start a daemon that outlives the command (``ceph-osd -f``): its own session, so a signal
    to the agent's group does not reach it; output to ``log_path``. The caller records its pid."""
    with open(log_path, "ab") as log:
        try:
            return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=environment(ctx.settings), start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise CommandFailed(f"Ceph is not installed on node {quote(ctx.node)}: {argv[0]} was not found.") \
                from None
