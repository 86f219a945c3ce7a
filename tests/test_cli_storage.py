"""`pvc storage ceph ...` on both engines: the tables in the original's columns, JSON output, exit codes,
confirmation prompts; and one real `pvc` process. Records are written into the tree as the agents
write them (tests/test_ops_storage.py); the actions against a real Ceph are in tests/test_api_storage.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from tests.agent_fixtures import config_file
from tests.test_ops_storage import seed
from tests.vm_fixtures import snapshot


@pytest.fixture
def ceph(nodes: Cluster) -> Cluster:
    return seed(nodes)


def out(result: Any) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result.stdout


def test_osd_list_table(cli: Callable[..., Any], ceph: Cluster) -> None:
    lines = out(cli("storage", "ceph", "osd", "list")).splitlines()
    assert lines[0].split()[:8] == ["ID", "Node", "Up", "In", "Size", "PGs", "Wt", "ReWt"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2", "10"]
    assert lines[1].split()[:6] == ["0", "hv1", "Yes", "Yes", "932G", "64"]
    assert lines[2].split()[:4] == ["1", "hv1", "-", "-"]  # no figures yet: its node from the tree
    assert lines[3].split()[:4] == ["2", "hv2", "Yes", "No"]
    assert [o["id"] for o in json.loads(out(cli("storage", "ceph", "osd", "list", "1", "--format", "json")))] == [1, 10]
    assert out(cli("storage", "ceph", "osd", "state", "2")).splitlines()[1].split() == ["2", "No", "Yes"]


def test_pool_volume_snapshot_tables(cli: Callable[..., Any], ceph: Cluster) -> None:
    pools = out(cli("storage", "ceph", "pool", "list")).splitlines()
    assert [line.split()[1] for line in pools[1:]] == ["backup", "test1", "vms"]
    # Each row its own figures (the original's L24 printed the last pool's everywhere).
    assert pools[3].split()[:5] == ["1", "vms", "128", "14G", "3521"] and pools[1].split()[:4] == ["-", "backup", "64", "-"]
    volumes = out(cli("storage", "ceph", "volume", "list", "-p", "vms")).splitlines()
    assert volumes[0].split() == ["Name", "Pool", "Size", "Objects", "Order", "Format", "Features"]
    assert [line.split()[:3] for line in volumes[1:]] == [["test1_disk0", "vms", "20G"], ["web1_disk0", "vms", "10G"],
                                                          ["web1_disk1", "vms", "1024M"]]
    assert volumes[2].split()[-1] == "layering,exclusive-lock"
    snaps = out(cli("storage", "ceph", "volume", "snapshot", "list", "--volume", "web1_disk0")).splitlines()
    assert [line.split() for line in snaps] == [["Name", "Volume", "Pool"], ["snap1", "web1_disk0", "backup"],
                                                ["snap1", "web1_disk0", "vms"], ["snap2", "web1_disk0", "vms"]]
    assert json.loads(out(cli("storage", "ceph", "volume", "info", "backup", "web1_disk0", "--format", "json")))[0][
        "stats"]["size"] == "4096M"


def test_status_and_df(cli: Callable[..., Any], ceph: Cluster) -> None:
    result = cli("storage", "ceph", "status")
    assert result.exit_code == 4 and "has not published `ceph status`" in result.stderr
    ceph.store.write({schema.CEPH: "  health: HEALTH_OK\n", schema.CEPH_RADOSDF: "POOL_NAME USED\n",
                      schema.PRIMARY_NODE: "hv1"})
    assert out(cli("storage", "ceph", "status")) == "Ceph cluster status (primary node hv1)\n\n  health: HEALTH_OK\n"
    assert out(cli("storage", "ceph", "df")) == "Ceph cluster utilization (primary node hv1)\n\nPOOL_NAME USED\n"


@pytest.mark.parametrize("args, code, fragment", [
    (("storage", "ceph", "osd", "info", "5"), 3, "Error: OSD '5' not found."),
    (("storage", "ceph", "osd", "info", "x"), 2, "Error: Invalid OSD id 'x'"),
    (("storage", "ceph", "pool", "info", "nope"), 3, "Error: Pool 'nope' not found."),
    (("storage", "ceph", "volume", "add", "vms", "v", "10g"), 2, "units are upper case: 10G"),
    (("storage", "ceph", "volume", "add", "vms", "web1_disk0", "1G"), 4, "already exists in pool 'vms'"),
    (("storage", "ceph", "volume", "resize", "vms", "web1_disk0"), 2, "Give exactly one of 'name'"),
    (("storage", "ceph", "volume", "rename", "vms", "web1_disk0", "a@b"), 2, "must not contain '@'"),
    (("storage", "ceph", "pool", "add", "new", "8"), 4, "No node is the primary coordinator"),
    (("storage", "ceph", "cluster-option", "set", "sortbitwise"), 2, "is not one of full, pause"),
    (("storage", "ceph", "osd", "remove", "--yes", "5"), 3, "Error: OSD '5' not found."),
    (("storage", "ceph", "osd", "add", "--yes", "nope", "/dev/sdd"), 3, "Error: Node 'nope' not found."),
    (("storage", "ceph", "volume", "snapshot", "remove", "--yes", "vms", "web1_disk0", "x"), 3, "not found"),
])
def test_errors_and_exit_codes(cli: Callable[..., Any], ceph: Cluster, args: tuple[str, ...], code: int,
                               fragment: str) -> None:
    before = snapshot(ceph)
    result = cli(*args)
    assert result.exit_code == code, result.output
    assert fragment in result.stderr
    assert snapshot(ceph) == before


@pytest.mark.parametrize("args", [
    ("storage", "ceph", "osd", "remove", "0"),
    ("storage", "ceph", "osd", "add", "hv1", "/dev/sdd"),
    ("storage", "ceph", "pool", "remove", "vms"),
    ("storage", "ceph", "volume", "remove", "vms", "web1_disk0"),
    ("storage", "ceph", "volume", "snapshot", "remove", "vms", "web1_disk0", "snap1"),
])
def test_destructive_commands_ask(cli: Callable[..., Any], ceph: Cluster, args: tuple[str, ...]) -> None:
    before = snapshot(ceph)
    result = cli(*args, input="n\n")
    assert (result.exit_code, result.stderr) == (1, "Aborted!\n"), result.output
    verb = next(a for a in args if a in ("add", "remove"))
    target = " ".join(args[args.index(verb) + 1:])
    assert result.stdout == f"Really {verb} {target}? This cannot be undone. [y/N]: n\n"
    assert snapshot(ceph) == before


def test_osd_remove_acknowledges_by_its_prompt(cli: Callable[..., Any], ceph: Cluster) -> None:
    """The CLI's confirmation is the acknowledgement the API's `yes_i_really_mean_it` gives: confirmed,
    the request reaches the OSD's node (here: a node whose agent has stopped, so it fails there at once)."""
    ceph.store.write({schema.node_key("hv2", "daemonstate"): "stop"})
    result = cli("storage", "ceph", "osd", "remove", "2", input="y\n")
    assert result.exit_code == 4 and "yes_i_really_mean_it" not in result.stderr
    assert "hv2" in result.stderr


def test_osd_out_wait_reports_the_drain(cli: Callable[..., Any], ceph: Cluster) -> None:
    """`osd out --wait` follows the OSD's placement groups as its node publishes them."""
    from pvc.lib.ops.storage import wait_osd_drained

    lines: list[str] = []
    assert wait_osd_drained(ceph, "2", "out", timeout=5, progress=lines.append) == \
        "OSD 2 holds no placement groups; it can be removed."
    assert lines == ["OSD 2 holds 0 placement groups."]
    from pvc.lib.errors import Timeout

    with pytest.raises(Timeout, match="OSD '10' still holds 12 placement groups"):
        wait_osd_drained(ceph, "10", "out", timeout=0.2, progress=lines.append)
    assert "--wait" in out(cli("storage", "ceph", "osd", "out", "--help"))


def test_a_real_pvc_process(tmp_path: Path) -> None:
    """`pvc` as its own process, on the embedded store a configuration file names."""
    settings = Settings(store_path=str(tmp_path / "pvc.sqlite"))
    with Cluster(settings) as core:
        seed(core)
    config = config_file(tmp_path / "pvc.yaml", settings)
    pvc = str(Path(sys.executable).parent / "pvc")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PVC_CONFIG_FILE": str(config), "NO_COLOR": "1"}
    done = subprocess.run([pvc, "storage", "ceph", "volume", "list", "web1", "--format", "json"], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert [f"{v['pool']}/{v['name']}" for v in json.loads(done.stdout)] == [
        "backup/web1_disk0", "vms/web1_disk0", "vms/web1_disk1"]
    done = subprocess.run([pvc, "storage", "ceph", "pool", "remove", "vms"], env=env, capture_output=True, text=True,
                          timeout=60, input="n\n")
    assert done.returncode == 1 and "Aborted!" in done.stderr
