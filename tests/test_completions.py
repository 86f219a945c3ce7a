"""Shell completion: the committed scripts are Click's own output, completion runs as the shell runs
it (a subprocess with _PVC_COMPLETE), node names come from the real store, and completing command
names imports none of the heavy libraries (DESIGN.md, "Performance design")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.node_reports import NodeFacts, register_node
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.store import Create
from tests.zkserver import ZooKeeperServer

ROOT = Path(__file__).resolve().parent.parent
SHELLS = ("bash", "zsh", "fish")
HEAVY = ("kazoo", "bottle", "cheroot", "lxml", "regex", "libvirt", "tabulate")
PVC = shutil.which("pvc")
FACTS = NodeFacts(4, "6.1.0-amd64", "GNU/Linux", "x86_64")


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """The process environment without pvc's variables, with a home and data directory of our own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PVC_", "_PVC_", "COMP_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"))
    return env


def generate(shell: str, env: dict[str, str]) -> bytes:
    out = subprocess.run([sys.executable, "-m", "pvc"], env={**env, "_PVC_COMPLETE": f"{shell}_source"},
                         capture_output=True, check=True, timeout=60)
    return out.stdout


def complete(words: str, env: dict[str, str], shell: str = "bash", stderr_empty: bool = True) -> list[str]:
    """What the shell receives for the command line ``words`` (the last word being completed);
    blank lines (Click's reply when nothing matches) are dropped."""
    parts = words.split(" ")
    assert PVC is not None, "the `pvc` console script is not installed (pip install -e .)"
    result = subprocess.run(
        [PVC],
        env={**env, "_PVC_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if stderr_empty:  # anything on stderr lands in the middle of the user's command line
        assert result.stderr == ""
    return [line for line in result.stdout.splitlines() if line]


def values(lines: list[str]) -> list[str]:
    """The offered values of a bash reply (`plain,value` lines)."""
    assert all(line.startswith("plain,") for line in lines), lines
    return [line.split(",", 1)[1] for line in lines]


# --- the generated scripts ----------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_script_is_current(shell: str, base_env: dict[str, str]) -> None:
    committed = (ROOT / "completions" / f"pvc.{shell}").read_bytes()
    assert committed == generate(shell, base_env), (
        f"completions/pvc.{shell} is stale: run scripts/gen-completions and commit the result"
    )
    assert b"_PVC_COMPLETE" in committed


def test_console_script_generates_the_same(base_env: dict[str, str]) -> None:
    assert PVC is not None
    out = subprocess.run([PVC], env={**base_env, "_PVC_COMPLETE": "bash_source"}, capture_output=True, check=True,
                         timeout=60)
    assert out.stdout == (ROOT / "completions" / "pvc.bash").read_bytes()


def test_gen_completions_script_writes_the_committed_files(tmp_path: Path, base_env: dict[str, str]) -> None:
    """The script, run in a copy of the tree, writes exactly what is committed."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "gen-completions"
    shutil.copy2(ROOT / "scripts" / "gen-completions", script)
    subprocess.run([str(script)], env={**base_env, "PYTHON": sys.executable}, cwd="/", check=True,
                   capture_output=True, timeout=120)
    for shell in SHELLS:
        written = (tmp_path / "completions" / f"pvc.{shell}").read_bytes()
        assert written == (ROOT / "completions" / f"pvc.{shell}").read_bytes(), shell


# --- completing command names and choices --------------------------------------------------------


def test_top_level_commands(base_env: dict[str, str]) -> None:
    assert values(complete("pvc no", base_env)) == ["node"]
    assert {"init", "node", "serve"} <= set(values(complete("pvc ", base_env)))


def test_node_verbs(base_env: dict[str, str]) -> None:
    assert values(complete("pvc node f", base_env)) == ["flush"]
    offered = values(complete("pvc node ", base_env))
    assert {"list", "info", "flush", "ready", "primary", "secondary", "domain-state"} <= set(offered)
    assert "unflush" not in offered  # a hidden alias is not offered


def test_choices(base_env: dict[str, str]) -> None:
    assert values(complete("pvc node list --format j", base_env)) == ["json", "json-pretty"]


def test_zsh_gets_descriptions(base_env: dict[str, str]) -> None:
    lines = complete("pvc no", base_env, shell="zsh")
    assert lines[:2] == ["plain", "node"]
    assert lines[2].startswith("Manage the nodes of the cluster")


# --- completing node names from the store --------------------------------------------------------


def add_nodes(settings: Settings, *names: str) -> None:
    with Cluster(settings) as core:
        for name in names:
            register_node(core, name, FACTS)


def config_file(tmp_path: Path, **store: Any) -> Path:
    pvc: dict[str, Any] = {
        "debug": False,
        "coordinators": store.pop("coordinators", []),
        "api": {"listen_address": "127.0.0.1", "authentication": {"enabled": False}, "ssl": {"enabled": False}},
        "store": store,
    }
    path = tmp_path / "pvc-api.yaml"
    path.write_text(yaml.safe_dump({"pvc": pvc}), encoding="utf-8")
    return path


def test_node_names_from_the_config_file_store(tmp_path: Path, base_env: dict[str, str]) -> None:
    store = tmp_path / "cluster.sqlite"
    add_nodes(Settings(store_path=str(store)), "hv1", "hv2", "other")
    config = config_file(tmp_path, path=str(store))
    assert values(complete(f"pvc --config {config} node info h", base_env)) == ["hv1", "hv2"]
    assert values(complete(f"pvc --config {config} node flush ", base_env)) == ["hv1", "hv2", "other"]
    assert values(complete(f"pvc --config {config} node daemon-state o", base_env)) == ["other"]
    assert values(complete(f"pvc --config {config} node info x", base_env)) == []


def test_vm_and_network_names_from_the_store(tmp_path: Path, base_env: dict[str, str]) -> None:
    """VM names, and network VNIs and descriptions, complete from the store as the shell runs it."""
    from pvc.lib.node_reports import NodeFigures, publish_figures, report_domain_state
    from pvc.lib.ops.network import add_network
    from pvc.lib.ops.vm import define_vm

    store = tmp_path / "cluster.sqlite"
    with Cluster(Settings(store_path=str(store))) as core:
        register_node(core, "hv1", FACTS)
        publish_figures(core, "hv1", NodeFigures(memtotal=1000), daemon_state="run")
        report_domain_state(core, "hv1", "ready")
        for i, name in enumerate(("web1", "web2", "db1")):
            define_vm(core, f"<domain><name>{name}</name><uuid>00000000-0000-0000-0000-00000000000{i}</uuid></domain>")
        add_network(core, 100, "office", "bridged")
        add_network(core, 1000, "lab", "managed", ip4_network="10.0.0.0/24", ip4_gateway="10.0.0.1")
    config = config_file(tmp_path, path=str(store))
    assert values(complete(f"pvc --config {config} vm start w", base_env)) == ["web1", "web2"]
    assert values(complete(f"pvc --config {config} vm info ", base_env)) == ["db1", "web1", "web2"]
    assert values(complete(f"pvc --config {config} vm modify we", base_env)) == ["web1", "web2"]
    assert values(complete(f"pvc --config {config} vm migrate web1 --node ", base_env)) == ["hv1"]
    assert values(complete(f"pvc --config {config} vm list --state s", base_env)) == ["start", "shutdown", "stop"]
    assert values(complete(f"pvc --config {config} network info 10", base_env)) == ["100", "1000"]
    assert values(complete(f"pvc --config {config} network acl list l", base_env)) == ["lab"]
    assert values(complete(f"pvc --config {config} network dhcp list o", base_env)) == ["office"]


def test_node_names_from_pvc_config_file(tmp_path: Path, base_env: dict[str, str]) -> None:
    store = tmp_path / "cluster.sqlite"
    add_nodes(Settings(store_path=str(store)), "hv1", "hv2")
    env = {**base_env, "PVC_CONFIG_FILE": str(config_file(tmp_path, path=str(store)))}
    assert values(complete("pvc node ready hv", env)) == ["hv1", "hv2"]


def test_node_names_from_the_default_store(base_env: dict[str, str]) -> None:
    """No configuration at all: the embedded store in $XDG_DATA_HOME/pvc."""
    default = Path(base_env["XDG_DATA_HOME"]) / "pvc" / "pvc.sqlite"
    default.parent.mkdir(parents=True)
    add_nodes(Settings(store_path=str(default)), "alpha", "beta")
    assert values(complete("pvc node info ", base_env)) == ["alpha", "beta"]


@pytest.mark.zk
def test_node_names_from_zookeeper(tmp_path: Path, base_env: dict[str, str], zk_server: ZooKeeperServer,
                                   zk_admin: Any) -> None:
    chroot = "/completion-test"
    zk_admin.commit([Create(chroot)])
    settings = Settings(coordinators=(zk_server.hosts,), zk_chroot=chroot)
    with Cluster(settings) as core:
        init_cluster(core)
    add_nodes(settings, "zk1", "zk2", "other")
    config = config_file(tmp_path, coordinators=[zk_server.hosts], chroot=chroot)
    assert values(complete(f"pvc --config {config} node info zk", base_env)) == ["zk1", "zk2"]


def test_completion_never_creates_the_embedded_store(base_env: dict[str, str]) -> None:
    """TAB on a host without a store offers nothing and leaves no store file behind."""
    default = Path(base_env["XDG_DATA_HOME"]) / "pvc" / "pvc.sqlite"
    assert complete("pvc node info ", base_env) == []
    assert not default.exists()
    assert not default.parent.exists()


def test_broken_configuration_offers_nothing(tmp_path: Path, base_env: dict[str, str]) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("pvc: [\n", encoding="utf-8")
    assert complete(f"pvc --config {config} node info h", base_env) == []  # and no traceback (see complete)


# --- completion stays light ---------------------------------------------------------------------

WRAPPER = """
import atexit, os, sys

def dump():
    with open(os.environ["MODULES_OUT"], "w") as f:
        f.write("\\n".join(sorted(sys.modules)))

atexit.register(dump)
sys.argv = ["pvc"] + sys.argv[1:]
from pvc.cli import main
main()
"""


def loaded_modules(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[set[str], str]:
    out = tmp_path / "modules.txt"
    result = subprocess.run([sys.executable, "-c", WRAPPER, *args], env={**env, "MODULES_OUT": str(out)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(out.read_text().split()), result.stdout


@pytest.mark.parametrize("words, offered", [
    ("pvc no", "plain,node\n"),
    ("pvc node f", "plain,flush\n"),
    ("pvc node list --format j", "plain,json\nplain,json-pretty\n"),
])
def test_completing_names_imports_no_heavy_library(tmp_path: Path, base_env: dict[str, str], words: str,
                                                   offered: str) -> None:
    env = {**base_env, "_PVC_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}
    modules, stdout = loaded_modules(tmp_path, env)
    assert stdout == offered
    assert "pvc.cli" in modules and "click" in modules  # the dump itself works
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_help_imports_no_heavy_library(tmp_path: Path, base_env: dict[str, str]) -> None:
    modules, stdout = loaded_modules(tmp_path, base_env, "--help")
    assert "Usage: pvc" in stdout
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_completing_names_does_not_open_the_store(base_env: dict[str, str]) -> None:
    assert values(complete("pvc node ", base_env))
    assert not Path(base_env["XDG_DATA_HOME"]).exists()
