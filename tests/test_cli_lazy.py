"""The lazy command tree and the cheap list path (issue 10, item 4).

- The generated index of the top-level commands (pvc/cli/groups.py) is what the declarations
  give, and the lazy tree is the tree built at once from every declaration: same commands, same
  help, same parameters.
- `pvc --help`, completing `pvc <TAB>` and `pvc vm list` import only what they use (asserted on
  the modules a fresh process has loaded; no timing is asserted here: benchmarks/bench_cli.py
  measures).
- Lists read each VM's XML in one pass (vm_xml.read_facts), with exactly the facts the lxml
  reader gives, and keep them in a bounded, thread-safe cache by key path and version.
- Tables are tabulate's output, made without tabulate for the cells views give.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pvc.cli import cli
from pvc.cli import groups
from pvc.cli.build import full_tree, index, index_source
from pvc.cli.render import COLOURS, Paint, plain_table, table
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument
from pvc.lib.vm_xml import ParsedCache, read, read_facts

ROOT = Path(__file__).resolve().parent.parent
#: Never loaded by listing or completing commands, nor by `pvc vm list` on the embedded store.
HEAVY = ("kazoo", "lxml", "bottle", "cheroot", "regex", "libvirt", "tabulate")


# --- the index and the lazy tree -----------------------------------------------------------------


def test_index_is_current() -> None:
    text = (ROOT / "pvc" / "cli" / "groups.py").read_text(encoding="utf-8")
    block = text[text.index("# BEGIN GENERATED INDEX\n"):text.index("# END GENERATED INDEX\n") + 22]
    assert groups.INDEX == index() and block == index_source(), (
        "the index in pvc/cli/groups.py is stale (a group or top-level command was added, renamed or "
        "documented anew): run scripts/gen-completions and commit the result")
    assert {"node", "vm", "network", "init", "serve", "agent"} <= set(groups.INDEX)


def reference_root() -> click.Group:
    """The root as it was before the tree was lazy: every command built at once, under the same
    options and help as `pvc`."""
    return click.Group("pvc", commands=full_tree().commands, params=cli.params, help=cli.help,
                       callback=cli.callback, context_settings=cli.context_settings)


def paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name in sorted(group.commands):
        command = group.commands[name]
        out.append(prefix + (name,))
        if isinstance(command, click.Group):
            out += paths(command, prefix + (name,))
    return out


def test_lazy_tree_is_the_full_tree() -> None:
    full = reference_root()
    assert paths(cli) == paths(full)
    # With the root's context settings: Click keeps the help option it makes for a command.
    ctx = click.Context(cli, info_name="pvc", **cli.context_settings)
    ref_ctx = click.Context(full, info_name="pvc", **cli.context_settings)
    assert cli.to_info_dict(ctx)["commands"] == full.to_info_dict(ref_ctx)["commands"]


def test_every_help_is_the_full_trees() -> None:
    """`pvc ... --help` of every command and group, lazy or not, prints the same (the root's
    listing included: every group and command with its one-line help)."""
    runner = CliRunner()
    full = reference_root()
    for path in [(), *paths(full)]:
        args = [*path, "--help"]
        lazy, eager = runner.invoke(cli, args, prog_name="pvc"), runner.invoke(full, args, prog_name="pvc")
        assert (lazy.exit_code, lazy.output) == (eager.exit_code, eager.output), " ".join(path)
    listing = runner.invoke(cli, ["--help"], prog_name="pvc").output.split("Commands:\n", 1)[1]
    assert [line.split()[0] for line in listing.splitlines()] == sorted(
        name for name, command in full.commands.items() if not command.hidden)


@pytest.mark.parametrize("missing", ["vm", "node", "init"])  # with and without hand-written commands
def test_a_command_missing_from_the_index_still_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      missing: str) -> None:
    """A group or command declared after the index was generated works (only the listing lacks it
    until scripts/gen-completions runs, which test_index_is_current demands)."""
    monkeypatch.delitem(groups.INDEX, missing)
    root = groups.LazyRoot("pvc", params=cli.params, callback=cli.callback)
    assert missing not in root.list_commands(click.Context(root))
    args = {"vm": ["vm", "list", "--format", "json"], "node": ["node", "list", "--format", "json"],
            "init": ["init", "--help"]}[missing]
    with Cluster(Settings(store_path=str(tmp_path / "pvc.sqlite"))) as core:
        result = CliRunner().invoke(root, args, obj=core)
        assert result.exit_code == 0, result.output
        if missing == "init":
            assert result.output.startswith("Usage: pvc init [OPTIONS]")
        else:
            assert result.output == "[]\n"
        unknown = CliRunner().invoke(root, ["vmm", "list"], obj=core)
        assert unknown.exit_code == 2 and "No such command 'vmm'" in unknown.output


def test_a_group_is_built_when_first_used() -> None:
    root = groups.LazyRoot("pvc", params=cli.params, callback=cli.callback)
    commands = root.commands
    assert isinstance(commands, groups.TopCommands)
    assert [commands.made(n) for n in groups.INDEX] == [None] * len(groups.INDEX)
    vm = root.get_command(click.Context(root), "vm")
    assert isinstance(vm, click.Group) and not vm.commands.loaded  # type: ignore[attr-defined]
    assert "list" in vm.list_commands(click.Context(vm))
    assert vm.commands.loaded  # type: ignore[attr-defined]


# --- what a fresh process imports ----------------------------------------------------------------

PROBE = """
import json, os, sys
sys.argv = ["pvc"] + json.loads(sys.argv[1])
code = None
try:
    from pvc.cli import main
    main()
except SystemExit as e:
    code = e.code
sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\\n")
"""


def run_probe(args: list[str], env: dict[str, str]) -> tuple[Any, set[str], str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PVC_", "_PVC_", "COMP_"))}
    environment.update(env)
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          env=environment, timeout=120)
    report = json.loads(proc.stderr.rsplit("PROBE ", 1)[1])
    return report["code"], set(report["modules"]), proc.stdout


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def ours(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


def test_help_imports_no_operation_module(tmp_path: Path) -> None:
    code, modules, out = run_probe(["--help"], {"XDG_DATA_HOME": str(tmp_path)})
    assert code in (0, None) and "Commands:" in out
    assert "pvc.cli" in modules and "click" in modules  # the probe really ran the command
    assert heavy(modules) == [] and "yaml" not in modules
    assert ours(modules, "pvc.lib") == [] and ours(modules, "pvc.cli.commands") == []
    assert "pvc.cli.build" not in modules and "pvc.cli.views" not in modules
    for name, (_, _, _, _, hidden) in groups.INDEX.items():
        assert (f"\n  {name} " in out) != hidden, name


def test_completing_top_level_names_imports_no_operation_module(tmp_path: Path) -> None:
    code, modules, out = run_probe([], {"XDG_DATA_HOME": str(tmp_path), "_PVC_COMPLETE": "zsh_complete",
                                        "COMP_WORDS": "pvc ", "COMP_CWORD": "1"})
    assert code in (0, None)
    lines = out.splitlines()
    offered = {lines[i + 1]: lines[i + 2] for i in range(0, len(lines) - 2, 3) if lines[i] == "plain"}
    assert set(offered) == {n for n, entry in groups.INDEX.items() if not entry[4]}
    assert offered["init"] == "Create the cluster's root tree in the store."
    assert offered["node"].startswith("Manage the nodes of the cluster")
    assert heavy(modules) == [] and ours(modules, "pvc.lib") == [] and "pvc.cli.build" not in modules


def define(core: Cluster, name: str, i: int) -> None:
    from pvc.lib.ops.vm import define_vm

    define_vm(core, f"<domain type='kvm'><name>{name}</name><uuid>{uuid.UUID(int=i + 1)}</uuid>"
                    f"<memory unit='GiB'>2</memory><vcpu>2</vcpu><devices><interface type='bridge'>"
                    f"<source bridge='vmbr100'/></interface></devices></domain>")


def test_vm_list_loads_neither_lxml_nor_tabulate(tmp_path: Path) -> None:
    """`pvc vm list` on the embedded store: the vm commands only, one-pass XML reading, our own table."""
    data = tmp_path / "data"
    with Cluster(Settings(store_path=str(data / "pvc" / "pvc.sqlite"))) as core:
        from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state

        register_node(core, "hv1", NodeFacts(4, "6.1.0-amd64", "GNU/Linux", "x86_64"))
        publish_figures(core, "hv1", NodeFigures(memtotal=1000), daemon_state="run")
        report_domain_state(core, "hv1", "ready")
        for i, name in enumerate(("web1", "db1")):
            define(core, name, i)
    code, modules, out = run_probe(["vm", "list"], {"XDG_DATA_HOME": str(data)})
    assert code in (0, None), out
    lines = out.splitlines()
    assert lines[0].split() == ["Name", "UUID", "State", "Networks", "RAM", "(M)", "vCPUs", "Node", "Migrated"]
    assert [line.split()[0] for line in lines[1:]] == ["db1", "web1"]
    assert lines[1].split()[2:6] == ["stop", "100", "2048", "2"]
    assert heavy(modules) == []
    assert "pvc.lib.vm_records" in modules and "pvc.cli.commands.serve" not in modules


# --- one-pass XML reading ------------------------------------------------------------------------

QEMU = "http://libvirt.org/schemas/domain/qemu/1.0"


def random_domain(rng: random.Random) -> str:
    """A domain document with a random choice of the parts read and of the ways XML can spell
    them: comments and processing instructions inside texts, CDATA, entities, namespaces,
    repeated and missing elements, odd units and whitespace."""

    def maybe(text: str, p: float = 0.7) -> str:
        return text if rng.random() < p else ""

    def text(value: str) -> str:
        return rng.choice([value, f" {value}\n", f"<![CDATA[{value}]]>", value.replace("e", "&#101;"),
                           f"{value}<!-- note -->tail", f"{value[:1]}<?pi x?>{value[1:]}", "", "  ",
                           value.replace("b", "&amp;b")])

    def attrs(*pairs: tuple[str, str]) -> str:
        chosen = [f"{k}='{v}'" for k, v in pairs if rng.random() < 0.8]
        rng.shuffle(chosen)
        return (" " + " ".join(chosen)) if chosen else ""

    parts = [maybe(f"<name>{text('web' + str(rng.randrange(100)))}</name>", 0.9),
             maybe(f"<uuid>{text(str(uuid.UUID(int=rng.getrandbits(128))))}</uuid>"),
             maybe(f"<description>{text('a web server')}</description>"),
             maybe(f"<memory{attrs(('unit', rng.choice(['KiB', 'MiB', 'G', 'b', 'bogus', 'kb'])))}>"
                   f"{text(str(rng.choice([1, 1024, 1500, 4194304, -3, 0])))}</memory>"),
             maybe(f"<vcpu placement='static'>{text(str(rng.choice([1, 2, 0, 16])))}</vcpu>"),
             maybe(f"<os><type{attrs(('arch', 'x86_64'), ('machine', 'pc'))}>{text('hvm')}</type>"
                   f"{maybe('<type>other</type>', 0.3)}</os>"),
             maybe(f"<cpu mode='host'><topology{attrs(('sockets', '1'), ('cores', '2'), ('threads', '1'))}/></cpu>"),
             maybe("<features><acpi/><!-- c --><apic/><qemu:x xmlns:qemu='%s'/><?pi?></features>" % QEMU),
             maybe("<features><pae/></features>", 0.2)]
    devices = []
    for _ in range(rng.randrange(5)):
        kind = rng.choice(["bridge", "network", "direct", None])
        source = rng.choice([f"<source{attrs(('bridge', 'vmbr1' + str(rng.randrange(9))), ('network', 'default'))}/>",
                             f"<source xmlns:q='{QEMU}' q:x='1'/>", "", "<source/>"])
        kind_attr = attrs(("type", kind)) if kind else ""
        mac, model, model2 = maybe("<mac address='52:54:00:00:00:01'/>"), maybe("<model type='virtio'/>"), \
            maybe("<model type='e1000'/>", 0.2)
        devices.append(f"<interface{kind_attr}>{mac}{source}{model}{model2}</interface>")
    for d in range(rng.randrange(4)):
        kind = rng.choice(["network", "file", "block", "volume", "nvme"])
        source_attrs = attrs(("protocol", "rbd"), ("name", f"vms/disk{d}"), ("file", "/x.img"), ("dev", "/dev/sda"),
                             ("pool", "p"), ("volume", "v"))
        source = rng.choice([f"<source{source_attrs}/>", ""])
        target = maybe(f"<target dev='sd{d}' bus='scsi'/>")
        devices.append(f"<disk type='{kind}' device='disk'>{source}{target}</disk>")
    devices += [maybe("<controller type='usb' model='piix3-uhci'/>"), maybe("<controller index='0'/>"),
                maybe("<console type='pty'><target port='0'/></console>"),
                maybe(f"<emulator>{text('/usr/bin/kvm')}</emulator>")]
    rng.shuffle(devices)
    parts.append(maybe(f"<devices>{''.join(devices)}</devices>", 0.9))
    parts.append(maybe(f"<qemu:commandline xmlns:qemu='{QEMU}'><qemu:arg value='-x'/></qemu:commandline>", 0.3))
    rng.shuffle(parts)
    head = rng.choice(["", "<?xml version='1.0'?>\n", "<?xml version='1.0' encoding='UTF-8'?>", "\ufeff", "<!-- hi -->"])
    return f"{head}<domain type='kvm'>{''.join(parts)}</domain>\n"


ODD_DOCUMENTS = [
    "", "   ", "<domain/>", "<domain>", "<domain></domain>junk", "<other><name>x</name></other>",
    "<domain xmlns='urn:x'><name>x</name></domain>", "<?xml version='1.0' encoding='latin-1'?><domain/>",
    "<?xml version='1.1'?><domain><name>x</name></domain>", "<!DOCTYPE domain><domain/>",
    "<domain><name>a&unknown;</name></domain>", "<domain><name>\ud800</name></domain>",
    "<domain><q:name xmlns:q='urn:q'>x</q:name><name>y</name></domain>", "<domain><p:x/></domain>",
    "<domain><name>x</name><name>y</name><memory>1</memory><memory unit='G'>2</memory></domain>",
    "<domain><devices><interface type='bridge'><source bridge='a'/><source bridge='b'/></interface>"
    "</devices><devices><interface type='bridge'><source bridge='c'/></interface><emulator>e</emulator>"
    "</devices></domain>",
    "<domain><devices><disk type='network'><target dev='a'/><source protocol='rbd' name='p/v'/>"
    "<target dev='b'/></disk></devices></domain>",
]


def outcome(reader: Any, text: str) -> Any:
    try:
        return reader(text)
    except InvalidArgument as e:
        return ("InvalidArgument", e.message)


def test_one_pass_reading_gives_what_lxml_gives() -> None:
    rng = random.Random(10)
    documents = [random_domain(rng) for _ in range(600)] + ODD_DOCUMENTS
    documents += [p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples").glob("*.xml"))]
    read_ok = 0
    for text in documents:
        expected = outcome(read, text)
        assert outcome(read_facts, text) == expected, text
        read_ok += not isinstance(expected, tuple)
    assert read_ok > 500  # most documents were read, not refused


def test_parsed_cache_by_path_version_and_text() -> None:
    cache = ParsedCache(limit=3)
    doc = "<domain><name>a</name><memory unit='MiB'>64</memory></domain>"
    first = cache.get("/domains/x/xml", 0, doc)
    assert first.name == "a" and first.facts["memory"] == 64 and cache.parses == 1
    assert cache.get("/domains/x/xml", 0, doc) is first and cache.parses == 1
    assert cache.get("/domains/x/xml", 1, doc) is not first and cache.parses == 2  # a new version
    renamed = cache.get("/domains/x/xml", 1, doc.replace(">a<", ">b<"))  # re-created: same version, new text
    assert renamed.name == "b" and cache.parses == 3
    for i in range(10):
        cache.get(f"/domains/{i}/xml", 0, doc)
    assert len(cache) == 3  # bounded: the oldest went
    assert cache.get("/domains/9/xml", 0, doc).name == "a" and cache.parses == 13


def test_parsed_cache_from_many_threads() -> None:
    cache = ParsedCache(limit=50)
    docs = {f"/domains/{i}/xml": f"<domain><name>vm{i}</name></domain>" for i in range(80)}
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(400):
            key = rng.choice(list(docs))
            if cache.get(key, 0, docs[key]).name != "vm" + key.split("/")[2]:
                errors.append(key)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and len(cache) <= 50


# --- tables --------------------------------------------------------------------------------------

painted = st.tuples(st.text(max_size=8), st.lists(st.sampled_from(list(COLOURS)), max_size=2)).map(
    lambda t: Paint(True)(t[0], *t[1]))
cells = st.one_of(st.none(), st.integers(-10**6, 10**12), st.floats(), st.booleans(), st.text(max_size=10),
                  st.text(alphabet="abc -_.:/", max_size=10), painted)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(
    st.lists(st.one_of(st.text(alphabet="ABC x", max_size=6), painted), min_size=n, max_size=n),
    st.lists(st.lists(cells, min_size=n, max_size=n), max_size=5))))
def test_plain_table_is_tabulates(table_: tuple[list[Any], list[list[Any]]]) -> None:
    from tabulate import tabulate

    headers, rows = table_
    fast = plain_table(headers, rows)
    if fast is not None:
        assert fast == tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True)


def test_views_cells_take_the_fast_path() -> None:
    paint = Paint(True)
    headers = [paint(h, "bold") for h in ("Name", "RAM (M)", "Node", "Migrated")]
    rows = [["web1", 2048, paint("start", "green"), "no"], ["db1", None, "", "from hv2"], ["x", 1.5, "hv1", "no"]]
    from tabulate import tabulate

    assert plain_table(headers, rows) == tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True)
    assert table(["Name", "Note"], [["a", "two\nlines"]], Paint(False)) == tabulate(
        [["a", "two\nlines"]], headers=["Name", "Note"], tablefmt="plain", disable_numparse=True)  # falls back
