"""Shared fixtures. Every operation test runs on both store engines: the embedded SQLite file and
a real ZooKeeper server (started once per session, one chroot per test)."""

from __future__ import annotations

import inspect
import os
import re
import sys
import tempfile
import uuid
from typing import Any, Callable, Iterable, Iterator

import pytest
from click.testing import CliRunner

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.store import Create
from pvc.lib.store.zookeeper import ZooKeeperStore
from tests.ceph_fixtures import ceph_lab, uses_ceph  # noqa: F401  (the session's lab Ceph; marks `ceph`)
from tests.wsgi import Client
from tests.zkserver import ZooKeeperServer

# The CLI keeps parsed VM XML in the user's cache directory between runs: the suite's commands
# (in-process and subprocesses) keep theirs in a directory of the run's own instead.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="pvc-test-cache-")

ENGINES = ("embedded", "zookeeper")

#: The session's ZooKeeper fixtures: a test whose fixture closure holds one uses ZooKeeper.
ZK_FIXTURES = frozenset({"zk_server", "zk_admin"})
#: A fixture or test that starts ZooKeeper of its own (e.g. to stop it) constructs a ZooKeeperServer
#: or ZooKeeperEnsemble (tests/zkserver.py); one that reaches a server constructs a ZooKeeperStore.
_STARTS_ZOOKEEPER = re.compile(r"\bZooKeeper[A-Za-z]*\(")
_source_cache: dict[Any, bool] = {}


def _starts_zookeeper(func: Any) -> bool:
    func = inspect.unwrap(func)
    if func not in _source_cache:
        try:
            _source_cache[func] = bool(_STARTS_ZOOKEEPER.search(inspect.getsource(func)))
        except (OSError, TypeError):  # no source (a builtin, a fixture from a compiled plugin)
            _source_cache[func] = False
    return _source_cache[func]


def uses_zookeeper(item: pytest.Item) -> bool:
    """Whether ``item`` needs a ZooKeeper server, by what collection shows of it: the session's
    ZooKeeper fixtures anywhere in its fixture closure; a fixture parametrized over the engines
    (``engine``, or one of a test file's own) at "zookeeper" (such fixtures ask for the server
    only when they run); or a fixture in its closure, or the test itself, that constructs a
    ZooKeeper server, ensemble or store of its own. (A test's own ``parametrize`` value
    "zookeeper" is just a string.)"""
    if ZK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    definitions = fixtureinfo.name2fixturedefs if fixtureinfo is not None else {}
    callspec = getattr(item, "callspec", None)
    for name, value in (callspec.params.items() if callspec is not None else ()):
        defs = definitions.get(name, ())
        if value == "zookeeper" and (name == "engine" or (defs and defs[-1].params is not None)):
            return True
    funcs: list[Any] = [getattr(item, "function", None)]
    funcs += [fixturedef.func for defs in definitions.values() for fixturedef in defs]
    return any(func is not None and _starts_zookeeper(func) for func in funcs)


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by -m
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses ZooKeeper ``zk`` at collection, so that ``-m zk`` and
    ``-m "not zk"`` select by it (a marker applied by a fixture comes too late for -m)."""
    for item in items:
        if uses_zookeeper(item) and item.get_closest_marker("zk") is None:
            item.add_marker(pytest.mark.zk)
        if uses_ceph(item) and item.get_closest_marker("ceph") is None:
            item.add_marker(pytest.mark.ceph)


#: Session fixtures whose first start may take longer than a test's timeout (pytest-timeout counts
#: fixture setup in the test's time), each with the name of its module's own start deadline: the
#: hypervisor lab may install libvirt and QEMU first (tests/qemu_lab.py START_TIMEOUT).
SLOW_SESSION_FIXTURES = {"hypervisor_lab": "START_TIMEOUT", "ceph_lab": "START_TIMEOUT"}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Give the first test to run that uses a slow session fixture (it starts it) that start's
    deadline on top of its timeout; the others keep the per-test timeout of setup.cfg."""
    extend_first_timeouts(session.config, session.items)


def _timeout_of(config: pytest.Config, item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and (marker.args or "timeout" in marker.kwargs):
        return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    for value in (config.getoption("timeout", None), os.environ.get("PYTEST_TIMEOUT"), config.getini("timeout")):
        if value is not None and value != "":  # the order pytest-timeout reads them in
            return float(value)
    return 0.0


def extend_first_timeouts(config: pytest.Config, items: Iterable[pytest.Item]) -> None:
    pending = dict(SLOW_SESSION_FIXTURES)
    for item in items:
        if not pending:
            return
        fixtureinfo = getattr(item, "_fixtureinfo", None)
        for name in [name for name in pending if name in getattr(item, "fixturenames", ())]:
            attribute = pending.pop(name)
            timeout = _timeout_of(config, item)
            defs = fixtureinfo.name2fixturedefs.get(name, ()) if fixtureinfo is not None else ()
            module = sys.modules.get(defs[-1].func.__module__) if defs else None
            start = getattr(module, attribute, None)
            if timeout > 0 and isinstance(start, (int, float)):
                item.add_marker(pytest.mark.timeout(timeout + start))


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
    if isinstance(request.node, pytest.Item) and request.node.get_closest_marker("zk") is None:
        # -m "not zk" would select it (collection sees no ZooKeeper in it): say so, loudly
        pytest.fail(f"{request.node.nodeid} uses ZooKeeper but is not marked zk: mark it @pytest.mark.zk, or take "
                    f"the `engine` fixture or zk_server/zk_admin as a parameter (tests/conftest.py marks those).")
    server = request.getfixturevalue("zk_server")
    admin = request.getfixturevalue("zk_admin")
    chroot = f"/test-{uuid.uuid4().hex[:12]}"
    admin.commit([Create(chroot)])
    return Settings(coordinators=(server.hosts,), zk_chroot=chroot, wait_timeout=10.0)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The store engine under test; the "zookeeper" tests are marked zk at collection."""
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
def client(core: Cluster) -> Iterator[Client]:
    """The API on the test's cluster, reading through the read view `pvc serve` uses. It wraps
    ``core``'s store, so what a test writes through ``core`` is seen on the next request."""
    from pvc.lib.store.view import ViewStore
    from pvc.server.app import create_app

    view = ViewStore(core.store, owns=False)
    assert view.wait_ready(30), "the read view was not built"
    yield Client(create_app(Cluster(core.settings, view)))
    view.close()


@pytest.fixture
def cli(core: Cluster) -> Callable[..., Any]:
    """Run `pvc ...` through Click's runner on the test's cluster."""
    from pvc.cli import cli as root

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(root, list(args), obj=core, input=input, catch_exceptions=False)

    return invoke
