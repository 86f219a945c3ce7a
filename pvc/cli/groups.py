"""The command groups (the nouns of the endpoint tree): their help and aliases, the index of the
top-level commands, and the lazy groups that load a group's commands only when it is used.

`pvc --help` lists every top-level command and shell completion offers them, but neither needs
the operation declarations (importing them costs more than Click itself), so the root group reads
:data:`INDEX` instead; a group's commands are built from the declarations (:mod:`pvc.cli.build`)
the first time that group is used. This module imports Click and nothing else of pvc.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator, MutableMapping

import click

#: group path → (help, aliases). Groups not listed get "Manage <name>s." and no alias.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "node": ("Manage the nodes of the cluster: state, coordinator role, flush and ready.", ()),
    "vm": ("Manage virtual machines: define, modify, start and stop, migrate between nodes.", ()),
    "network": ("Manage virtual networks: bridged vLANs and managed VXLANs.", ()),
    "network lease": ("Manage the DHCP leases and static reservations of a managed network.", ("dhcp",)),
    "network acl": ("Manage the firewall rules (nftables ACLs) of a network.", ()),
    "storage": ("Manage the storage of the cluster (Ceph).", ()),
    "storage ceph": ("Manage the Ceph storage cluster: status, OSDs, pools, RBD volumes and snapshots.", ()),
    "storage ceph cluster-option": ("Set or unset Ceph's cluster-wide OSD flags (noout, noscrub, ...).", ()),
    "storage ceph osd": ("Manage the Ceph OSDs: add, remove, set in or out.", ()),
    "storage ceph pool": ("Manage the Ceph RBD pools.", ()),
    "storage ceph volume": ("Manage the RBD volumes (the VMs' disks): add, resize, rename, remove.", ()),
    "storage ceph volume snapshot": ("Manage the snapshots of RBD volumes.", ()),
}

#: Commands written by hand (pvc/cli/commands/), by their path in the tree: "module:attribute".
COMMANDS: dict[tuple[str, ...], str] = {
    ("serve",): "pvc.cli.commands.serve:serve",
    ("agent",): "pvc.cli.commands.agent:agent",
    ("network", "lease", "hook"): "pvc.cli.commands.lease_hook:lease_hook",
    ("vm", "modify"): "pvc.cli.commands.vm_modify:modify",
}

# The index below is generated from the operation declarations and COMMANDS by
# scripts/gen-completions (pvc.cli.build.write_index); tests/test_cli_lazy.py fails when it differs
# from what they give. Each top-level command: name → (kind "group" or "command", the modules
# declaring its operations, and for a command the first paragraph of its help (all that Click's
# short help is made of), its short help and whether it is hidden).
# BEGIN GENERATED INDEX
INDEX: dict[str, tuple[str, tuple[str, ...], str | None, str | None, bool]] = {
    'agent': ('command', (), 'Run the node agent of this host until SIGTERM or SIGINT.', None, False),
    'init': ('command', ('pvc.lib.ops.cluster',), "Create the cluster's root tree in the store.", "Create the cluster's root tree in the store.", False),
    'network': ('group', ('pvc.lib.ops.acl', 'pvc.lib.ops.lease', 'pvc.lib.ops.network'), None, None, False),
    'node': ('group', ('pvc.lib.ops.node',), None, None, False),
    'serve': ('command', (), 'Serve the PVC HTTP API (see the manual) until SIGTERM or SIGINT.', None, False),
    'storage': ('group', ('pvc.lib.ops.storage',), None, None, False),
    'vm': ('group', ('pvc.lib.ops.vm',), None, None, False),
}
# END GENERATED INDEX


def group_help(path: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Help text and aliases of the group at ``path``."""
    return GROUPS.get(" ".join(path), (f"Manage {path[-1]}s.", ()))


def load_command(spec: str) -> click.Command:
    """The hand-written command named by a "module:attribute" spec of :data:`COMMANDS`."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]


class LoadedCommands(MutableMapping[str, click.Command]):
    """A group's commands, built by ``load()`` the first time any of them (or their names) is asked for."""

    def __init__(self, load: Callable[[], MutableMapping[str, click.Command]]):
        self._load = load
        self._commands: MutableMapping[str, click.Command] | None = None

    @property
    def loaded(self) -> bool:
        return self._commands is not None

    def _all(self) -> MutableMapping[str, click.Command]:
        if self._commands is None:
            self._commands = self._load()
        return self._commands

    def __getitem__(self, name: str) -> click.Command:
        return self._all()[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._all()[name] = command

    def __delitem__(self, name: str) -> None:
        del self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def lazy_group(name: str, commands: LoadedCommands | None = None, alias_of: str | None = None) -> click.Group:
    """The top-level group ``name``; its commands are built when first used (an alias shares them)."""
    help_text, _ = group_help((alias_of or name,))
    if commands is None:
        def load() -> MutableMapping[str, click.Command]:
            from pvc.cli.build import group_commands

            return group_commands(name, INDEX[name][1] if name in INDEX else ())

        commands = LoadedCommands(load)
    if alias_of is not None:
        return click.Group(name, commands=commands, help=help_text, short_help=f"Alias of '{alias_of}'.", hidden=True)
    return click.Group(name, commands=commands, help=help_text)


class TopCommands(MutableMapping[str, click.Command]):
    """The root's commands: their names from :data:`INDEX`, each made when first asked for.

    A name the index lacks (a group declared after the index was generated) is looked up in the
    declarations, so the command works even with a stale index; only `pvc --help` would miss it."""

    def __init__(self) -> None:
        self._made: dict[str, click.Command] = {}
        self._names = list(INDEX)

    def made(self, name: str) -> click.Command | None:
        return self._made.get(name)

    def _make(self, name: str) -> click.Command | None:
        aliases = {alias: path for path, (_, names) in GROUPS.items() if " " not in path for alias in names}
        if name in aliases:
            main = self[aliases[name]]
            assert isinstance(main, click.Group)
            return lazy_group(name, main.commands, alias_of=aliases[name])  # type: ignore[arg-type]
        if name in INDEX:
            kind = INDEX[name][0]
        else:  # not in the index: ask the declarations (all of them)
            from pvc.cli.build import top_kind

            kind = top_kind(name)
            if kind is None:
                return None
        if kind == "group":
            return lazy_group(name)
        if (name,) in COMMANDS:
            return load_command(COMMANDS[(name,)])
        from pvc.cli.build import top_command

        return top_command(name, INDEX[name][1] if name in INDEX else ())

    def __getitem__(self, name: str) -> click.Command:
        command = self._made.get(name)
        if command is None:
            command = self._make(name)
            if command is None:
                raise KeyError(name)
            self._made[name] = command
            if name not in self._names:
                self._names.append(name)
        return command

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._made[name] = command
        if name not in self._names:
            self._names.append(name)

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._made.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


_LISTING = "pvc.cli.listing"


class LazyRoot(click.Group):
    """The root group: lists its commands from :data:`INDEX` and makes each when it is used.

    Listing them (`pvc --help`, completing `pvc <TAB>`) shows a command's name and short help
    only; for a command not made yet both come from the index, so nothing is imported for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = TopCommands()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        commands: TopCommands = self.commands  # type: ignore[assignment]
        if ctx.meta.get(_LISTING) and commands.made(cmd_name) is None and cmd_name in INDEX:
            kind, _, help_text, short_help, hidden = INDEX[cmd_name]
            if kind == "command":  # a stand-in with what a listing shows
                return click.Command(cmd_name, help=help_text, short_help=short_help, hidden=hidden)
        return commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        ctx.meta[_LISTING] = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            ctx.meta.pop(_LISTING, None)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        ctx.meta[_LISTING] = True
        try:
            return super().shell_complete(ctx, incomplete)
        finally:
            ctx.meta.pop(_LISTING, None)
