"""Registry → Click: one command per operation (or per declared variant), built when its group is
first used (see :mod:`pvc.cli.groups`), and the generated index of the top-level commands.

Commands take the cluster from the lazy context object, convert values with the registry's
converters, call the library function and print its result; a PvcError becomes `Error: ...` on
stderr and the exit code of :mod:`pvc.cli.errors`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, MutableMapping

import click

from pvc.cli import views  # noqa: F401  (registers the table views the commands name)
from pvc.cli.errors import CommandFailed, Exit
from pvc.cli.groups import COMMANDS, GROUPS, load_command
from pvc.cli.render import FORMATS, RENDERERS, render, use_colour
from pvc.lib.errors import InvalidArgument, PvcError
from pvc.lib.registry import COMPLETERS, OPERATIONS, Operation, Param, convert, load_all


class ValueType(click.ParamType):
    """A Click type that converts with the registry's converter, so CLI and HTTP agree."""

    def __init__(self, param: Param):
        self.param = param
        self.name = param.kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return convert(self.param, value)
        except InvalidArgument as e:
            self.fail(e.message, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        """`[mem|vcpus|load|vms]` for choices, so --help shows them; else the value's name."""
        if self.param.choices:
            return "[" + "|".join(self.param.choices) + "]"
        return self.param.metavar

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        if self.param.choices:
            return [CompletionItem(c) for c in self.param.choices if c.startswith(incomplete)]
        if self.param.complete is None:
            return []
        from pvc.cli.context import completion_core

        if self.param.complete not in COMPLETERS:  # declared in an operation module not loaded yet
            load_all()
        core = completion_core(ctx)
        if core is None:
            return []
        try:
            return [CompletionItem(v) for v in COMPLETERS[self.param.complete](core, incomplete)]
        except PvcError:
            return []  # an unreachable store offers nothing rather than a traceback
        finally:
            core.close()


def _flag_dest(p: Param, value: str) -> str:
    return f"_flag_{p.name}_{value}"


def click_params(p: Param) -> list[click.Parameter]:
    """The Click parameters of a value: its argument or option, and any flags giving a choice
    (those fill a value of their own, merged with the option's in the callback)."""
    main = click_param(p)
    if not p.cli_flags:
        return [main]
    if p.required:  # --in alone must do; a missing value is reported in the callback
        main.required = False
        flags = "/".join(flag for flag, _ in p.cli_flags)
        main.help = f"{main.help} Required (or {flags})."
    option = f"--{p.name.replace('_', '-')}"
    return [main] + [click.Option([flag, _flag_dest(p, value)], is_flag=True, help=f"Same as {option} {value}.")
                     for flag, value in p.cli_flags]


def _merge_flags(op: Operation, values: dict[str, Any], ctx: click.Context) -> None:
    """Fold flags such as --in/--out into their value; contradictions and a missing required
    value are usage errors."""
    for p in op.params:
        if not p.cli_flags:
            continue
        option = f"--{p.name.replace('_', '-')}"
        given = [(flag, value) for flag, value in p.cli_flags if values.pop(_flag_dest(p, value), False)]
        if len(given) > 1:
            raise click.UsageError(f"{given[0][0]} and {given[1][0]} contradict each other.", ctx)
        if given:
            flag, value = given[0]
            if values.get(p.name) not in (None, value):
                raise click.UsageError(f"{flag} contradicts {option} {values[p.name]}.", ctx)
            values[p.name] = value
        if p.required and values.get(p.name) is None:
            flags = "/".join(flag for flag, _ in p.cli_flags)
            raise click.UsageError(f"Missing option '{option}' (or {flags}).", ctx)


def click_param(p: Param) -> click.Parameter:
    if p.positional:
        required = p.required and p.cli_default is None
        metavar = "FILE" if p.cli_file else p.metavar
        # Bytes, decoded as UTF-8 below: text mode would turn CRLF into LF, and the document is
        # stored exactly as given.
        kind: click.ParamType = click.File("rb") if p.cli_file else ValueType(p)
        return click.Argument([p.name], type=kind, required=required, metavar=metavar if required else f"[{metavar}]")
    flag = "--" + p.name.replace("_", "-")
    names = [flag, *p.cli_aliases] + ([p.short] if p.short else [])
    if p.kind == "flag":
        if p.default is None:  # tri-state: not given leaves the value alone (PUT-style changes)
            pairs = [f"--{n[2:]}/--no-{n[2:]}" for n in [flag, *p.cli_aliases] if n.startswith("--")]
            return click.Option(pairs + [p.name], default=None, help=p.help)
        return click.Option(names + [p.name], is_flag=True, default=bool(p.default), help=p.help)
    if p.required:  # Click 8.5 does not enforce `required` on an option given an explicit default
        return click.Option(names + [p.name], type=ValueType(p), required=True, help=p.help)
    return click.Option(names + [p.name], type=ValueType(p), default=p.default, help=p.help,
                        show_default=p.default is not None)


def read_text(handle: Any, hint: str) -> str:
    """The whole content of a file opened in binary mode, as UTF-8 text, line endings untouched."""
    try:
        return handle.read().decode("utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter("the file is not UTF-8 text.", param_hint=hint) from None


def _read_files(op: Operation, values: dict[str, Any]) -> None:
    """Replace the open files of ``cli_file`` values by their text, converted like any value."""
    for p in op.params:
        handle = values.get(p.name)
        if p.cli_file and handle is not None and hasattr(handle, "read"):
            values[p.name] = convert(p, read_text(handle, "FILE"))


def _command(op: Operation, verb: str, help_text: str, fixed: dict[str, Any], wait: Callable[..., str] | None,
             omit: tuple[str, ...] = (), destructive: bool | None = None,
             before: Callable[..., Any] | None = None) -> click.Command:
    destructive = op.destructive if destructive is None else destructive
    hidden = set(fixed) | set(omit)
    params = [c for p in op.params if p.name not in hidden for c in click_params(p)]
    arguments = [p for p in params if isinstance(p, click.Argument)]
    options = [p for p in params if not isinstance(p, click.Argument)]
    view = RENDERERS.get(op.render or "")
    if op.result in ("list", "object"):
        options.append(click.Option(["--format", "_format"], type=click.Choice(FORMATS), default="table",
                                    show_default=True, help="Output format."))
    if view is not None and view.long:
        options.append(click.Option(["-l", "--long", "_long"], is_flag=True, help="Show more details."))
    if view is not None and view.raw is not None:
        options.append(click.Option(["-r", "--raw", "_raw"], is_flag=True, help="Print names only, one per line."))
    if wait is not None:
        options.append(click.Option(["-w", "--wait", "_wait"], is_flag=True,
                                    help="Wait until the node reports the change as done."))
        options.append(click.Option(["--timeout", "_timeout"], type=click.FloatRange(min=0, min_open=True),
                                    metavar="SECONDS", help="Deadline of --wait (default: pvc.timeouts.wait)."))
    if destructive:
        options.append(click.Option(["-y", "--yes", "_yes"], is_flag=True, help="Do not ask for confirmation."))

    def callback(**kwargs: Any) -> None:
        ctx = click.get_current_context()
        fmt = kwargs.pop("_format", "table")
        long = kwargs.pop("_long", False)
        raw = kwargs.pop("_raw", False)
        waiting = kwargs.pop("_wait", False)
        timeout = kwargs.pop("_timeout", None)
        if timeout is not None and not waiting:
            raise click.UsageError("--timeout only applies together with --wait.", ctx)
        confirmed = kwargs.pop("_yes", False)
        values = {**kwargs, **fixed}
        _merge_flags(op, values, ctx)
        _read_files(op, values)
        if destructive and not confirmed:
            target = " ".join(str(values[p.name]) for p in op.params if p.positional and values.get(p.name) is not None)
            click.confirm(f"Really {verb} {target}? This cannot be undone." if target
                          else f"Really {verb}? This cannot be undone.", abort=True)
        for p in op.params:
            if values.get(p.name) is None and p.cli_default is not None:
                values[p.name] = p.cli_default()
        from pvc.cli.context import CliContext

        core = ctx.find_object(CliContext).core()
        try:
            baseline = before(core, **values) if waiting and before is not None else None
            result = op.func(core, **values)
            if waiting and wait is not None:
                click.echo(result)
                result = wait(core, **values, timeout=timeout, progress=click.echo, before=baseline)
        except PvcError as e:
            raise CommandFailed(e) from None
        except KeyboardInterrupt:  # Click would say "Aborted!" and exit 1; the table says 130
            click.echo("Interrupted.", err=True)
            ctx.exit(int(Exit.INTERRUPTED))
        if op.result == "document":  # exactly as stored: no newline added to one that ends in one
            click.echo(result, nl=not result.endswith("\n"))
        elif op.result == "message":
            click.echo(result)
        elif raw and view is not None and view.raw is not None:
            click.echo(view.raw(result))
        else:
            colour = use_colour()
            try:
                text = render(result, fmt, op.render, colour, long, core)
            except PvcError as e:
                raise CommandFailed(e) from None
            click.echo(text, color=colour)

    positional = [p for p in op.params if p.positional and p.name not in hidden]
    if positional:  # Click shows no help for arguments; list them under the text
        names = ["FILE" if p.cli_file else p.metavar for p in positional]
        width = max(10, max(len(n) for n in names) + 2)
        help_text += "\n\nArguments:\n\n\b\n" + "\n".join(
            f"  {name:<{width}}{p.help}" for name, p in zip(names, positional))
    return click.Command(verb, params=arguments + options, callback=callback, help=help_text,
                         short_help=help_text.split("\n", 1)[0])


def commands_for(op: Operation) -> list[tuple[str, click.Command, tuple[str, ...]]]:
    """The (name, command, aliases) entries an operation contributes to its group."""
    if not op.cli:
        return []
    if not op.variants:
        return [(op.verb, _command(op, op.verb, op.help, {}, None), ())]
    # A variant's own help only: the operation's text speaks of values the variant fixes or omits.
    return [(v.verb, _command(op, v.verb, v.help, dict(v.fixed), v.wait, v.omit, v.destructive, v.before), v.aliases)
            for v in op.variants]


def _alias(command: click.Command, verb: str, alias: str) -> click.Command:
    """A hidden command under another name, running the same callback."""
    return click.Command(alias, params=command.params, callback=command.callback, help=command.help,
                         short_help=f"Alias of '{verb}'.", hidden=True)


def group_for(root: click.Group, path: tuple[str, ...], groups: dict[str, tuple[str, tuple[str, ...]]]) -> click.Group:
    """The command group at ``path`` under ``root``, created (with its help and aliases) on the way."""
    group = root
    for i, name in enumerate(path):
        if name not in group.commands:
            help_text, aliases = groups.get(" ".join(path[: i + 1]), (f"Manage {name}s.", ()))
            new = click.Group(name, help=help_text)
            group.add_command(new)
            for alias in aliases:  # the same group object under another name, hidden from the listing
                hidden = click.Group(alias, commands=new.commands, help=help_text, short_help=f"Alias of '{name}'.",
                                     hidden=True)
                group.add_command(hidden, alias)
        group = group.commands[name]  # type: ignore[assignment]
    return group


def add_operations(root: click.Group, operations: dict[str, Operation],
                   groups: dict[str, tuple[str, tuple[str, ...]]]) -> None:
    """Attach every operation's commands under ``root``, creating the groups on the way."""
    for op in operations.values():
        group = group_for(root, op.group, groups)
        for verb, command, aliases in commands_for(op):
            group.add_command(command, verb)
            for alias in aliases:
                group.add_command(_alias(command, verb, alias), alias)


# --- the tree, whole or one top-level command at a time -------------------------------------------


def _operations(modules: tuple[str, ...], wanted: Callable[[Operation], bool]) -> dict[str, Operation]:
    """The declared operations ``wanted`` selects, after importing ``modules`` (the index's); all
    declarations when those give none (an index older than the declarations)."""
    for module in modules:
        importlib.import_module(module)
    found = {name: op for name, op in OPERATIONS.items() if wanted(op)}
    return found or {name: op for name, op in load_all().items() if wanted(op)}


def group_commands(name: str, modules: tuple[str, ...] = ()) -> MutableMapping[str, click.Command]:
    """The commands of the top-level group ``name``: its operations' and the hand-written ones."""
    root = click.Group("pvc")
    add_operations(root, _operations(modules, lambda op: op.group[:1] == (name,)), GROUPS)
    for path, spec in COMMANDS.items():
        if len(path) > 1 and path[0] == name:
            group_for(root, path[:-1], GROUPS).add_command(load_command(spec), path[-1])
    return group_for(root, (name,), GROUPS).commands


def top_command(name: str, modules: tuple[str, ...] = ()) -> click.Command | None:
    """The top-level command ``name`` of an operation declared in no group (`pvc init`), or None."""
    for op in _operations(modules, lambda op: op.group == ()).values():
        for verb, command, aliases in commands_for(op):
            if verb == name:
                return command
            if name in aliases:
                return _alias(command, verb, name)
    return None


def _names(op: Operation) -> set[str]:
    """The command names (and aliases) an operation contributes."""
    return {n for verb, _, aliases in commands_for(op) for n in (verb, *aliases)}


def top_kind(name: str) -> str | None:
    """"group" or "command" when the declarations (all of them) give a top-level ``name``, else None."""
    operations = load_all()
    if any(op.group[:1] == (name,) for op in operations.values()) or any(
            len(p) > 1 and p[0] == name for p in COMMANDS):
        return "group"
    if (name,) in COMMANDS or top_command(name) is not None:
        return "command"
    return None


def full_tree() -> click.Group:
    """Every command, built at once from all declarations and the hand-written commands: the tree
    the lazy one (pvc.cli.cli) must equal, and the source of :data:`pvc.cli.groups.INDEX`."""
    root = click.Group("pvc")
    add_operations(root, load_all(), GROUPS)
    for path, spec in COMMANDS.items():
        group_for(root, path[:-1], GROUPS).add_command(load_command(spec), path[-1])
    return root


def index() -> dict[str, tuple[str, tuple[str, ...], str | None, str | None, bool]]:
    """What :data:`pvc.cli.groups.INDEX` must hold, from the declarations."""
    root = full_tree()
    aliases = {alias: path for path, (_, names) in GROUPS.items() if " " not in path for alias in names}
    out: dict[str, tuple[str, tuple[str, ...], str | None, str | None, bool]] = {}
    for name in sorted(root.commands):
        command = root.commands[name]
        if isinstance(command, click.Group):
            target = aliases.get(name, name)
            modules = tuple(sorted({op.func.__module__ for op in OPERATIONS.values() if op.group[:1] == (target,)}))
            out[name] = ("group", modules, None, None, command.hidden)
        else:
            modules = tuple(sorted({op.func.__module__ for op in OPERATIONS.values()
                                    if op.group == () and name in _names(op)}))
            # The first paragraph of the help is all a listing reads (Click's short help is made of it).
            first = command.help.partition("\n\n")[0] if command.help else command.help
            out[name] = ("command", modules, first, command.short_help, command.hidden)
    return out


BEGIN, END = "# BEGIN GENERATED INDEX\n", "# END GENERATED INDEX\n"


def index_source() -> str:
    """The generated block of pvc/cli/groups.py."""
    lines = [f"    {name!r}: {entry!r}," for name, entry in index().items()]
    return (BEGIN + "INDEX: dict[str, tuple[str, tuple[str, ...], str | None, str | None, bool]] = {\n"
            + "\n".join(lines) + "\n}\n" + END)


def write_index(path: str | None = None) -> bool:
    """Rewrite the generated index in pvc/cli/groups.py (scripts/gen-completions); True if it changed."""
    target = Path(path or Path(__file__).with_name("groups.py"))
    text = target.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + index_source() + text[end:]
    if new != text:
        target.write_text(new, encoding="utf-8")
    return new != text
