"""The `zk` marker selects what it says: `-m zk` runs exactly the tests that use ZooKeeper and
`-m "not zk"` exactly the others (the embedded engine's tests, the CLI and config tests, ...).

The suite is collected (not run) by pytest in a subprocess, with a probe plugin that writes down
for every selected test what it uses, found independently of the marker logic in conftest.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent

PROBE = '''
import inspect, json, os, re

_sources = {}

def _source(func):
    if func not in _sources:
        try:
            _sources[func] = inspect.getsource(inspect.unwrap(func))
        except (OSError, TypeError):
            _sources[func] = ""
    return _sources[func]

def _marked_in_source(item):
    """@pytest.mark.zk on the test, its class, a module's pytestmark or a parameter: what its author wrote."""
    callspec = getattr(item, "callspec", None)
    marks = list(getattr(callspec, "marks", []))  # pytest.param(..., marks=pytest.mark.zk)
    for obj in (getattr(item, "function", None), getattr(item, "cls", None), getattr(item, "module", None)):
        found = getattr(obj, "pytestmark", [])
        marks += found if isinstance(found, list) else [found]
    return any(mark.name == "zk" for mark in marks)

def pytest_collection_finish(session):
    found = {}
    for item in session.items:
        funcs = [getattr(item, "function", None)] + [
            d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        callspec = getattr(item, "callspec", None)
        found[item.nodeid] = {
            "fixtures": sorted(item.fixturenames),
            # the parameters of fixtures parametrized by the fixture itself (not by the test), and engine
            "fixture_params": {k: repr(v) for k, v in (callspec.params.items() if callspec else ())
                               if k == "engine" or item._fixtureinfo.name2fixturedefs[k][-1].params is not None},
            "starts_server": any(f is not None and re.search(r"\\bZooKeeper(Server|Ensemble|Store)\\(", _source(f))
                                 for f in funcs),
            "marked_zk": _marked_in_source(item),
        }
    with open(os.environ["ZK_PROBE_OUT"], "w") as f:
        json.dump(found, f)
'''


def collect(tmp_path: Path, *selections: tuple[str, ...]) -> list[dict[str, dict[str, Any]]]:
    """``pytest --collect-only -q ARGS`` for each ARGS in ``selections``, in subprocesses run side
    by side: for each, what the probe saw of every selected test."""
    (tmp_path / "zk_probe.py").write_text(PROBE)
    runs = []
    for i, args in enumerate(selections):
        out = tmp_path / f"collected-{i}.json"
        env = {**os.environ, "ZK_PROBE_OUT": str(out),
               "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        process = subprocess.Popen([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                    "-p", "zk_probe", "--rootdir", str(ROOT), "-c", str(ROOT / "setup.cfg"), *args],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((process, out))
    outputs = []
    try:
        for process, _ in runs:
            outputs.append(process.communicate(timeout=240))
    finally:
        for process, _ in runs[len(outputs):]:  # not waited for: a timeout
            process.kill()
            process.communicate()
    results = []
    for (process, out), (stdout, stderr) in zip(runs, outputs):
        assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
        found = json.loads(out.read_text())
        assert set(found) == {line.strip() for line in stdout.splitlines() if "::" in line}  # what pytest lists
        results.append(found)
    return results


def ids(tests: Iterable[str]) -> Counter[str]:
    """Test ids with any UUID in them replaced (some parameters hold a fresh UUID per collection)."""
    return Counter(re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", test)
                   for test in tests)


def uses_zookeeper(facts: dict[str, Any]) -> bool:
    return (bool({"zk_server", "zk_admin"} & set(facts["fixtures"]))
            or repr("zookeeper") in facts["fixture_params"].values()
            or facts["starts_server"])


def test_zk_and_not_zk_partition_the_suite_by_use_of_zookeeper(tmp_path: Path) -> None:
    everything, zk, not_zk = collect(tmp_path, ("tests",), ("-m", "zk", "tests"), ("-m", "not zk", "tests"))

    assert not ids(zk) & ids(not_zk)
    assert ids(zk) + ids(not_zk) == ids(everything)
    assert [test for test, facts in not_zk.items() if uses_zookeeper(facts)] == []
    # and in -m zk, those, and the tests marked by hand (e.g. one that takes a server by name from
    # engine_settings, which refuses to run an unmarked test on ZooKeeper).
    assert [test for test, facts in zk.items() if not (uses_zookeeper(facts) or facts["marked_zk"])] == []
    # Both engines are in the suite: each selection is a real part of it, not all or nothing.
    assert any(facts["fixture_params"].get("engine") == repr("zookeeper") for facts in zk.values())
    assert any(facts["fixture_params"].get("engine") == repr("embedded") for facts in not_zk.values())
    assert any(facts["starts_server"] for facts in zk.values())


def test_tests_that_use_zookeeper_are_marked_without_being_told(tmp_path: Path) -> None:
    """A new test file needs no marker of its own: the session's ZooKeeper fixtures, the
    "zookeeper" engine, or a server of its own are enough for it to be selected by -m zk only."""
    tests = tmp_path / "unmarked"
    tests.mkdir()
    (tests / "test_new.py").write_text(textwrap.dedent('''
        import pytest
        from pvc.lib.store.zookeeper import ZooKeeperStore
        from tests.zkserver import ZooKeeperServer

        @pytest.fixture
        def own_server(tmp_path):
            with ZooKeeperServer(str(tmp_path)) as server:
                yield server

        @pytest.fixture
        def wrapped(own_server):
            return own_server

        @pytest.fixture(scope="module", params=["embedded", "zookeeper"])
        def served(request):
            if request.param == "zookeeper":
                return request.getfixturevalue("zk_server")

        def test_admin(zk_admin): pass
        def test_server(zk_server): pass
        def test_engine(engine): pass
        def test_settings(settings): pass
        def test_core(core): pass
        def test_own(wrapped): pass
        def test_in_body(tmp_path):
            with ZooKeeperServer(str(tmp_path)):
                pass
        def test_client_in_body():
            ZooKeeperStore(["127.0.0.1:2181"])
        def test_plain(tmp_path): pass
        def test_served(served): pass
        @pytest.mark.parametrize("engine", ["zookeeper"])
        def test_engine_chosen(engine): pass
        @pytest.mark.parametrize("engine_name", ["zookeeper"])
        def test_other_parameter(engine_name): pass
    '''))
    args = ("-p", "tests.conftest", str(tests))
    zk, not_zk = collect(tmp_path, ("-m", "zk", *args), ("-m", "not zk", *args))

    def names(found: dict[str, Any]) -> list[str]:
        return sorted(test.split("::")[-1] for test in found)

    assert names(zk) == ["test_admin", "test_client_in_body", "test_core[zookeeper]", "test_engine[zookeeper]",
                         "test_engine_chosen[zookeeper]",
                         "test_in_body", "test_own", "test_served[zookeeper]", "test_server",
                         "test_settings[zookeeper]"]
    assert names(not_zk) == ["test_core[embedded]", "test_engine[embedded]", "test_other_parameter[zookeeper]",
                             "test_plain", "test_served[embedded]", "test_settings[embedded]"]


def test_an_unmarked_test_that_asks_engine_settings_for_zookeeper_fails_and_says_why(tmp_path: Path) -> None:
    """What collection cannot see (a test taking ZooKeeper by name) is refused when it runs."""
    tests = tmp_path / "by-name"
    tests.mkdir()
    (tests / "test_by_name.py").write_text(textwrap.dedent('''
        from tests.conftest import engine_settings

        def test_by_name(tmp_path, request):
            engine_settings("zookeeper", tmp_path, request)
    '''))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(ROOT), "-c", str(ROOT / "setup.cfg"), "-m", "not zk", str(tests)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stdout
    assert "test_by_name uses ZooKeeper but is not marked zk: mark it @pytest.mark.zk" in done.stdout


def test_the_first_user_of_a_slow_session_fixture_has_its_start_on_top_of_the_timeout(tmp_path: Path) -> None:
    """pytest-timeout counts fixture setup in a test's time: the test that first asks for the
    hypervisor lab (which may install packages first) gets the lab's own start deadline on top of
    the per-test timeout; the next one has the per-test timeout only."""
    tests = tmp_path / "slow"
    tests.mkdir()
    (tests / "test_slow_start.py").write_text(textwrap.dedent('''
        import time
        import pytest

        START_TIMEOUT = 30.0  # the start deadline of this module's "lab"

        @pytest.fixture(scope="session")
        def hypervisor_lab():
            time.sleep(3)  # a first start longer than the 2 s timeout of this run
            yield "lab"

        def test_first(hypervisor_lab): pass
        def test_second(hypervisor_lab):
            time.sleep(3)
    '''))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(ROOT), "-c", str(ROOT / "setup.cfg"), "--timeout", "2", "-rA", str(tests)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert re.search(r"^PASSED .*test_first$", done.stdout, re.M), done.stdout
    assert re.search(r"^FAILED .*test_second - Failed: Timeout \(>2\.0s\)", done.stdout, re.M), done.stdout


def test_tests_that_use_the_lab_ceph_are_marked_ceph_without_being_told(tmp_path: Path) -> None:
    """The `ceph` marker, like `zk`: the session's ceph_lab fixture anywhere in a test's fixture
    closure is enough for -m ceph to select it and -m "not ceph" to leave it out."""
    tests = tmp_path / "ceph"
    tests.mkdir()
    (tests / "test_ceph_use.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.fixture
        def pool(ceph_lab):
            return ceph_lab

        def test_lab(ceph_lab): pass
        def test_through_a_fixture(pool): pass
        @pytest.mark.ceph
        def test_marked_by_hand(tmp_path): pass
        def test_plain(tmp_path): pass
        def test_engine(engine): pass
    '''))
    args = ("-p", "tests.conftest", str(tests))
    ceph, not_ceph = collect(tmp_path, ("-m", "ceph", *args), ("-m", "not ceph", *args))
    assert sorted(test.split("::")[-1] for test in ceph) == ["test_lab", "test_marked_by_hand",
                                                            "test_through_a_fixture"]
    assert sorted(test.split("::")[-1] for test in not_ceph) == ["test_engine[embedded]", "test_engine[zookeeper]",
                                                                "test_plain"]
