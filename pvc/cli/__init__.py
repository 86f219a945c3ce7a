"""The `pvc` command: its tree follows the API's endpoint tree.

Importing this module builds the whole command tree from the operation registry. It imports
neither kazoo, lxml, bottle nor cheroot: those load only when a command needs the store or the
server, so `pvc --help` and shell completion stay fast.
"""

from __future__ import annotations

import click

from pvc import __version__
from pvc.cli import views  # noqa: F401  (registers the table views)
from pvc.cli.build import add_operations, group_for
from pvc.cli.commands.agent import agent
from pvc.cli.commands.lease_hook import lease_hook
from pvc.cli.commands.serve import serve
from pvc.cli.commands.vm_modify import modify as vm_modify
from pvc.cli.context import CliContext
from pvc.cli.groups import GROUPS
from pvc.lib.core import Cluster
from pvc.lib.registry import load_all


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(__version__, "--version", prog_name="pvc")
@click.option("--config", "config", metavar="FILE", type=click.Path(dir_okay=False),
              help="Configuration file (default: $PVC_CONFIG_FILE, else /etc/pvc/pvc-api.yaml if present, "
                   "else the embedded store in your data directory).")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Manage a PVC (Parallel Virtual Cluster) hypervisor cluster.

    Commands work on the cluster's store directly: ZooKeeper when the configuration names
    coordinators, else the embedded store of this host. `pvc serve` offers the same operations
    over HTTP.
    """
    if isinstance(ctx.obj, Cluster):  # tests pass a ready cluster handle
        ctx.obj = CliContext(core=ctx.obj)
    elif ctx.obj is None:
        ctx.obj = CliContext(config)


add_operations(cli, load_all(), GROUPS)
cli.add_command(serve)
cli.add_command(agent)
group_for(cli, ("network", "lease"), GROUPS).add_command(lease_hook)
group_for(cli, ("vm",), GROUPS).add_command(vm_modify)


def main() -> None:
    cli(prog_name="pvc")
