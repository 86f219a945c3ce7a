"""`pvc serve`: run the HTTP API on cheroot until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from pvc.cli.context import CliContext
from pvc.cli.errors import CommandFailed
from pvc.lib.config_values import check_host, split_host_port
from pvc.lib.errors import PvcError

if TYPE_CHECKING:
    from pvc.lib.core import Cluster


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


#: Seconds `pvc serve` waits at start for its read view to be built (about a second per 10,000
#: VMs) before it listens; the API answers from the store itself until then.
VIEW_START = 30.0


#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: Allocations from this size up get pages of their own, returned to the system when freed.
MMAP_THRESHOLD = 256 * 1024


def tune_malloc() -> bool:
    """Keep `pvc serve`'s memory close to what its Python objects take (glibc only; elsewhere
    nothing happens). Call before any thread starts. Returns whether glibc took the settings.

    Why: glibc gives each thread that allocates its own malloc arena (up to 8 per core), and
    cheroot answers on 32 worker threads; memory freed in one arena serves only that arena, so
    a large answer built once per thread leaves that much RSS behind in each. Two arenas are
    plenty for a server whose Python code holds the GIL. And glibc raises its mmap threshold to
    the size of every large block freed (up to 32 MB): a 30 MB VM list would then come from the
    heap and stay there; a fixed threshold keeps large answers in pages of their own, returned
    when freed. (Measured at 10,000 VMs: benchmarks/bench_view.py.)"""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all([mallopt(M_ARENA_MAX, 2) == 1, mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1])


def close(*clusters: "Cluster | None") -> None:
    for cluster in clusters:
        if cluster is not None:
            cluster.close()


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

        table = route_table(load_all())
        planned = [(method, PREFIX + path) for method, path in PLANNED]  # the manual's, which answer 501
        width = max(len(path) for _method, path, *_ in table + planned) + 1  # a long path never runs into its name
        for method, path, name in table:
            click.echo(f"{method:<7}{path:<{width}}{name}")
        for method, path in planned:
            click.echo(f"{method:<7}{path:<{width}}(501: not implemented)")
        return
    settings = obj.settings()
    if listen:
        host, port = parse_listen(listen)
        settings = settings.replace(listen_address=host, listen_port=port)
    setup_logging(settings.debug)
    tune_malloc()  # before the store's, the view's and the server's threads start

    from pvc.lib.core import Cluster
    from pvc.lib.store.view import ViewStore
    from pvc.server.run import StartupError, build_server, serve_forever, url_of

    core = Cluster(settings)
    served: Cluster | None = None
    node_agent = None
    try:
        store = core.store
        # The API reads through an in-memory view of the tree kept current by the store's
        # notifications (pvc.lib.store.view); the node agent uses the store itself.
        view = ViewStore(store, owns=False)
        view.wait_ready(VIEW_START)
        served = Cluster(settings, view)
        server = build_server(served)
        if settings.engine == "embedded" and not no_agent:
            from pvc.agent.daemon import Agent

            node_agent = Agent(core, local=True)
            node_agent.start()
    except PvcError as e:
        close(served, core)
        raise CommandFailed(e) from None
    except StartupError as e:
        close(served, core)
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
        close(served, core)

    serve_forever(server, stop, on_ready=announce)
