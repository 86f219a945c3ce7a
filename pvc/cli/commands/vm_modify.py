"""`pvc vm modify`: the VM modify operation, by hand because it can open an editor.

With FILE (or - for stdin) the new XML is read from there; with --editor the current XML is
opened in $EDITOR (default vi), the change is shown as a unified diff and written only after a
yes. The editor runs without a shell, so its name cannot smuggle in commands.
"""

from __future__ import annotations

import os
from typing import IO

import click

from pvc.cli.build import click_param, read_text
from pvc.cli.context import CliContext
from pvc.cli.errors import CommandFailed
from pvc.cli.render import Paint, use_colour
from pvc.lib.errors import PvcError
from pvc.lib.ops.vm import dump_vm, modify_vm


def edit_text(text: str, editor: str) -> str:
    """Open ``text`` in ``editor`` and return what was saved."""
    import shlex  # here, not at the top: `pvc --help` should not pay for what only --editor uses
    import subprocess
    import tempfile

    argv = shlex.split(editor)
    if not argv:
        raise click.UsageError("$EDITOR is empty.")
    fd, path = tempfile.mkstemp(prefix="pvc-vm-", suffix=".xml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            finished = subprocess.run(argv + [path], check=False)
        except OSError as e:
            raise click.ClickException(f"Cannot run the editor {argv[0]!r}: {e.strerror or e}.") from None
        if finished.returncode != 0:
            raise click.ClickException(f"The editor exited with status {finished.returncode}; nothing was changed.")
        with open(path, encoding="utf-8") as f:
            return f.read()
    finally:
        os.unlink(path)


def diff(old: str, new: str, paint: Paint) -> str:
    import difflib

    lines = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), "current", "new", lineterm=""):
        if line.startswith(("+++", "---")):
            lines.append(paint(line, "bold"))
        elif line.startswith("+"):
            lines.append(paint(line, "green"))
        elif line.startswith("-"):
            lines.append(paint(line, "red"))
        elif line.startswith("@@"):
            lines.append(paint(line, "blue"))
        else:
            lines.append(line)
    return "\n".join(lines)


@click.pass_context
def _modify(ctx: click.Context, vm: str, file: IO[bytes] | None, use_editor: bool, restart: bool) -> None:
    if file is not None and use_editor:
        raise click.UsageError("Give either FILE or --editor, not both.", ctx)
    if file is None and not use_editor:
        raise click.UsageError("Give FILE (or - for stdin) or --editor.", ctx)
    core = ctx.find_object(CliContext).core()
    try:
        if use_editor:
            current = dump_vm(core, vm)
            new = edit_text(current, os.environ.get("EDITOR") or "vi")
            if new == current:
                click.echo("Aborting with no modifications.")
                return
            colour = use_colour()
            click.echo(diff(current, new, Paint(colour)), color=colour)
            click.confirm("Write the modifications to the cluster?", abort=True)
        else:
            new = read_text(file, "FILE")
        click.echo(modify_vm(core, vm, new, restart=restart))
    except PvcError as e:
        raise CommandFailed(e) from None


def _command() -> click.Command:
    """The command, with the VM argument, --restart and the help text of the operation's declaration
    (so they say the same as `PUT /api/v1/vm/<vm>`), plus FILE and --editor."""
    op = modify_vm.operation  # type: ignore[attr-defined]
    vm, restart = click_param(op.param("vm")), click_param(op.param("restart"))
    file = click.Argument(["file"], metavar="[FILE]", type=click.File("rb"), required=False)
    editor = click.Option(["-e", "--editor", "use_editor"], is_flag=True,
                          help="Edit the current XML in $EDITOR (default vi), see the change, then confirm.")
    text = (op.help + "\n\nArguments:\n\n\b\n  VM        " + op.param("vm").help
            + "\n  FILE      File with the new XML, or - for stdin (or use --editor).")
    return click.Command("modify", params=[vm, file, editor, restart], callback=_modify, help=text,
                         short_help=op.summary)


modify = _command()
