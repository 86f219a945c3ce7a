"""The `pvc` command: `pvc node ...` and `pvc init` through Click's runner on both store engines,
the configuration and colour rules, what `--help` imports, and one real `python -m pvc` run."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from pvc.cli import cli as root
from pvc.cli.errors import EXIT_CODES, CommandFailed, Exit, exit_code
from pvc.cli.render import render, use_colour
from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import (
    AlreadyExists,
    ConfigError,
    Conflict,
    InvalidArgument,
    InvalidState,
    NotFound,
    OutcomeUnknown,
    PvcError,
    Timeout,
    Unavailable,
)
from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state
from pvc.lib.ops.node import get_coordinator_state, get_daemon_state, get_domain_state, get_node, list_nodes, this_node

LIST_COLUMNS = ["Name", "St: Daemon", "Coordinator", "Domain", "Res: VMs", "vCPUs", "Load", "Mem (M): Total", "Used",
                "Free", "VMs"]
ANSI = "\033["
HEAVY = ("kazoo", "lxml", "bottle", "cheroot", "regex", "libvirt")


# --- helpers -------------------------------------------------------------------------------------


def ok(result: Any) -> str:
    """The stdout of a command that must have succeeded quietly on stderr."""
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.output
    return result.stdout


def failed(result: Any, code: int, message: str | None = None) -> str:
    """The stderr of a command that must have failed with ``code`` and printed nothing on stdout."""
    assert result.exit_code == code, result.output
    assert result.stdout == "", result.output
    assert result.stderr.endswith("\n"), result.output
    if message is not None:
        assert result.stderr == f"Error: {message}\n", result.output
    else:
        assert "Error: " in result.stderr, result.output
    return result.stderr


def snapshot(core: Cluster) -> dict[str, tuple[str, int]]:
    keys = core.store.subtree("/")
    return {k: (e.value, e.version) for k, e in core.store.get_many(keys).items() if e is not None}


def domainstate(core: Cluster, node: str) -> str:
    return core.store.get(schema.node_key(node, "domainstate")).value


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.rstrip("\n").split("\n")
    return re.split(r"\s{2,}", lines[0].strip()), [line.split() for line in lines[1:]]


def start_agent(core: Cluster, node: str, request: str, done: str) -> tuple[threading.Thread, dict[str, Any]]:
    """A simulated node agent (its own store session) that reports ``done`` once ``request`` is asked."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with Cluster(core.settings) as own:
                path = schema.node_key(node, "domainstate")
                own.store.wait_for([path], lambda: own.store.get(path).value == request, 20)
                report_domain_state(own, node, done)
                out["reported"] = True
        except BaseException as e:  # handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def nodes(core: Cluster, add_node: Callable[..., str]) -> Cluster:
    """hv1: running coordinator with load; hv10: hypervisor; hv2: coordinator, flushed; hv3: dead coordinator."""
    add_node("hv1", coordinator=True, memalloc=4096, vcpualloc=4, cpuload=0.5, domainscount=2,
             running_domains=("u1", "u2"))
    add_node("hv10")
    add_node("hv2", coordinator=True, domain_state="flushed")
    add_node("hv3", coordinator=True, daemon_state="dead")
    return core


def write_config_text() -> str:
    """A minimal valid configuration for the embedded store (no trailing newline)."""
    return textwrap.dedent("""\
        pvc:
          debug: false
          coordinators: []
          api:
            listen_address: 127.0.0.1
            authentication:
              enabled: false
            ssl:
              enabled: false""")


def write_config(path: Any, store_path: str | None = None) -> str:
    store = f"\n  store:\n    path: {store_path}" if store_path else ""
    path.write_text(write_config_text() + store + "\n")
    return str(path)


# --- pvc node list ---------------------------------------------------------------------------------


def test_node_list_table(cli: Callable[..., Any], nodes: Cluster) -> None:
    result = cli("node", "list")
    header, rows = table_rows(ok(result))
    assert header == LIST_COLUMNS, result.output
    assert [r[0] for r in rows] == ["hv1", "hv10", "hv2", "hv3"]
    assert rows[0] == ["hv1", "run", "secondary", "ready", "2", "4", "0.5", "32000", "8000", "24000", "4096"]
    assert rows[1] == ["hv10", "run", "client", "ready", "0", "0", "0.0", "32000", "8000", "24000", "0"]
    assert rows[2][1:4] == ["run", "secondary", "flushed"]
    assert rows[3][1:4] == ["dead", "secondary", "ready"]
    assert ANSI not in result.stdout  # not a terminal: no colour


def test_node_list_empty(cli: Callable[..., Any], core: Cluster) -> None:
    header, rows = table_rows(ok(cli("node", "list")))
    assert header == LIST_COLUMNS
    assert rows == []
    assert json.loads(ok(cli("node", "list", "--format", "json"))) == []


@pytest.mark.parametrize("limit, names", [("hv1", ["hv1", "hv10"]), ("^hv1$", ["hv1"]), ("0$", ["hv10"]),
                                          ("^hv[23]", ["hv2", "hv3"]), ("web", [])])
def test_node_list_limit(cli: Callable[..., Any], nodes: Cluster, limit: str, names: list[str]) -> None:
    _, rows = table_rows(ok(cli("node", "list", limit)))
    assert [r[0] for r in rows] == names
    assert [n["name"] for n in json.loads(ok(cli("node", "list", limit, "--format", "json")))] == names


@pytest.mark.parametrize("fmt", ["json", "json-pretty"])
def test_node_list_json_equals_library_data(cli: Callable[..., Any], nodes: Cluster, fmt: str) -> None:
    result = cli("node", "list", "--format", fmt)
    data = json.loads(ok(result))
    assert data == list_nodes(nodes)
    assert type(data[0]["load"]) is float and type(data[0]["memory"]["total"]) is int
    if fmt == "json-pretty":
        assert result.stdout.startswith("[\n  {\n"), result.output
    else:
        assert result.stdout.count("\n") == 1, result.output


def test_node_list_invalid_regex(cli: Callable[..., Any], nodes: Cluster) -> None:
    stderr = failed(cli("node", "list", "("), 2)
    assert stderr.startswith("Error: Invalid limit '(': missing )"), stderr


def test_node_list_bad_format(cli: Callable[..., Any], nodes: Cluster) -> None:
    stderr = failed(cli("node", "list", "--format", "xml"), 2)
    assert "Usage: " in stderr and "'xml' is not one of" in stderr, stderr


# --- pvc node info ----------------------------------------------------------------------------------


def test_node_info(cli: Callable[..., Any], nodes: Cluster) -> None:
    text = ok(cli("node", "info", "hv1"))
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in text.rstrip("\n").split("\n"))
    assert fields == {
        "Name": "hv1", "Daemon State": "run", "Coordinator State": "secondary", "Domain State": "ready",
        "Active VM Count": "2", "Host CPUs": "8", "vCPUs": "4", "Load": "0.5", "Total RAM (MiB)": "32000",
        "Used RAM (MiB)": "8000", "Free RAM (MiB)": "24000", "Allocated RAM (MiB)": "4096",
    }
    assert ANSI not in text


@pytest.mark.parametrize("flag", ["-l", "--long"])
def test_node_info_long(cli: Callable[..., Any], nodes: Cluster, flag: str) -> None:
    text = ok(cli("node", "info", "hv1", flag))
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in text.rstrip("\n").split("\n"))
    assert (fields["Architecture"], fields["Operating System"], fields["Kernel Version"]) == \
        ("x86_64", "GNU/Linux", "6.1.0-amd64")
    assert fields["Name"] == "hv1" and fields["Allocated RAM (MiB)"] == "4096"
    assert "Architecture" not in ok(cli("node", "info", "hv1"))


@pytest.mark.parametrize("fmt", ["json", "json-pretty"])
def test_node_info_json(cli: Callable[..., Any], nodes: Cluster, fmt: str) -> None:
    data = json.loads(ok(cli("node", "info", "hv1", "--format", fmt)))
    assert data == get_node(nodes, "hv1")
    assert [n["name"] for n in data] == ["hv1"]  # exact: hv10 is not included


def test_node_info_defaults_to_this_host(cli: Callable[..., Any], core: Cluster, add_node: Callable[..., str]) -> None:
    here = this_node()
    stderr = failed(cli("node", "info"), 3, f"Node '{here}' not found.")
    assert here in stderr
    add_node(here, domain_state="flushed")
    add_node(here + "x")
    data = json.loads(ok(cli("node", "info", "--format", "json")))
    assert [n["name"] for n in data] == [here]


def test_node_commands_default_to_short_host_name(cli: Callable[..., Any], core: Cluster,
                                                  add_node: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "hv7.example.org")
    add_node("hv7")
    assert ok(cli("node", "info")).startswith("Name:")
    assert json.loads(ok(cli("node", "info", "--format", "json")))[0]["name"] == "hv7"
    assert ok(cli("node", "flush")) == "Flushing node 'hv7' of running VMs.\n"
    assert domainstate(core, "hv7") == "flush"


@pytest.mark.parametrize("name, code", [("nosuch", 3), ("hv", 3), ("hv1.", 3), ("a/b", 2), ("..", 2)])
def test_node_info_errors(cli: Callable[..., Any], nodes: Cluster, name: str, code: int) -> None:
    stderr = failed(cli("node", "info", name), code)
    if code == 3:
        assert stderr == f"Error: Node '{name}' not found.\n"
    else:
        assert stderr.startswith(f"Error: Invalid node name '{name}'"), stderr


# --- the state getters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb, getter, title, expected",
    [
        ("daemon-state", get_daemon_state, "Daemon state", "dead"),
        ("coordinator-state", get_coordinator_state, "Coordinator state", "secondary"),
        ("domain-state", get_domain_state, "Domain state", "ready"),
    ],
)
def test_state_commands(cli: Callable[..., Any], nodes: Cluster, verb: str, getter: Callable[..., Any], title: str,
                        expected: str) -> None:
    header, rows = table_rows(ok(cli("node", verb, "hv3")))
    assert header == ["Name", title]
    assert rows == [["hv3", expected]]
    for fmt in ("json", "json-pretty"):
        data = json.loads(ok(cli("node", verb, "hv3", "--format", fmt)))
        assert data == getter(nodes, "hv3") == {"name": "hv3", verb.replace("-", "_"): expected}
    failed(cli("node", verb, "hv"), 3, "Node 'hv' not found.")
    assert "Missing argument 'NODE'" in failed(cli("node", verb), 2)


# --- pvc node primary / secondary -------------------------------------------------------------------------


def test_primary_and_secondary(cli: Callable[..., Any], nodes: Cluster) -> None:
    core = nodes
    assert ok(cli("node", "primary", "hv1")) == "Setting node 'hv1' as the primary coordinator.\n"
    assert core.store.get(schema.PRIMARY_NODE).value == "hv1"
    before = snapshot(core)
    assert ok(cli("node", "primary", "hv1")) == "Node 'hv1' is already the primary coordinator; nothing changed.\n"
    assert ok(cli("node", "secondary", "hv2")) == "Node 'hv2' is already a secondary coordinator; nothing changed.\n"
    assert snapshot(core) == before
    assert ok(cli("node", "primary", "hv2")) == "Setting node 'hv2' as the primary coordinator.\n"
    assert ok(cli("node", "secondary", "hv2")) == "Setting node 'hv2' as a secondary coordinator.\n"
    assert core.store.get(schema.PRIMARY_NODE).value == "none"


@pytest.mark.parametrize("verb", ["primary", "secondary"])
def test_primary_secondary_errors(cli: Callable[..., Any], nodes: Cluster, verb: str) -> None:
    core = nodes
    cli("node", "primary", "hv1")
    before = snapshot(core)
    stderr = failed(cli("node", verb, "hv10"), 4)
    assert stderr.startswith("Error: Node 'hv10' is not a coordinator"), stderr
    failed(cli("node", verb, "hv3"), 4, "Node 'hv3' is not running (its daemon state is 'dead').")
    failed(cli("node", verb, "hv9"), 3, "Node 'hv9' not found.")
    assert failed(cli("node", verb, "a/b"), 2).startswith("Error: Invalid node name 'a/b'")
    assert "Missing argument 'NODE'" in failed(cli("node", verb), 2)
    assert snapshot(core) == before


# --- pvc node flush / ready / unflush ----------------------------------------------------------------------


def test_flush_and_ready(cli: Callable[..., Any], nodes: Cluster) -> None:
    core = nodes
    assert ok(cli("node", "flush", "hv1")) == "Flushing node 'hv1' of running VMs.\n"
    assert domainstate(core, "hv1") == "flush"
    assert ok(cli("node", "ready", "hv2")) == "Restoring node 'hv2' to active service.\n"
    assert domainstate(core, "hv2") == "unflush"
    before = snapshot(core)
    assert "No such option '--format'" in failed(cli("node", "flush", "hv10", "--format", "json"), 2)
    assert ok(cli("node", "ready", "hv10")) == "Node 'hv10' is already ready; nothing changed.\n"
    assert snapshot(core) == before
    report_domain_state(core, "hv1", "flushed")
    assert ok(cli("node", "flush", "hv1")) == "Node 'hv1' is already flushed; nothing changed.\n"


def test_unflush_is_ready(cli: Callable[..., Any], nodes: Cluster) -> None:
    core = nodes
    assert ok(cli("node", "unflush", "hv2")) == "Restoring node 'hv2' to active service.\n"
    assert domainstate(core, "hv2") == "unflush"
    assert ok(cli("node", "unflush", "hv1")) == "Node 'hv1' is already ready; nothing changed.\n"
    assert "--wait" in ok(cli("node", "unflush", "--help"))


def test_flush_in_progress_is_rewritten(cli: Callable[..., Any], nodes: Cluster) -> None:
    core = nodes
    path = schema.node_key("hv1", "domainstate")
    ok(cli("node", "flush", "hv1"))
    version = core.store.get(path).version
    assert ok(cli("node", "flush", "hv1")) == "Flushing node 'hv1' of running VMs.\n"
    assert core.store.get(path).version == version + 1


@pytest.mark.parametrize("verb", ["flush", "ready", "unflush"])
def test_flush_ready_errors(cli: Callable[..., Any], nodes: Cluster, verb: str) -> None:
    core = nodes
    before = snapshot(core)
    failed(cli("node", verb, "hv9"), 3, "Node 'hv9' not found.")
    failed(cli("node", verb, "hv9", "--wait"), 3, "Node 'hv9' not found.")
    assert failed(cli("node", verb, "a/b"), 2).startswith("Error: Invalid node name 'a/b'")
    assert "--timeout" in failed(cli("node", verb, "hv1", "--wait", "--timeout", "0"), 2)
    assert "--timeout" in failed(cli("node", verb, "hv1", "--timeout", "soon"), 2)
    assert "Error: --timeout only applies together with --wait." in failed(cli("node", verb, "hv2", "--timeout", "5"), 2)
    assert "No such option" in failed(cli("node", verb, "hv1", "--force"), 2)
    assert snapshot(core) == before


@pytest.mark.parametrize("verb, start, asked, done, first", [
    ("flush", "ready", "flush", "flushed", "Flushing node 'hv1' of running VMs."),
    ("ready", "flushed", "unflush", "ready", "Restoring node 'hv1' to active service."),
    ("unflush", "flushed", "unflush", "ready", "Restoring node 'hv1' to active service."),
])
@pytest.mark.parametrize("wait_flag", ["--wait", "-w"])
def test_wait_for_the_agent(cli: Callable[..., Any], core: Cluster, add_node: Callable[..., str], verb: str,
                            start: str, asked: str, done: str, first: str, wait_flag: str) -> None:
    add_node("hv1", domain_state=start)
    thread, out = start_agent(core, "hv1", asked, done)
    result = cli("node", verb, "hv1", wait_flag, "--timeout", "30")
    thread.join(30)
    assert out == {"reported": True}, out
    assert ok(result) == f"{first}\nNode 'hv1' reports domain state '{done}'.\n"
    assert domainstate(core, "hv1") == done


@pytest.mark.parametrize("verb, start, asked, done", [("flush", "ready", "flush", "flushed"),
                                                         ("ready", "flushed", "unflush", "ready")])
def test_wait_times_out(cli: Callable[..., Any], core: Cluster, add_node: Callable[..., str], verb: str, start: str,
                        asked: str, done: str) -> None:
    add_node("hv1", domain_state=start)
    result = cli("node", verb, "hv1", "--wait", "--timeout", "0.3")
    assert result.exit_code == 6, result.output
    # The request itself was made (and said so) before the wait ran out.
    assert result.stdout.startswith(("Flushing node 'hv1'", "Restoring node 'hv1'")), result.output
    assert result.stdout.count("\n") == 1, result.output
    assert result.stderr == (
        f"Error: Timed out after 0.3 s: node 'hv1' still reports domain state '{asked}', not '{done}'.\n"
    ), result.output
    assert domainstate(core, "hv1") == asked


def test_wait_when_already_done(cli: Callable[..., Any], nodes: Cluster) -> None:
    assert ok(cli("node", "flush", "hv2", "--wait", "--timeout", "0.5")) == (
        "Node 'hv2' is already flushed; nothing changed.\nNode 'hv2' reports domain state 'flushed'.\n"
    )


# --- pvc init --------------------------------------------------------------------------------------------


def test_init_on_a_fresh_cluster_succeeds(cli: Callable[..., Any], core: Cluster) -> None:
    assert ok(cli("init")) == f"The cluster in {core.store.describe()} is already initialised and empty; nothing changed.\n"


def test_init_refuses_existing_cluster(cli: Callable[..., Any], nodes: Cluster) -> None:
    core = nodes
    cli("node", "primary", "hv1")
    before = snapshot(core)
    stderr = failed(cli("init"), 4)
    assert stderr.startswith("Error: A cluster already exists in "), stderr
    assert "pass --yes to replace it" in stderr
    assert snapshot(core) == before


def test_init_yes_replaces_cluster(cli: Callable[..., Any], nodes: Cluster) -> None:
    core = nodes
    cli("node", "primary", "hv1")
    stdout = ok(cli("init", "--yes"))
    assert stdout.startswith("Replaced the cluster in ") and stdout.endswith("restart any running node agents.\n")
    assert {k: v for k, (v, _) in snapshot(core).items() if k != "/"} == dict(schema.ROOT_TREE)
    assert core.store.get(schema.PRIMARY_NODE).value == "none"
    assert json.loads(ok(cli("node", "list", "--format", "json"))) == []
    failed(cli("node", "info", "hv1"), 3, "Node 'hv1' not found.")


def test_init_on_empty_store(cli: Callable[..., Any], core: Cluster) -> None:
    for key in schema.ROOTS:
        core.store.delete_tree(key)
    failed(cli("node", "list"), 4)  # not initialised
    assert ok(cli("init")).startswith("Initialised a new cluster in ")
    assert {k: v for k, (v, _) in snapshot(core).items() if k != "/"} == dict(schema.ROOT_TREE)


def test_init_bad_usage(cli: Callable[..., Any], core: Cluster) -> None:
    before = snapshot(core)
    assert "No such option" in failed(cli("init", "--force"), 2)
    assert "unexpected extra argument" in failed(cli("init", "yes"), 2)
    assert snapshot(core) == before


# --- exit codes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error, code", [
    (NotFound("x"), 3), (InvalidState("x"), 4), (Conflict("x"), 4), (AlreadyExists("x"), 4), (Timeout("x"), 6),
    (InvalidArgument("x"), 2), (ConfigError(["a", "b"]), 2), (Unavailable("x"), 5), (PvcError("x"), 1),
    (OutcomeUnknown("x"), 7),
])
def test_exit_code_table(error: PvcError, code: int) -> None:
    assert int(exit_code(error)) == code
    assert CommandFailed(error).exit_code == code


def test_exit_code_resolves_along_the_class_hierarchy() -> None:
    class Gone(NotFound):
        pass

    class Odd(PvcError):
        pass

    assert exit_code(Gone("x")) == Exit.NOT_FOUND
    assert exit_code(Odd("x")) == Exit.FAILED
    assert set(EXIT_CODES.values()) <= set(Exit)


def test_unreachable_store_exit_code(tmp_path: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    config = tmp_path / "zk.yaml"
    config.write_text(textwrap.dedent(f"""\
        pvc:
          debug: false
          coordinators: ["127.0.0.1:{port}"]
          api:
            listen_address: 127.0.0.1
            authentication: {{enabled: false}}
            ssl: {{enabled: false}}
          store:
            timeout: 0.5
        """))
    result = CliRunner().invoke(root, ["--config", str(config), "node", "list"], env={"PVC_CONFIG_FILE": None})
    assert result.exit_code == 5, result.output
    assert result.stdout == "", result.output
    assert result.stderr == f"Error: ZooKeeper at 127.0.0.1:{port} is unreachable.\n", result.output


# --- configuration ----------------------------------------------------------------------------------------


def test_bad_config_one_line_per_mistake(tmp_path: Any) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(textwrap.dedent("""\
        pvc:
          debug: maybe
          coordinators: not-a-list
          api:
            listen_address: 127.0.0.1
            listen_port: 70000
            authentication:
              enabled: false
            ssl:
              enabled: false
            bogus: 1
        """))
    result = CliRunner().invoke(root, ["--config", str(config), "node", "list"], env={"PVC_CONFIG_FILE": None})
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.output
    lines = result.stderr.rstrip("\n").split("\n")
    assert all(line.startswith("Error: ") for line in lines), result.output
    assert len(lines) == 4, result.output
    assert sorted(line.split(":")[1].strip() for line in lines) == \
        ["pvc.api.bogus", "pvc.api.listen_port", "pvc.coordinators", "pvc.debug"], result.output


def test_bad_config_from_environment(tmp_path: Any) -> None:
    config = tmp_path / "env.yaml"
    config.write_text("pvc:\n  debug: false\n")
    result = CliRunner().invoke(root, ["node", "list"], env={"PVC_CONFIG_FILE": str(config)})
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.output
    lines = result.stderr.rstrip("\n").split("\n")
    missing = ["pvc.coordinators", "pvc.api.listen_address", "pvc.api.authentication.enabled", "pvc.api.ssl.enabled"]
    assert lines == [f"Error: {key}: required key is missing" for key in missing], result.output


@pytest.mark.parametrize("text, fragment", [("pvc: [unclosed\n", "not valid YAML"), (None, "cannot read")])
def test_unreadable_config(tmp_path: Any, text: str | None, fragment: str) -> None:
    config = tmp_path / "c.yaml"
    if text is not None:
        config.write_text(text)
    result = CliRunner().invoke(root, ["--config", str(config), "init"], env={"PVC_CONFIG_FILE": None})
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.output
    assert result.stderr.startswith(f"Error: {config}: {fragment}"), result.output
    assert result.stderr.count("\n") == 1, result.output
    assert not (tmp_path / "pvc").exists()


def test_config_file_selects_the_store(tmp_path: Any) -> None:
    store = tmp_path / "data" / "pvc.sqlite"
    with Cluster(Settings(store_path=str(store))) as core:
        register_node(core, "hv1", NodeFacts(4, "k", "GNU/Linux", "x86_64"))
        expected = list_nodes(core)
    config = write_config(tmp_path / "pvc.yaml", str(store))
    result = CliRunner().invoke(root, ["--config", config, "node", "list", "--format", "json"],
                                env={"PVC_CONFIG_FILE": None})
    assert json.loads(ok(result)) == expected
    result = CliRunner().invoke(root, ["node", "flush", "hv1"], env={"PVC_CONFIG_FILE": config})
    assert ok(result) == "Node 'hv1' is already flushed; nothing changed.\n"


# --- shell completion -------------------------------------------------------------------------------------


def config_for(settings: Settings, path: Any) -> str:
    """A configuration file that selects the same store as ``settings``."""
    if settings.engine == "zookeeper":
        store = f"\n  store:\n    chroot: {settings.zk_chroot}"
        path.write_text(write_config_text().replace("coordinators: []", f"coordinators: [{settings.coordinators[0]}]")
                        + store + "\n")
        return str(path)
    return write_config(path, settings.store_path)


def complete(words: str, env: dict[str, str | None] | None = None) -> Any:
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    environment = {"_PVC_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword,
                   "PVC_CONFIG_FILE": None, **(env or {})}
    return CliRunner().invoke(root, [], prog_name="pvc", env=environment)


def test_completion_of_node_names(nodes: Cluster, tmp_path: Any) -> None:
    config = config_for(nodes.settings, tmp_path / "pvc.yaml")
    assert ok(complete(f"pvc --config {config} node info hv1")) == "plain,hv1\nplain,hv10\n"
    assert ok(complete("pvc node flush h", {"PVC_CONFIG_FILE": config})) == \
        "plain,hv1\nplain,hv10\nplain,hv2\nplain,hv3\n"
    assert ok(complete(f"pvc --config {config} node primary x")) == "\n"  # none
    assert ok(complete(f"pvc --config {config} node list --format json")) == "plain,json\nplain,json-pretty\n"


def test_completion_with_unreachable_store_offers_nothing(tmp_path: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "zk.yaml"
    config.write_text(write_config_text().replace("coordinators: []", f"coordinators: ['127.0.0.1:{port}']")
                      + "\n  store:\n    timeout: 0.3\n")
    assert ok(complete(f"pvc --config {config} node info h")) == "\n"  # no candidates, no traceback
    bad = tmp_path / "bad.yaml"
    bad.write_text("pvc: [\n")
    assert ok(complete(f"pvc --config {bad} node info h")) == "\n"


# --- colour -------------------------------------------------------------------------------------------


class Stream:
    """A stand-in output stream that says whether it is a terminal."""

    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_use_colour_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Stream(True)) is True
    assert use_colour(Stream(False)) is False
    assert use_colour(object()) is False  # no isatty at all
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_colour(Stream(True)) is False
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: only a non-empty value disables colour
    assert use_colour(Stream(True)) is True


def test_tables_with_and_without_colour(nodes: Cluster) -> None:
    data = list_nodes(nodes)
    coloured = render(data, "table", "node_list", True)
    assert "\033[1mName\033[0m" in coloured
    assert "\033[92mrun\033[0m" in coloured  # daemon run: green
    assert "\033[1m\033[91mdead\033[0m" in coloured  # dead: bold red
    assert "\033[94mflushed\033[0m" in coloured  # domain other than ready: blue
    assert "\033[96mclient\033[0m" in coloured  # coordinator other than primary/secondary: cyan
    plain = render(data, "table", "node_list", False)
    assert ANSI not in plain
    assert re.sub(r"\033\[\d+m", "", coloured).split() == plain.split()
    info = render(get_node(nodes, "hv1"), "table", "node_info", True, long=True)
    assert "\033[95mName:" in info  # purple labels
    assert ANSI not in render(data, "json", "node_list", True)


def test_cli_output_has_no_colour_when_not_a_terminal(cli: Callable[..., Any], nodes: Cluster,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    for args in (("node", "list"), ("node", "info", "hv3", "-l"), ("node", "daemon-state", "hv3")):
        stdout = ok(cli(*args))
        assert ANSI not in stdout, stdout
        assert "hv3" in stdout or "dead" in stdout


# --- --help stays light ----------------------------------------------------------------------------------


IMPORT_PROBE = textwrap.dedent("""\
    import json, runpy, sys
    sys.argv = ["pvc"] + json.loads(sys.argv[1])
    code = None
    try:
        runpy.run_module("pvc", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\\n")
""")


@pytest.mark.parametrize("args, env, expect", [
    (["--help"], {}, "Commands:"),
    (["node", "--help"], {}, "flush"),
    (["node", "flush", "--help"], {}, "--wait"),
    (["init", "--help"], {}, "--yes"),
    ([], {"_PVC_COMPLETE": "bash_complete", "COMP_WORDS": "pvc no", "COMP_CWORD": "1"}, "node"),
])
def test_help_does_not_import_heavy_modules(tmp_path: Any, args: list[str], env: dict[str, str], expect: str) -> None:
    environment = {**os.environ, "XDG_DATA_HOME": str(tmp_path), **env}
    environment.pop("PVC_CONFIG_FILE", None)
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE, json.dumps(args)], capture_output=True, text=True,
                          env=environment, cwd=str(tmp_path), timeout=60)
    report = json.loads(proc.stderr.rsplit("PROBE ", 1)[1])
    assert report["code"] in (0, None), proc.stderr
    assert expect in proc.stdout, proc.stdout
    modules = report["modules"]
    assert "click" in modules and "pvc.cli" in modules  # the probe really ran the command
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []
    assert "pvc.lib.store.zookeeper" not in modules and "pvc.server" not in modules
    assert not (tmp_path / "pvc").exists()  # no store was opened


# --- one real run -----------------------------------------------------------------------------------------


def run_pvc(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvc", *args], capture_output=True, text=True, env=env, timeout=60)


def run_pvc_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `python -m pvc` with its stdout on a pseudo-terminal; its exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pvc", *args], stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    proc.communicate(timeout=60)
    return proc.returncode, b"".join(chunks).decode()


def test_python_m_pvc_smoke(tmp_path: Any) -> None:
    store = tmp_path / "store" / "pvc.sqlite"
    with Cluster(Settings(store_path=str(store))) as core:
        for name, coordinator in (("hv1", True), ("hv2", False)):
            register_node(core, name, NodeFacts(8, "6.1.0-amd64", "GNU/Linux", "x86_64"), coordinator=coordinator)
            publish_figures(core, name, NodeFigures(memtotal=32000, memused=8000, memfree=24000, cpuload=0.25))
            report_domain_state(core, name, "ready")
    config = write_config(tmp_path / "pvc.yaml", str(store))
    env = {k: v for k, v in os.environ.items() if k not in ("PVC_CONFIG_FILE", "NO_COLOR")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # must stay unused: the config names the store
    env["PVC_CONFIG_FILE"] = config

    proc = run_pvc(["node", "list", "--format", "json"], env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    with Cluster(Settings(store_path=str(store))) as core:
        assert json.loads(proc.stdout) == list_nodes(core)

    proc = run_pvc(["node", "primary", "hv1"], env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Setting node 'hv1' as the primary coordinator.\n", "")
    proc = run_pvc(["node", "flush", "hv2"], env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Flushing node 'hv2' of running VMs.\n", "")
    proc = run_pvc(["node", "info", "nosuch"], env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "Error: Node 'nosuch' not found.\n")
    proc = run_pvc(["node", "primary", "hv2"], env)
    assert proc.returncode == 4 and proc.stdout == "", proc.stderr
    with Cluster(Settings(store_path=str(store))) as core:
        assert core.store.get(schema.PRIMARY_NODE).value == "hv1"
        assert get_domain_state(core, "hv2")["domain_state"] == "flush"

    # Ctrl-C during --wait: the request stays made, the command says so and exits 130.
    proc = subprocess.Popen([sys.executable, "-m", "pvc", "node", "ready", "hv2", "--wait", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        with Cluster(Settings(store_path=str(store))) as core:
            path = schema.node_key("hv2", "domainstate")
            core.store.wait_for([path], lambda: core.store.get(path).value == "unflush", 30)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, stdout, stderr) == (130, "Restoring node 'hv2' to active service.\n", "Interrupted.\n")

    # On a terminal the table is coloured, unless NO_COLOR says otherwise.
    code, output = run_pvc_on_terminal(["node", "list"], env)
    assert code == 0, output
    assert "\033[1mName\033[0m" in output and "\033[92mrun\033[0m" in output, output
    assert "\033[94munflush\033[0m" in output, output
    code, output = run_pvc_on_terminal(["node", "list"], {**env, "NO_COLOR": "1"})
    assert code == 0, output
    assert ANSI not in output and "hv1" in output, output
    assert not (tmp_path / "xdg").exists()


# --- destructive operations ask first --------------------------------------------------------------


def test_destructive_operation_asks_unless_yes(tmp_path: Any) -> None:
    """An operation declared destructive gets a confirmation prompt and -y/--yes (built by the same
    adapter as every command; a test-only operation, not added to the registry)."""
    import click

    from pvc.cli.build import commands_for
    from pvc.cli.context import CliContext
    from pvc.lib.registry import Operation

    calls: list[str] = []

    def wipe(core: Cluster) -> str:
        """Wipe everything."""
        calls.append("wiped")
        return "Wiped."

    op = Operation(name="thing.wipe", group=("thing",), verb="wipe", method="DELETE", path=None, func=wipe,
                   params=(), result="message", destructive=True, http_reason="test only")
    (verb, command, _), = commands_for(op)
    group = click.Group("pvc", commands={verb: command})
    runner = CliRunner()
    with Cluster(Settings(store_path=str(tmp_path / "pvc.sqlite"))) as core:
        refused = runner.invoke(group, ["wipe"], obj=CliContext(core=core), input="n\n")
        assert refused.exit_code == 1 and "Really wipe?" in refused.output and calls == []
        accepted = runner.invoke(group, ["wipe"], obj=CliContext(core=core), input="y\n")
        assert accepted.exit_code == 0 and accepted.stdout.endswith("Wiped.\n") and calls == ["wiped"]
        forced = runner.invoke(group, ["wipe", "--yes"], obj=CliContext(core=core))
        assert forced.exit_code == 0 and forced.stdout == "Wiped.\n" and calls == ["wiped", "wiped"]
