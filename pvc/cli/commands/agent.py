"""`pvc agent`: run this host's node agent until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading

import click

from pvc.cli.commands.serve import setup_logging
from pvc.cli.context import CliContext
from pvc.cli.errors import CommandFailed
from pvc.lib.errors import PvcError


def run_until_signal(stop: threading.Event) -> int:
    """Wait in the main thread until SIGTERM or SIGINT; return the signal."""
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, record) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return received[0] if received else 0


@click.command()
@click.pass_obj
def agent(obj: CliContext) -> None:
    """Run the node agent of this host until SIGTERM or SIGINT.

    The agent registers the node (pvc.node.name, default the short host name), publishes its
    keepalive and figures, and carries out what the cluster asks of the node: VM starts, stops
    and migrations through the hypervisor (pvc.node.libvirt_uri), flush and ready, the primary
    coordinator's role, and the fencing of dead nodes. Uses the same configuration as `pvc
    serve`; on the embedded store `pvc serve` already runs one (unless --no-agent).
    """
    settings = obj.settings()
    setup_logging(settings.debug)
    from pvc.agent.daemon import Agent
    from pvc.lib.core import Cluster

    core = Cluster(settings)
    try:
        node_agent = Agent(core, local=settings.engine == "embedded")
        node_agent.start()
    except PvcError as e:
        core.close()
        raise CommandFailed(e) from None
    click.echo(f"Store: {core.store.describe()}")
    click.echo(f"Node agent of {node_agent.name} running (hypervisor {node_agent.hv.uri})")
    click.get_text_stream("stdout").flush()
    try:
        run_until_signal(threading.Event())
    finally:
        node_agent.stop()
        core.close()
