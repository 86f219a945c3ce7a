"""Figures of the host itself, read from the kernel: memory, load and the static facts.

Memory comes from /proc/meminfo, not from the hypervisor: libvirt's figure can differ from the
host's (hot-plugged memory), and its test driver reports a made-up machine.
"""

from __future__ import annotations

import os

from pvc.lib.node_reports import NodeFacts

MEMINFO = "/proc/meminfo"


def memory_mib(path: str = MEMINFO) -> tuple[int, int, int]:
    """(total, used, free) in MiB; free is what the kernel can give without swapping
    (MemAvailable), used the rest."""
    fields: dict[str, int] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0])  # KiB
    total = fields.get("MemTotal", 0) // 1024
    free = fields.get("MemAvailable", fields.get("MemFree", 0)) // 1024
    return total, max(total - free, 0), free


def load() -> float:
    """The one-minute load average."""
    return os.getloadavg()[0]


def facts() -> NodeFacts:
    """CPU count, kernel release, operating system and architecture (the original's staticdata)."""
    u = os.uname()
    system = "GNU/Linux" if u.sysname == "Linux" else u.sysname
    return NodeFacts(os.cpu_count() or 1, u.release.replace(" ", "_"), system.replace(" ", "_"), u.machine)
