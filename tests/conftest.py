"""Shared fixtures. Every operation test runs on both store engines: the embedded SQLite file and
a real ZooKeeper server (started once per session, one chroot per test)."""

from __future__ import annotations

import uuid
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.store import Create
from pvc.lib.store.zookeeper import ZooKeeperStore
from tests.wsgi import Client
from tests.zkserver import ZooKeeperServer

ENGINES = ("embedded", "zookeeper")


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """The session's ZooKeeper. Missing ZooKeeper is an error, never a skip."""
    with ZooKeeperServer(str(tmp_path_factory.mktemp("zookeeper"))) as server:
        yield server


@pytest.fixture(scope="session")
def zk_admin(zk_server: ZooKeeperServer) -> Iterator[ZooKeeperStore]:
    store = ZooKeeperStore([zk_server.hosts])
    yield store
    store.close()


def engine_settings(engine: str, tmp_path: Any, request: pytest.FixtureRequest) -> Settings:
    if engine == "embedded":
        return Settings(store_path=str(tmp_path / "pvc.sqlite"), wait_timeout=10.0)
    server = request.getfixturevalue("zk_server")
    admin = request.getfixturevalue("zk_admin")
    chroot = f"/test-{uuid.uuid4().hex[:12]}"
    admin.commit([Create(chroot)])
    return Settings(coordinators=(server.hosts,), zk_chroot=chroot, wait_timeout=10.0)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "zookeeper":
        request.applymarker(pytest.mark.zk)
    return request.param


@pytest.fixture
def settings(engine: str, tmp_path: Any, request: pytest.FixtureRequest) -> Settings:
    return engine_settings(engine, tmp_path, request)


@pytest.fixture
def core(settings: Settings) -> Iterator[Cluster]:
    """An initialised, empty cluster on the engine under test."""
    cluster = Cluster(settings)
    if settings.engine == "zookeeper":
        init_cluster(cluster)
    yield cluster
    cluster.close()


@pytest.fixture
def add_node(core: Cluster) -> Callable[..., str]:
    """Register a node as its agent would, with known figures and states."""

    def add(name: str, coordinator: bool = False, daemon_state: str = "run", domain_state: str = "ready",
            **figures: Any) -> str:
        register_node(core, name, NodeFacts(8, "6.1.0-amd64", "GNU/Linux", "x86_64"), coordinator=coordinator)
        publish_figures(core, name, NodeFigures(**{"memtotal": 32000, "memused": 8000, "memfree": 24000, **figures}),
                        daemon_state=daemon_state)
        report_domain_state(core, name, domain_state)
        return name

    return add


@pytest.fixture
def nodes(core: Cluster, add_node: Callable[..., str]) -> Cluster:
    """hv1, hv2, hv3 take VMs (hv1 has the least memory allocated, then hv2); hv8 is flushed,
    hv9's daemon is dead."""
    add_node("hv1", memalloc=1000)
    add_node("hv2", memalloc=2000)
    add_node("hv3", memalloc=3000)
    add_node("hv8", domain_state="flushed")
    add_node("hv9", daemon_state="dead")
    return core


@pytest.fixture
def client(core: Cluster) -> Client:
    from pvc.server.app import create_app

    return Client(create_app(core))


@pytest.fixture
def cli(core: Cluster) -> Callable[..., Any]:
    """Run `pvc ...` through Click's runner on the test's cluster."""
    from pvc.cli import cli as root

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(root, list(args), obj=core, input=input, catch_exceptions=False)

    return invoke
