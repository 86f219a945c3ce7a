"""`pvc serve`: run the HTTP API on cheroot until SIGTERM or SIGINT."""

from __future__ import annotations

import logging

import click

from pvc.cli.context import CliContext
from pvc.cli.errors import CommandFailed
from pvc.lib.config_values import check_host, split_host_port
from pvc.lib.errors import PvcError


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [addr]:PORT); port 0 picks a free port."""
    try:
        host, port = split_host_port(text)
        if port is None or not port.isdigit() or int(port) > 65535:
            raise ValueError(text)
        check_host(host)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not HOST:PORT (port 0 to 65535)", param_hint="'--listen'") from None
    return host, int(port)


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kazoo repeats every reconnection attempt at WARNING; our store logs the state changes.
    logging.getLogger("kazoo").setLevel(logging.DEBUG if debug else logging.ERROR)


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="Listen here instead of pvc.api.listen_address:listen_port.")
@click.option("--routes", is_flag=True, help="List the API's routes and exit.")
@click.option("--no-agent", is_flag=True, help="On the embedded store, do not run this host's node agent.")
@click.pass_obj
def serve(obj: CliContext, listen: str | None, routes: bool, no_agent: bool) -> None:
    """Serve the PVC HTTP API (see the manual) until SIGTERM or SIGINT.

    Uses the same configuration as every other command: ZooKeeper when coordinators are
    configured, else the embedded store, whose file is printed at start-up. On the embedded
    store it also runs this host's node agent (as `pvc agent` would), so one host is a working
    one-node cluster; under ZooKeeper each node runs `pvc agent` itself.
    """
    if routes:
        from pvc.lib.registry import load_all
        from pvc.server.routes import route_table

        from pvc.server.app import PLANNED
        from pvc.server.routes import PREFIX

        for method, path, name in route_table(load_all()):
            click.echo(f"{method:<7}{path:<48}{name}")
        for (method, path) in PLANNED:  # the manual's planned routes, which answer 501
            click.echo(f"{method:<7}{PREFIX + path:<48}(501: not implemented)")
        return
    settings = obj.settings()
    if listen:
        host, port = parse_listen(listen)
        settings = settings.replace(listen_address=host, listen_port=port)
    setup_logging(settings.debug)

    from pvc.lib.core import Cluster
    from pvc.server.run import StartupError, build_server, serve_forever, url_of

    core = Cluster(settings)
    node_agent = None
    try:
        store = core.store
        server = build_server(core)
        if settings.engine == "embedded" and not no_agent:
            from pvc.agent.daemon import Agent

            node_agent = Agent(core, local=True)
            node_agent.start()
    except PvcError as e:
        core.close()
        raise CommandFailed(e) from None
    except StartupError as e:
        core.close()
        raise click.ClickException(str(e)) from None

    def announce() -> None:
        click.echo(f"Store: {store.describe()}")
        if node_agent is not None:
            click.echo(f"Node agent: {node_agent.name} (hypervisor {node_agent.hv.uri})")
        click.echo(f"Listening on {url_of(server, settings)}", nl=True)
        click.get_text_stream("stdout").flush()

    def stop() -> None:
        if node_agent is not None:
            node_agent.stop()
        core.close()

    serve_forever(server, stop, on_ready=announce)
