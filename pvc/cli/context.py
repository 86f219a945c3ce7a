"""The CLI's lazy context object: settings and the cluster handle, made on first use only."""

from __future__ import annotations

import os
import sys

import click

from pvc.cli.errors import CommandFailed
from pvc.lib.config import Settings, load_settings
from pvc.lib.core import Cluster
from pvc.lib.errors import PvcError


class CliContext:
    """Holds what the root options said; reads the configuration and opens the store only when
    a command needs them, and closes the store when the command ends."""

    def __init__(self, config_path: str | None = None, settings: Settings | None = None, core: Cluster | None = None):
        self.config_path = config_path
        self._settings = settings or (core.settings if core is not None else None)
        self._core = core
        self._owns_core = core is None

    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path, os.environ)
            except PvcError as e:
                raise CommandFailed(e) from None
        return self._settings

    def core(self) -> Cluster:
        if self._core is None:
            self._core = Cluster(self.settings())
            ctx = click.get_current_context(silent=True)
            if ctx is not None:
                ctx.call_on_close(self.close)
                # VM XML parsed by one command is kept for the next (pvc vm list at 1,000 VMs
                # would otherwise parse every document in every run); loaded only when used.
                records = sys.modules.get("pvc.lib.vm_records")
                if records is not None:
                    records.PARSED.persist(facts_cache_path(os.environ))
                    ctx.call_on_close(records.PARSED.save)
        return self._core

    def close(self) -> None:
        if self._core is not None and self._owns_core:
            self._core.close()
            self._core = None


def facts_cache_path(env: os._Environ[str] | dict[str, str]) -> str:
    """Where the CLI keeps parsed VM XML between runs: the user's cache directory (XDG)."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pvc", "vm-facts")


def completion_core(ctx: click.Context) -> Cluster | None:
    """A cluster handle for shell completion, from the --config given so far.

    None when the configuration is broken, or when the embedded store file does not exist yet:
    pressing TAB must not create a store."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, CliContext) else CliContext(root.params.get("config"))
    try:
        settings = obj.settings()
    except CommandFailed:
        return None
    if settings.engine == "embedded" and not os.path.exists(settings.store_path or ""):
        return None
    return Cluster(settings)
