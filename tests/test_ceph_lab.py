"""The lab Ceph fixture itself (tests/ceph_fixtures.py, scripts/ceph-lab): healthy, usable through its
helpers, and gone without a trace when stopped, by the fixture or by its watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.ceph_fixtures import (CephCommandError, CephLab, _running, clean_env, require_ceph, start_lab,
                                 wait_until)


def test_the_lab_is_healthy_on_its_own_ports_with_its_own_conf(ceph_lab: CephLab) -> None:
    assert ceph_lab.health() == "HEALTH_OK"
    status = ceph_lab.ceph("status")
    assert status["osdmap"]["num_up_osds"] == status["osdmap"]["num_in_osds"] == ceph_lab.osds == 2
    assert status["mgrmap"]["available"] is True
    # not a developer's cluster: its conf under its own directory, a mon on a port of its own
    assert ceph_lab.env["CEPH_CONF"] == ceph_lab.conf == os.path.join(ceph_lab.dir, "ceph.conf")
    mons = ceph_lab.ceph("mon", "dump")["mons"]
    assert [a["addr"] for a in mons[0]["public_addrs"]["addrvec"]] == [
        f"127.0.0.1:{ceph_lab.mon_port}", f"127.0.0.1:{ceph_lab.mon_port + 3489}"]
    assert ceph_lab.mon_port != 3300
    assert ceph_lab.ceph("osd", "pool", "ls") == []  # no pool of the mgr's own (devicehealth is off)


def test_ceph_runs_with_the_venv_first_on_path_and_its_python_variables_set(ceph_lab: CephLab) -> None:
    """`ceph` is /usr/bin/python3 with Debian's modules: the fixture's env keeps the test runner's
    Python out of it (PYTHONHOME alone would break it)."""
    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    leaky = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PYTHONHOME": "/nonexistent",
             "PYTHONPATH": venv_bin, "VIRTUAL_ENV": os.path.dirname(venv_bin), "CEPH_CONF": ceph_lab.conf}
    broken = subprocess.run(["ceph", "health"], env=leaky, capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0  # what the clean env is for
    with pytest.MonkeyPatch.context() as mp:
        for key, value in leaky.items():
            mp.setenv(key, value)
        env = clean_env(ceph_lab.conf)
    assert not {k for k in env if k.startswith("PYTHON")} and "VIRTUAL_ENV" not in env
    assert env["PATH"].split(":")[:4] == ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    assert venv_bin not in env["PATH"].split(":")
    done = subprocess.run(["ceph", "health"], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "HEALTH_OK"), done.stderr


def test_a_pool_and_a_volume_through_the_helpers(ceph_lab: CephLab) -> None:
    pool = f"t-{uuid.uuid4().hex[:8]}"
    assert ceph_lab.ceph("osd", "pool", "create", pool, "8", "8", "replicated") is None  # confirms on stderr
    try:
        assert pool in ceph_lab.ceph("osd", "pool", "ls")
        assert ceph_lab.ceph("osd", "pool", "get", pool, "size")["size"] == 2
        ceph_lab.rbd("pool", "init", pool)
        ceph_lab.rbd("create", "--size", "64M", f"{pool}/v1")
        assert ceph_lab.rbd("info", "--format", "json", f"{pool}/v1")["size"] == 64 << 20
        assert ceph_lab.rbd("ls", "--format", "json", pool) == ["v1"]
        with pytest.raises(CephCommandError) as failed:  # Ceph's own words, not a bare exit code
            ceph_lab.ceph("osd", "pool", "create", pool, "8", "--pool-type", "erasure-nonsense")
        assert failed.value.returncode != 0 and failed.value.stderr.strip()
        with pytest.raises(CephCommandError, match="No such file or directory"):
            ceph_lab.rbd("info", f"{pool}/missing")
        ceph_lab.rbd("rm", f"{pool}/v1")
    finally:
        ceph_lab.ceph("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")
    assert pool not in ceph_lab.ceph("osd", "pool", "ls")
    assert ceph_lab.health() == "HEALTH_OK"


def test_osd_out_and_in_keeps_the_lab_serving(ceph_lab: CephLab) -> None:
    """The reason for 2 OSDs: one can go out and come back while a size-2 pool stays active."""
    pool = f"t-{uuid.uuid4().hex[:8]}"
    ceph_lab.ceph("osd", "pool", "create", pool, "8")
    try:
        ceph_lab.ceph("osd", "out", "1")
        assert [o["in"] for o in ceph_lab.ceph("osd", "dump")["osds"] if o["osd"] == 1] == [0]
        ceph_lab.rados("-p", pool, "put", "obj", "/etc/hostname", timeout=30)  # writes still go through
        ceph_lab.ceph("osd", "in", "1")
        ceph_lab.wait_healthy(30)
        assert ceph_lab.rados("-p", pool, "ls") == "obj"
    finally:
        ceph_lab.ceph("osd", "in", "1")
        ceph_lab.ceph("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")


def test_a_second_lab_with_an_agent_style_file_osd_stops_without_leaving_a_process(
        ceph_lab: CephLab, tmp_path_factory: pytest.TempPathFactory) -> None:
    block = str(tmp_path_factory.mktemp("ceph-block") / "osd.img")
    other = start_lab(osds=1, mgr=False)
    try:
        assert other.mon_port not in (ceph_lab.mon_port, ceph_lab.mon_port + 3489)
        assert other.ceph("fsid") != ceph_lab.ceph("fsid")
        osd = other.add_file_osd(block)  # started like an agent would: not in the lab's list of pids
        assert osd == 1 and os.path.getsize(block) == 10 << 30 and os.stat(block).st_blocks * 512 < 1 << 30
        assert os.readlink(os.path.join(other.dir, f"osd.{osd}", "block")) == block
        assert [(o["osd"], o["up"], o["in"]) for o in other.ceph("osd", "dump")["osds"]] == [(0, 1, 1), (1, 1, 1)]
        pids = other.pids()
        with open(os.path.join(other.dir, "pids")) as f:
            recorded = {int(line.split()[1]) for line in f}
        assert len(pids) == 4 and len(pids - recorded) == 2  # mon.a, osd.0; the file OSD and the watchdog
    finally:
        other.record("second lab stop", other.stop())
        if os.path.exists(block):
            os.remove(block)
    assert not os.path.exists(other.dir)
    assert [pid for pid in pids if _running(pid)] == []
    assert ceph_lab.health() == "HEALTH_OK"  # the session's lab is untouched


@pytest.mark.ceph  # a lab of its own, not the fixture's: collection cannot see that
def test_the_watchdog_stops_a_lab_whose_test_runner_was_killed() -> None:
    runner = subprocess.Popen(["sleep", "600"])  # stands in for a pytest that gets SIGKILLed
    try:
        lab = start_lab(osds=1, mgr=False, watch_pid=runner.pid)
    except BaseException:
        runner.kill()
        runner.wait()
        raise
    try:
        pids = lab.pids()
        assert len(pids) == 3  # mon.a, osd.0, watchdog
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        took = wait_until(lambda: not os.path.exists(lab.dir) and not any(_running(p) for p in pids), 15,
                          "the watchdog to stop the lab")
        lab.record("watchdog stop after its runner died", took)
    finally:
        if os.path.exists(lab.dir):
            lab.stop()


def test_without_ceph_the_fixture_fails_and_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="Ceph is not installed .*apt-get install -y "
                                                    "--no-install-recommends ceph-mon ceph-mgr ceph-osd ceph-common"):
        require_ceph(path=str(tmp_path))


def test_a_taken_mon_port_is_refused_before_anything_starts(ceph_lab: CephLab, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=f"127.0.0.1:{ceph_lab.mon_port} is taken"):
        start_lab(str(tmp_path / "lab"), mon_port=ceph_lab.mon_port)
    assert not os.path.exists(tmp_path / "lab" / "ceph.conf")
