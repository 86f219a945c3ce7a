"""The agent's view of a hypervisor: the few things it asks of one, behind a small interface.

One implementation talks to libvirt (:mod:`pvc.agent.libvirt_hv`); the agent never imports
libvirt itself. Every method raises :class:`HypervisorError` (with the hypervisor's own text)
and nothing else, so a failing hypervisor is one clear line, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class HypervisorError(Exception):
    """The hypervisor refused or failed; the message is its own text."""


class HypervisorUnavailable(HypervisorError):
    """The hypervisor cannot be reached (not installed, not running, wrong URI)."""


class MigrationUnsupported(HypervisorError):
    """This hypervisor (or the pair of them) cannot live-migrate; the caller moves the VM cold."""


@dataclass(frozen=True)
class DomainInfo:
    """A domain that is active (running or paused) on the hypervisor."""

    uuid: str
    name: str
    memory_mib: int
    vcpus: int


@dataclass(frozen=True)
class HostInfo:
    """What the hypervisor says about its host."""

    cpus: int
    memory_mib: int


class Hypervisor:
    """What the agent needs of a hypervisor. Thread-safe: VM actions run in parallel."""

    uri: str = ""

    def connect(self) -> None:
        """Open the connection; HypervisorUnavailable when that fails."""
        raise NotImplementedError

    def host(self) -> HostInfo:
        raise NotImplementedError

    def active(self) -> dict[str, DomainInfo]:
        """The active domains, by UUID (lower case)."""
        raise NotImplementedError

    def is_active(self, uuid: str) -> bool:
        """Whether the domain exists and is active (running, paused, or arriving by migration)."""
        raise NotImplementedError

    def is_running(self, uuid: str) -> bool:
        """Whether the domain runs here: active and running, not paused (an incoming migration
        is paused until it completes)."""
        raise NotImplementedError

    def start(self, uuid: str, xml: str) -> None:
        """Define the domain from ``xml`` (replacing an inactive definition) and start it."""
        raise NotImplementedError

    def shutdown(self, uuid: str) -> None:
        """Ask the guest to shut down (ACPI); returns at once. Nothing when it is not active."""
        raise NotImplementedError

    def destroy(self, uuid: str) -> None:
        """Stop the domain at once (power off). Nothing when it is not active."""
        raise NotImplementedError

    def undefine(self, uuid: str) -> None:
        """Remove an inactive domain's definition. Nothing when there is none."""
        raise NotImplementedError

    def migrate(self, uuid: str, target_uri: str, data_uri: str | None, timeout: float) -> None:
        """Live-migrate the active domain to the hypervisor at ``target_uri``; its definition
        goes with it. MigrationUnsupported when live migration is impossible here, another
        HypervisorError when it failed (the domain then still runs here)."""
        raise NotImplementedError

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(uuid)`` (on a background thread, quickly) whenever a domain's
        lifecycle changes: started, stopped, shut down, crashed, migrated."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
