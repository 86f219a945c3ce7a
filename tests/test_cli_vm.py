"""`pvc vm ...` through Click's runner on both store engines: tables, files and stdin, the
hand-written `modify` with a real $EDITOR, prompts and exit codes (3 not found, 4 conflict or
state, 2 bad input). The library and HTTP sides are in tests/test_ops_vm.py."""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.cli.render import render
from pvc.lib.ops.vm import define_vm, get_vm, list_vms
from pvc.lib.store import Create
from tests.vm_fixtures import (
    SELECTOR_CHOICE,
    SELECTOR_NODES,
    agent_writes_state,
    define,
    field,
    minimal_xml,
    new_uuid,
    pretty_xml,
    snapshot,
    vm_xml,
)

LIST_COLUMNS = ["Name", "UUID", "State", "Networks", "RAM (M)", "vCPUs", "Node", "Migrated"]
ANSI = "\033["


# --- helpers -------------------------------------------------------------------------------------


def ok(result: Any) -> str:
    """The stdout of a command that must have succeeded quietly on stderr."""
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.output
    return result.stdout


def failed(result: Any, code: int, *fragments: str) -> str:
    """The stderr (`Error: ...`) of a command that must have failed with ``code``."""
    assert result.exit_code == code, result.output
    assert "Error: " in result.stderr, result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.output
    return result.stderr


def refused(cli: Callable[..., Any], core: Cluster, code: int, *fragments: str, args: tuple[str, ...],
            input: str | None = None) -> str:
    """Run a command that must fail with ``code``, printing nothing on stdout (no prompt given)
    and changing nothing in the tree."""
    before = snapshot(core)
    result = cli(*args, input=input)
    stderr = failed(result, code, *fragments)
    if input is None:
        assert result.stdout == "", result.output
    assert snapshot(core) == before
    return stderr


def table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.rstrip("\n").split("\n")
    return re.split(r"\s{2,}", lines[0].strip()), [line.split() for line in lines[1:]]


def info_fields(text: str) -> dict[str, str]:
    pairs = [re.split(r":\s*", line, maxsplit=1) for line in text.split("\n\n")[1].strip("\n").split("\n")]
    return {k: v for k, v in pairs}


@pytest.fixture
def vms(nodes: Cluster) -> dict[str, str]:
    """web1 (hv1, stop; networks 1001 and cluster), web2 (hv1, start), db1 (hv2, start, 4 GiB)."""
    nodes.store.commit([Create(schema.network("1001"), "web")])
    return {
        "web1": define(nodes, "web1", node="hv1", bridges=("vmbr1001", "brcluster")),
        "web2": define(nodes, "web2", node="hv1", state="start", bridges=("vmbr1001", "vmbr1002")),
        "db1": define(nodes, "db1", node="hv2", state="start", memory="4", unit="GiB", vcpu="8"),
    }


@pytest.fixture
def xml_file(tmp_path: Path) -> Callable[[str], str]:
    def write(text: str) -> str:
        path = tmp_path / f"vm-{new_uuid()}.xml"
        path.write_bytes(text.encode("utf-8"))
        return str(path)

    return write


# --- list and info -------------------------------------------------------------------------------


def test_vm_list_table(cli: Callable[..., Any], vms: dict[str, str]) -> None:
    result = cli("vm", "list")
    header, rows = table(ok(result))
    assert header == LIST_COLUMNS, result.output
    assert rows == [
        ["db1", vms["db1"], "start", "100", "4096", "8", "hv2", "no"],
        ["web1", vms["web1"], "stop", "1001,cluster", "1024", "2", "hv1", "no"],
        ["web2", vms["web2"], "start", "1001,1002", "1024", "2", "hv1", "no"],
    ]
    assert ANSI not in result.stdout


def test_vm_list_shows_migrations(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str]) -> None:
    ok(cli("vm", "migrate", "web2", "-t", "hv3"))
    _, rows = table(ok(cli("vm", "list", "web2")))
    assert rows == [["web2", vms["web2"], "migrate", "1001,1002", "1024", "2", "hv3", "from", "hv1"]]


def test_vm_list_empty(cli: Callable[..., Any], nodes: Cluster) -> None:
    header, rows = table(ok(cli("vm", "list")))
    assert (header, rows) == (LIST_COLUMNS, [])
    assert json.loads(ok(cli("vm", "list", "--format", "json"))) == []
    assert ok(cli("vm", "list", "--raw")) == "\n"


def test_vm_list_colours(nodes: Cluster, vms: dict[str, str]) -> None:
    """On a terminal: the original's state colours, and networks that do not exist in red."""
    text = render(list_vms(nodes), "table", "vm_list", True, False, nodes)
    green, red, yellow, reset = "\033[92m", "\033[91m", "\033[93m", "\033[0m"
    lines = {line.split()[0].replace("\033[1m", ""): line for line in text.split("\n")}
    assert f"{green}start{reset}" in lines["db1"] and f"{red}stop{reset}" in lines["web1"]
    assert f"1001,{red}1002{reset}" in lines["web2"]  # 1001 exists, 1002 does not
    assert " 1001,cluster " in lines["web1"]
    assert f"{red}100{reset}" in lines["db1"]
    agent_writes_state(nodes, vms["web1"], "shutdown")
    assert f"{yellow}shutdown{reset}" in render(list_vms(nodes, "web1"), "table", "vm_list", True, False, nodes)
    info = render(get_vm(nodes, "web2"), "table", "vm_info", True, False, nodes)
    assert f"1001 {red}1002 [invalid]{reset}" in info


@pytest.mark.parametrize("flag", ["-r", "--raw"])
def test_vm_list_raw(cli: Callable[..., Any], vms: dict[str, str], flag: str) -> None:
    assert ok(cli("vm", "list", flag)) == "db1\nweb1\nweb2\n"
    assert ok(cli("vm", "list", "web", flag)) == "web1\nweb2\n"


@pytest.mark.parametrize("args, expected", [
    (("--node", "hv1"), ["web1", "web2"]),
    (("-t", "hv2"), ["db1"]),
    (("--target", "hv3"), []),
    (("--state", "start"), ["db1", "web2"]),
    (("-s", "stop"), ["web1"]),
    (("-t", "hv1", "-s", "start"), ["web2"]),  # both must hold
    (("web", "--state", "start"), ["web2"]),
    (("^(d.1|web1)$",), ["db1", "web1"]),
])
def test_vm_list_filters(cli: Callable[..., Any], vms: dict[str, str], args: tuple[str, ...],
                         expected: list[str]) -> None:
    _, rows = table(ok(cli("vm", "list", *args)))
    assert [r[0] for r in rows] == expected
    assert ok(cli("vm", "list", *args, "-r")) == ("".join(f"{n}\n" for n in expected) or "\n")


@pytest.mark.parametrize("fmt", ["json", "json-pretty"])
def test_vm_list_json_equals_library_data(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                                          fmt: str) -> None:
    data = json.loads(ok(cli("vm", "list", "--format", fmt)))
    assert data == list_vms(nodes)
    assert type(data[0]["memory"]) is int and data[0]["memory"] == 4096


def test_vm_list_bad_values(cli: Callable[..., Any], vms: dict[str, str]) -> None:
    failed(cli("vm", "list", "("), 2, "Error: Invalid limit '('")
    failed(cli("vm", "list", "--node", "a/b"), 2, "Error: Invalid node name 'a/b'")
    failed(cli("vm", "list", "--state", "running"), 2, "'running' is not one of start, restart")


def test_vm_list_round_trips_do_not_grow(cli: Callable[..., Any], nodes: Cluster) -> None:
    define(nodes, "vm00")
    start = nodes.store.round_trips
    ok(cli("vm", "list"))
    one = nodes.store.round_trips - start
    for i in range(1, 20):
        define(nodes, f"vm{i:02}")
    start = nodes.store.round_trips
    assert ok(cli("vm", "list")).count("\n") == 21
    assert nodes.store.round_trips - start == one <= 4  # the VMs in three, the networks in one


def test_vm_info(cli: Callable[..., Any], vms: dict[str, str]) -> None:
    text = ok(cli("vm", "info", "web2"))
    assert text.startswith("Virtual machine information:\n\n")
    assert info_fields(text) == {
        "UUID": vms["web2"], "Name": "web2", "Description": "", "Memory (M)": "1024", "vCPUs": "2",
        "Topology (S/C/T)": "1/2/1", "State": "start", "Current Node": "hv1", "Previous Node": "N/A",
        "Networks": "1001 1002 [invalid]",
    }
    assert ok(cli("vm", "info", vms["web2"].upper())) == text


@pytest.mark.parametrize("flag", ["-l", "--long"])
def test_vm_info_long(cli: Callable[..., Any], vms: dict[str, str], flag: str) -> None:
    text = ok(cli("vm", "info", flag, "web1"))
    fields = info_fields(text)
    assert {k: fields[k] for k in ("Emulator", "Type", "Arch", "Machine", "Features", "Networks")} == {
        "Emulator": "/usr/bin/kvm", "Type": "hvm", "Arch": "x86_64", "Machine": "pc-i440fx-2.7",
        "Features": "acpi apic", "Networks": "1001 cluster"}
    blocks = text.rstrip("\n").split("\n\n")[2:]
    assert [b.split("\n")[0] for b in blocks] == ["Disks:", "Interfaces:", "Controllers:"]
    assert table("\n".join(blocks[0].split("\n")[1:])) == (
        ["ID", "Type", "Name", "Dev", "Bus"], [["0", "rbd", "vms/web1_disk0", "sda", "scsi"]])
    assert table("\n".join(blocks[1].split("\n")[1:]))[1] == [
        ["0", "bridge", "vmbr1001", "virtio", "52:54:00:00:00:00"],
        ["1", "bridge", "brcluster", "virtio", "52:54:00:00:00:01"]]
    assert table("\n".join(blocks[2].split("\n")[1:])) == (["ID", "Type", "Model"], [["0", "usb", "none"]])


def test_vm_info_of_a_bare_vm(cli: Callable[..., Any], nodes: Cluster) -> None:
    uuid = new_uuid()
    define_vm(nodes, minimal_xml("bare", uuid), node="hv1")
    fields = info_fields(ok(cli("vm", "info", "-l", "bare")))
    assert fields["Memory (M)"] == "" and fields["Networks"] == "" and fields["Features"] == ""
    assert json.loads(ok(cli("vm", "info", "bare", "--format", "json")))[0]["memory"] is None


def test_vm_info_errors(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str]) -> None:
    refused(cli, nodes, 3, "Error: VM 'web' not found.", args=("vm", "info", "web"))
    unknown = new_uuid()
    refused(cli, nodes, 3, f"Error: VM '{unknown}' not found.", args=("vm", "info", unknown))
    refused(cli, nodes, 2, "Error: Invalid VM name 'a/b'", args=("vm", "info", "a/b"))
    failed(cli("vm", "info"), 2, "Missing argument 'VM'")


def test_vm_state_and_node(cli: Callable[..., Any], vms: dict[str, str]) -> None:
    assert table(ok(cli("vm", "state", "db1"))) == (["Name", "State"], [["db1", "start"]])
    assert table(ok(cli("vm", "node", "db1"))) == (["Name", "Node", "Previous node"], [["db1", "hv2"]])
    ok(cli("vm", "migrate", "db1", "--node", "hv3"))
    assert table(ok(cli("vm", "node", "db1"))) == (["Name", "Node", "Previous node"], [["db1", "hv3", "hv2"]])
    assert json.loads(ok(cli("vm", "node", "db1", "--format", "json"))) == {
        "name": "db1", "node": "hv3", "last_node": "hv2"}
    assert json.loads(ok(cli("vm", "state", "db1", "--format", "json"))) == {"name": "db1", "state": "migrate"}


# --- define and dump -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [vm_xml, pretty_xml, minimal_xml], ids=["single-line", "pretty", "minimal"])
def test_define_from_a_file_and_dump(cli: Callable[..., Any], nodes: Cluster, xml_file: Callable[[str], str],
                                     make: Callable[[str, str], str]) -> None:
    uuid = new_uuid()
    xml = make("web1", uuid)
    assert ok(cli("vm", "define", xml_file(xml))) == f"Defined VM 'web1' with UUID '{uuid}' on node 'hv1'.\n"
    assert field(nodes, uuid, "xml") == xml
    assert field(nodes, uuid, "state") == "stop"
    dumped = ok(cli("vm", "dump", "web1"))
    # The document as stored, plus at most the newline the terminal output ends with.
    assert dumped.startswith(xml) and dumped[len(xml):] in ("", "\n")
    assert ok(cli("vm", "dump", uuid)) == dumped


def test_define_from_stdin(cli: Callable[..., Any], nodes: Cluster) -> None:
    uuid = new_uuid()
    xml = pretty_xml("web1", uuid)
    result = cli("vm", "define", "-", "--target", "hv3", input=xml)
    assert ok(result) == f"Defined VM 'web1' with UUID '{uuid}' on node 'hv3'.\n"
    assert field(nodes, uuid, "xml") == xml


@pytest.mark.parametrize("args, expected, note", [
    (("-t", "hv2"), "hv2", ""),
    (("--node", "hv8"), "hv8", ""),  # an existing node is used whatever its state
    (("--target", "hv7"), "hv1", " (node 'hv7' does not exist; chosen by mem)"),
    (("-t", "a/b"), "hv1", " (node 'a/b' does not exist; chosen by mem)"),
    ((), "hv1", ""),
])
def test_define_node_choice(cli: Callable[..., Any], nodes: Cluster, xml_file: Callable[[str], str],
                            args: tuple[str, ...], expected: str, note: str) -> None:
    uuid = new_uuid()
    result = cli("vm", "define", xml_file(vm_xml("web1", uuid)), *args)
    assert ok(result) == f"Defined VM 'web1' with UUID '{uuid}' on node '{expected}'{note}.\n"
    assert field(nodes, uuid, "node") == expected


@pytest.mark.parametrize("selector", sorted(SELECTOR_CHOICE))
def test_define_selector(cli: Callable[..., Any], core: Cluster, add_node: Callable[..., str],
                         xml_file: Callable[[str], str], selector: str) -> None:
    for name, figures in SELECTOR_NODES.items():
        add_node(name, **figures)
    for vm, node in (("a", "hv1"), ("b", "hv2"), ("c", "hv3")):
        define(core, vm, node=node)
    uuid = new_uuid()
    ok(cli("vm", "define", xml_file(vm_xml("new", uuid)), "-s", selector))
    assert field(core, uuid, "node") == SELECTOR_CHOICE[selector]


@pytest.mark.parametrize("text, fragment", [
    ("<domain><name>x</name>", "Error: Invalid VM XML: "),
    ("<!DOCTYPE domain [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><domain><name>&x;</name></domain>",
     "a DOCTYPE is not allowed"),
    ("<domain><name>x</name></domain>", "it has no <uuid>"),
    ("<domain><name>x</name><uuid>12</uuid></domain>", "<uuid> '12' is not a valid UUID"),
    ("<domain><uuid>5b4a9a2e-2f7c-4d1b-9e55-0c8d1f2a3b4c</uuid></domain>", "it has no <name>"),
    ("<vm><name>x</name><uuid>5b4a9a2e-2f7c-4d1b-9e55-0c8d1f2a3b4d</uuid></vm>", "the root element is 'vm', not 'domain'"),
    ("", "the document is empty"),
])  # fixed UUIDs: test ids must not change from one collection to the next
def test_define_refuses_bad_xml(cli: Callable[..., Any], nodes: Cluster, xml_file: Callable[[str], str], text: str,
                                fragment: str) -> None:
    stderr = refused(cli, nodes, 2, fragment, args=("vm", "define", xml_file(text)))
    assert "root:" not in stderr
    refused(cli, nodes, 2, fragment, args=("vm", "define", "-"), input=text)


def test_define_refusals(cli: Callable[..., Any], nodes: Cluster, xml_file: Callable[[str], str],
                         tmp_path: Path) -> None:
    web1 = define(nodes, "web1")
    refused(cli, nodes, 4, f"Error: A VM with UUID '{web1}' already exists.",
            args=("vm", "define", xml_file(vm_xml("other", web1))))
    refused(cli, nodes, 4, f"Error: A VM named 'web1' already exists (UUID {web1}).",
            args=("vm", "define", xml_file(vm_xml("web1", new_uuid()))))
    refused(cli, nodes, 2, "No such file", args=("vm", "define", str(tmp_path / "missing.xml")))
    latin1 = tmp_path / "latin1.xml"
    latin1.write_bytes(f"<domain><name>caf\xe9</name><uuid>{new_uuid()}</uuid></domain>".encode("latin-1"))
    refused(cli, nodes, 2, "the file is not UTF-8 text", args=("vm", "define", str(latin1)))
    refused(cli, nodes, 2, "'most' is not one of mem, vcpus, load, vms",
            args=("vm", "define", xml_file(vm_xml("x", new_uuid())), "-s", "most"))
    failed(cli("vm", "define"), 2, "Missing argument 'FILE'")


def test_define_without_a_candidate_node(cli: Callable[..., Any], core: Cluster, add_node: Callable[..., str],
                                         xml_file: Callable[[str], str]) -> None:
    add_node("hv8", domain_state="flushed")
    add_node("hv9", daemon_state="dead")
    refused(cli, core, 4, "Error: No node can take the VM: hv8: it is flushed; hv9: its daemon is dead.",
            args=("vm", "define", xml_file(vm_xml("web1", new_uuid()))))


def test_dump_unknown(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str]) -> None:
    refused(cli, nodes, 3, "Error: VM 'nope' not found.", args=("vm", "dump", "nope"))


# --- modify --------------------------------------------------------------------------------------


def test_modify_from_a_file(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                            xml_file: Callable[[str], str]) -> None:
    xml = pretty_xml("web1", vms["web1"])
    assert ok(cli("vm", "modify", "web1", xml_file(xml))) == "Modified VM 'web1'.\n"
    assert field(nodes, vms["web1"], "xml") == xml
    assert field(nodes, vms["web1"], "rbdlist") == "vms/web1_data"
    # A running VM, from stdin, with and without a restart.
    xml = vm_xml("web2", vms["web2"], vcpu="4")
    assert ok(cli("vm", "modify", "web2", "-", input=xml)) == (
        "Modified VM 'web2'. Restart it for the change to take effect.\n")
    assert field(nodes, vms["web2"], "state") == "start"
    assert ok(cli("vm", "modify", vms["web2"], xml_file(xml), "--restart")) == "Modified VM 'web2'; restarting it.\n"
    assert field(nodes, vms["web2"], "state") == "restart"


def test_modify_renames(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                        xml_file: Callable[[str], str]) -> None:
    assert ok(cli("vm", "modify", "web1", xml_file(vm_xml("www", vms["web1"])))) == (
        "Modified VM 'www' (renamed from 'web1').\n")
    assert ok(cli("vm", "list", "-r")) == "db1\nweb2\nwww\n"
    refused(cli, nodes, 4, "Error: A VM named 'db1' already exists", args=(
        "vm", "modify", "www", xml_file(vm_xml("db1", vms["web1"]))))


def test_modify_refusals(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                         xml_file: Callable[[str], str]) -> None:
    other = new_uuid()
    refused(cli, nodes, 2, f"The new XML has UUID '{other}', but VM 'web1' has '{vms['web1']}'",
            args=("vm", "modify", "web1", xml_file(vm_xml("web1", other))))
    refused(cli, nodes, 2, "a DOCTYPE is not allowed",
            args=("vm", "modify", "web1", xml_file('<!DOCTYPE domain><domain/>')))
    refused(cli, nodes, 3, "Error: VM 'nope' not found.",
            args=("vm", "modify", "nope", xml_file(vm_xml("nope", new_uuid()))))
    refused(cli, nodes, 2, "Give FILE (or - for stdin) or --editor.", args=("vm", "modify", "web1"))
    refused(cli, nodes, 2, "Give either FILE or --editor, not both.",
            args=("vm", "modify", "web1", xml_file(vm_xml("web1", vms["web1"])), "--editor"))


@pytest.fixture
def editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Make $EDITOR a small script: shell commands (the file to edit is "$1"), or Python
    (``python=True``; the file is sys.argv[1])."""

    def make(body: str, python: bool = False) -> Path:
        script = tmp_path / f"editor-{new_uuid()[:8]}"
        head = f"#!{sys.executable}\n" if python else "#!/bin/sh\nset -e\n"
        script.write_text(f"{head}{body}\n", encoding="utf-8")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("EDITOR", str(script))
        return script

    return make


def test_modify_with_the_editor(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                                editor: Callable[..., Path]) -> None:
    editor("sed -i 's|<vcpu>2</vcpu>|<vcpu>6</vcpu>|' \"$1\"")
    before = field(nodes, vms["web1"], "xml")
    result = cli("vm", "modify", "web1", "--editor", input="y\n")
    out = ok(result)
    lines = out.split("\n")
    assert lines[0:2] == ["--- current", "+++ new"]
    assert lines[2].startswith("@@")
    assert lines[3] == "-" + before
    assert lines[4] == "+" + before.replace("<vcpu>2</vcpu>", "<vcpu>6</vcpu>")
    assert lines[5] == "Write the modifications to the cluster? [y/N]: y"
    assert lines[6:] == ["Modified VM 'web1'.", ""]
    assert field(nodes, vms["web1"], "xml") == before.replace("<vcpu>2</vcpu>", "<vcpu>6</vcpu>")
    assert ANSI not in out


def test_modify_with_the_editor_pretty_document(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                                                editor: Callable[..., Path]) -> None:
    """A Python script as the editor, on a multi-line document; --restart restarts a running VM."""
    pretty = pretty_xml("web2", vms["web2"])
    ok(cli("vm", "modify", "web2", "-", input=pretty))
    editor("import sys\n"
           "path = sys.argv[1]\n"
           "text = open(path, encoding='utf-8').read()\n"
           "open(path, 'w', encoding='utf-8').write(text.replace(\"'static'>4<\", \"'static'>2<\"))", python=True)
    out = ok(cli("vm", "modify", "web2", "-e", "-r", input="y\n"))
    assert "-  <vcpu placement='static'>4</vcpu>\n+  <vcpu placement='static'>2</vcpu>\n" in out
    assert "\n   <memory unit='KiB'>2097152</memory>\n" in out  # unified diff context
    assert out.endswith("Modified VM 'web2'; restarting it.\n")
    assert field(nodes, vms["web2"], "xml") == pretty.replace("'static'>4", "'static'>2")
    assert field(nodes, vms["web2"], "state") == "restart"


def test_modify_with_the_editor_answer_no(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                                          editor: Callable[..., Path]) -> None:
    editor("sed -i 's|<vcpu>2</vcpu>|<vcpu>6</vcpu>|' \"$1\"")
    before = snapshot(nodes)
    result = cli("vm", "modify", "web1", "--editor", input="n\n")
    assert result.exit_code == 1, result.output
    assert result.stderr == "Aborted!\n"
    assert "+" + field(nodes, vms["web1"], "xml").replace("<vcpu>2<", "<vcpu>6<") in result.stdout
    assert result.stdout.endswith("Write the modifications to the cluster? [y/N]: n\n")
    assert snapshot(nodes) == before


@pytest.mark.parametrize("body", ["true", "touch \"$1\"", "cat \"$1\" > \"$1.tmp\" && mv \"$1.tmp\" \"$1\""])
def test_modify_with_the_editor_unchanged(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                                          editor: Callable[..., Path], body: str) -> None:
    editor(body)
    before = snapshot(nodes)
    assert ok(cli("vm", "modify", "web1", "--editor")) == "Aborting with no modifications.\n"
    assert snapshot(nodes) == before


def test_modify_with_the_editor_renames(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITOR", "sed -i 's|<name>web1</name>|<name>www</name>|'")  # an editor with arguments
    out = ok(cli("vm", "modify", "web1", "-e", input="y\n"))
    assert out.endswith("Modified VM 'www' (renamed from 'web1').\n")
    assert ok(cli("vm", "list", "-r")) == "db1\nweb2\nwww\n"


def test_modify_with_the_editor_failures(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str],
                                         editor: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    editor("exit 3")
    refused(cli, nodes, 1, "Error: The editor exited with status 3; nothing was changed.",
            args=("vm", "modify", "web1", "-e"))
    # The editor runs without a shell: no command smuggled in through $EDITOR.
    monkeypatch.setenv("EDITOR", f"true; touch {tmp_path}/pwned")
    refused(cli, nodes, 1, "Error: Cannot run the editor 'true;'", args=("vm", "modify", "web1", "-e"))
    assert not (tmp_path / "pwned").exists()
    # An unknown VM fails before any editor runs.
    editor(f"touch {tmp_path}/ran")
    refused(cli, nodes, 3, "Error: VM 'nope' not found.", args=("vm", "modify", "nope", "-e"))
    assert not (tmp_path / "ran").exists()
    # What the editor saved is checked like any other document, after the confirmation.
    editor("printf '<domain><name>web1</name></domain>' > \"$1\"")
    stderr = refused(cli, nodes, 2, "Error: Invalid VM XML: it has no <uuid>", args=("vm", "modify", "web1", "-e"),
                     input="y\n")
    assert stderr.endswith("\n")


# --- undefine and remove -------------------------------------------------------------------------


def test_undefine_asks_nothing(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str]) -> None:
    assert ok(cli("vm", "undefine", "web2")) == f"Undefined VM 'web2' ({vms['web2']}).\n"
    assert ok(cli("vm", "list", "-r")) == "db1\nweb1\n"
    refused(cli, nodes, 3, "Error: VM 'web2' not found.", args=("vm", "undefine", "web2"))


def test_remove_asks_first(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str]) -> None:
    before = snapshot(nodes)
    result = cli("vm", "remove", "web1", input="n\n")
    assert (result.exit_code, result.stderr) == (1, "Aborted!\n"), result.output
    assert result.stdout == "Really remove web1? This cannot be undone. [y/N]: n\n"
    assert snapshot(nodes) == before
    # Confirmed (or --yes): refused, as its disk is no volume pvc knows; nothing removed.
    stderr = refused(cli, nodes, 4, "Error: Cannot remove the disks of VM 'web1'", "is not a volume pvc knows",
                     args=("vm", "remove", "web1"), input="y\n")
    assert stderr.count("Error: ") == 1
    for flag in ("-y", "--yes"):
        refused(cli, nodes, 4, "is not a volume pvc knows", args=("vm", "remove", flag, "web1"))
    refused(cli, nodes, 3, "Error: VM 'nope' not found.", args=("vm", "remove", "--yes", "nope"))


# --- state and node --------------------------------------------------------------------------------


def test_state_commands(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str]) -> None:
    uuid = vms["web1"]
    assert ok(cli("vm", "start", "web1")) == "Starting VM 'web1'.\n"
    assert field(nodes, uuid, "state") == "start"
    assert ok(cli("vm", "start", "web1")) == "VM 'web1' is already in state 'start'; nothing changed.\n"
    assert ok(cli("vm", "restart", "web1")) == "Restarting VM 'web1'.\n"
    agent_writes_state(nodes, uuid)
    assert ok(cli("vm", "shutdown", uuid)) == "Shutting down VM 'web1'.\n"
    agent_writes_state(nodes, uuid, "stop")
    assert ok(cli("vm", "stop", "web1")) == "VM 'web1' is already in state 'stop'; nothing changed.\n"
    assert ok(cli("vm", "shutdown", "web1")) == "VM 'web1' is already in state 'stop'; nothing changed.\n"
    refused(cli, nodes, 4, "Error: VM 'web1' is not running (its state is 'stop'); it cannot restart.",
            args=("vm", "restart", "web1"))
    agent_writes_state(nodes, uuid, "failed")
    refused(cli, nodes, 4, "Error: VM 'web1' is not running (its state is 'failed'); it cannot shutdown.",
            args=("vm", "shutdown", "web1"))
    ok(cli("vm", "start", "web1"))
    assert ok(cli("vm", "stop", "web1")) == "Forcibly stopping VM 'web1'.\n"
    for verb in ("start", "stop", "shutdown", "restart"):
        refused(cli, nodes, 3, "Error: VM 'nope' not found.", args=("vm", verb, "nope"))


def test_migrate_move_unmigrate(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str]) -> None:
    uuid = vms["web2"]  # running on hv1
    assert ok(cli("vm", "migrate", "web2")) == "Migrating VM 'web2' to node 'hv2'.\n"
    refused(cli, nodes, 4, "Error: VM 'web2' is busy (state 'migrate')", args=("vm", "migrate", "web2", "-t", "hv3"))
    refused(cli, nodes, 4, "is being migrated; ask again", args=("vm", "restart", "web2"))
    agent_writes_state(nodes, uuid)
    refused(cli, nodes, 4, "Error: VM 'web2' has been migrated before (from 'hv1')",
            args=("vm", "migrate", "web2", "-t", "hv3"))
    assert ok(cli("vm", "migrate", "web2", "-t", "hv3", "--force")) == "Migrating VM 'web2' to node 'hv3'.\n"
    assert (field(nodes, uuid, "node"), field(nodes, uuid, "lastnode")) == ("hv3", "hv1")
    agent_writes_state(nodes, uuid)
    assert ok(cli("vm", "unmigrate", "web2")) == "Unmigrating VM 'web2' back to node 'hv1'.\n"
    assert (field(nodes, uuid, "state"), field(nodes, uuid, "node"), field(nodes, uuid, "lastnode")) == (
        "migrate", "hv1", "")
    agent_writes_state(nodes, uuid)
    refused(cli, nodes, 4, "Error: VM 'web2' has not been migrated", args=("vm", "unmigrate", "web2"))
    assert ok(cli("vm", "move", "web2", "--target", "hv3")) == "Permanently moving VM 'web2' to node 'hv3'.\n"
    assert (field(nodes, uuid, "state"), field(nodes, uuid, "node"), field(nodes, uuid, "lastnode")) == (
        "migrate", "hv3", "")
    agent_writes_state(nodes, uuid)
    # A stopped VM is re-homed, not started.
    assert ok(cli("vm", "move", "web1", "-t", "hv3")) == (
        "Permanently moving VM 'web1' to node 'hv3'; it is not running ('stop'), so it is only re-homed.\n")
    assert (field(nodes, vms["web1"], "state"), field(nodes, vms["web1"], "node")) == ("stop", "hv3")


def test_node_command_refusals(cli: Callable[..., Any], nodes: Cluster, vms: dict[str, str]) -> None:
    refused(cli, nodes, 4, "Error: The VM is already on node 'hv1'.", args=("vm", "migrate", "web2", "-t", "hv1"))
    refused(cli, nodes, 4, "Error: Node 'hv8' cannot take a running VM", args=("vm", "move", "web2", "-t", "hv8"))
    refused(cli, nodes, 4, "Error: Node 'hv9' cannot take a running VM", args=("vm", "migrate", "web2", "-t", "hv9"))
    refused(cli, nodes, 2, "'cpu' is not one of mem, vcpus, load, vms", args=("vm", "migrate", "web2", "-s", "cpu"))
    refused(cli, nodes, 2, "No such option '--force'", args=("vm", "move", "web2", "--force"))
    refused(cli, nodes, 2, "No such option '-t'", args=("vm", "unmigrate", "web2", "-t", "hv3"))
    for verb in ("migrate", "move", "unmigrate"):
        refused(cli, nodes, 3, "Error: VM 'nope' not found.", args=("vm", verb, "nope"))
