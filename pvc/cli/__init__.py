"""The `pvc` command: its tree follows the API's endpoint tree.

The tree is lazy (:mod:`pvc.cli.groups`): the root lists its commands from a generated index, and
a group's commands are built from the operation registry only when that group is used. So
`pvc --help` and shell completion import Click and little else, and `pvc vm ...` builds the vm
commands only. kazoo, lxml, bottle and cheroot load only when a command needs the store or the
server.
"""

from __future__ import annotations

import click

from pvc import __version__
from pvc.cli.groups import LazyRoot


@click.group(cls=LazyRoot, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
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
    from pvc.cli.context import CliContext
    from pvc.lib.core import Cluster

    if isinstance(ctx.obj, Cluster):  # tests pass a ready cluster handle
        ctx.obj = CliContext(core=ctx.obj)
    elif ctx.obj is None:
        ctx.obj = CliContext(config)


def main() -> None:
    cli(prog_name="pvc")
