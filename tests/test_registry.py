"""Registry parity (STYLE.md practice 13): each operation is declared once, and the CLI commands and
HTTP routes derived from it cover it exactly, with help everywhere and the same value converters."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
from click.testing import CliRunner

from pvc.cli import cli
from pvc.cli.groups import GROUPS
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument
from pvc.lib.registry import FALSE_WORDS, OPERATIONS, TRUE_WORDS, Operation, Param, convert, load_all, operation
from pvc.server.routes import PREFIX, route_table

OPS = load_all()

#: Routes of create_app that are not operations: the manual's general endpoints.
NON_OPERATION_ROUTES = {
    ("GET", "/api/v1"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/login"),
    ("GET", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/vm/<vm>"),  # the manual's "todo v0.6": 501
}

#: Commands of `pvc` that are not operations (STYLE.md 2A.5).
NON_OPERATION_COMMANDS = {("serve",), ("agent",), ("network", "lease", "hook")}

#: The whole route table, method + path → operation. A new route is added here on purpose.
ROUTES = {
    ("GET", "/api/v1/node"): "node.list",
    ("GET", "/api/v1/node/<node>"): "node.info",
    ("GET", "/api/v1/node/<node>/daemon-state"): "node.daemon-state",
    ("GET", "/api/v1/node/<node>/coordinator-state"): "node.coordinator-state",
    ("POST", "/api/v1/node/<node>/coordinator-state"): "node.set-coordinator-state",
    ("GET", "/api/v1/node/<node>/domain-state"): "node.domain-state",
    ("POST", "/api/v1/node/<node>/domain-state"): "node.set-domain-state",
    ("GET", "/api/v1/vm"): "vm.list",
    ("POST", "/api/v1/vm"): "vm.define",
    ("GET", "/api/v1/vm/<vm>"): "vm.info",
    ("PUT", "/api/v1/vm/<vm>"): "vm.modify",
    ("DELETE", "/api/v1/vm/<vm>"): "vm.undefine",
    ("GET", "/api/v1/vm/<vm>/state"): "vm.state",
    ("POST", "/api/v1/vm/<vm>/state"): "vm.set-state",
    ("GET", "/api/v1/vm/<vm>/node"): "vm.node",
    ("POST", "/api/v1/vm/<vm>/node"): "vm.set-node",
    ("GET", "/api/v1/vm/<vm>/dump"): "vm.dump",
    ("GET", "/api/v1/network/<network>/acl"): "network.acl.list",
    ("POST", "/api/v1/network/<network>/acl"): "network.acl.add",
    ("GET", "/api/v1/network/<network>/acl/<acl>"): "network.acl.info",
    ("DELETE", "/api/v1/network/<network>/acl/<acl>"): "network.acl.remove",
    ("GET", "/api/v1/network"): "network.list",
    ("POST", "/api/v1/network"): "network.add",
    ("GET", "/api/v1/network/<network>"): "network.info",
    ("PUT", "/api/v1/network/<network>"): "network.modify",
    ("DELETE", "/api/v1/network/<network>"): "network.remove",
    ("GET", "/api/v1/network/<network>/lease"): "network.lease.list",
    ("POST", "/api/v1/network/<network>/lease"): "network.lease.add",
    ("GET", "/api/v1/network/<network>/lease/<lease>"): "network.lease.info",
    ("GET", "/api/v1/network/<network>/dhcp/<lease>"): "network.lease.info",
    ("DELETE", "/api/v1/network/<network>/lease/<lease>"): "network.lease.remove",
    ("DELETE", "/api/v1/network/<network>/dhcp/<lease>"): "network.lease.remove",
    ("GET", "/api/v1/storage"): "storage.info",
    ("GET", "/api/v1/storage/ceph"): "storage.ceph.status",
    ("GET", "/api/v1/storage/ceph/status"): "storage.ceph.status",
    ("GET", "/api/v1/storage/ceph/df"): "storage.ceph.df",
    ("POST", "/api/v1/storage/ceph/cluster-option"): "storage.ceph.cluster-option.change",
    ("GET", "/api/v1/storage/ceph/osd"): "storage.ceph.osd.list",
    ("POST", "/api/v1/storage/ceph/osd"): "storage.ceph.osd.add",
    ("GET", "/api/v1/storage/ceph/osd/<osd>"): "storage.ceph.osd.info",
    ("DELETE", "/api/v1/storage/ceph/osd/<osd>"): "storage.ceph.osd.remove",
    ("GET", "/api/v1/storage/ceph/osd/<osd>/state"): "storage.ceph.osd.state",
    ("POST", "/api/v1/storage/ceph/osd/<osd>/state"): "storage.ceph.osd.set-state",
    ("GET", "/api/v1/storage/ceph/pool"): "storage.ceph.pool.list",
    ("POST", "/api/v1/storage/ceph/pool"): "storage.ceph.pool.add",
    ("GET", "/api/v1/storage/ceph/pool/<pool>"): "storage.ceph.pool.info",
    ("DELETE", "/api/v1/storage/ceph/pool/<pool>"): "storage.ceph.pool.remove",
    ("GET", "/api/v1/storage/ceph/volume"): "storage.ceph.volume.list",
    ("POST", "/api/v1/storage/ceph/volume"): "storage.ceph.volume.add",
    ("GET", "/api/v1/storage/ceph/volume/<pool>/<volume>"): "storage.ceph.volume.info",
    ("PUT", "/api/v1/storage/ceph/volume/<pool>/<volume>"): "storage.ceph.volume.modify",
    ("DELETE", "/api/v1/storage/ceph/volume/<pool>/<volume>"): "storage.ceph.volume.remove",
    ("GET", "/api/v1/storage/ceph/volume/snapshot"): "storage.ceph.volume.snapshot.list",
    ("POST", "/api/v1/storage/ceph/volume/snapshot"): "storage.ceph.volume.snapshot.add",
    ("GET", "/api/v1/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>"): "storage.ceph.volume.snapshot.info",
    ("PUT", "/api/v1/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>"): "storage.ceph.volume.snapshot.rename",
    ("DELETE", "/api/v1/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>"): "storage.ceph.volume.snapshot.remove",
}

#: Operations declared cli=False whose command is written by hand (pvc/cli/commands/).
HAND_WRITTEN = {"vm.modify": ("vm", "modify")}

#: Options the CLI adds to operation commands by itself (output, waiting, confirmation, raw names).
CLI_EXTRAS = {"_format", "_long", "_raw", "_wait", "_timeout", "_yes", "help"}


def op_ids(op: Operation) -> str:
    return op.name


ALL = pytest.mark.parametrize("op", list(OPS.values()), ids=op_ids)


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command of the tree with its path, groups included."""
    for name, command in group.commands.items():
        path = prefix + (name,)
        yield path, command
        if isinstance(command, click.Group):
            yield from walk(command, path)


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group), f"{' '.join(path)}: {command.name} is not a group"
        assert name in command.commands, f"`pvc {' '.join(path)}` does not exist"
        command = command.commands[name]
    return command


def cli_names(op: Operation) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """The command paths an operation should have, each with the values it fixes."""
    if not op.variants:
        return [(op.group + (op.verb,), {})]
    return [(op.group + (v.verb,), dict(v.fixed)) for v in op.variants]


@pytest.fixture
def app(tmp_path: Path) -> Any:
    from pvc.server.app import create_app

    core = Cluster(Settings(store_path=str(tmp_path / "pvc.sqlite")))
    yield create_app(core)
    core.close()


# --- every operation has its route and its command ----------------------------------------------


def test_there_are_operations() -> None:
    # every route belongs to one operation, and `init` has no route
    assert {name for name in ROUTES.values()} | {"init"} == set(OPS)


@ALL
def test_route_or_a_reason(op: Operation) -> None:
    if op.path is None:
        assert op.http_reason and op.http_reason.strip().endswith("."), f"{op.name}: no route and no reason"
    else:
        assert not op.http_reason, f"{op.name} has a route and a reason for having none"
        assert op.path.startswith("/") and not op.path.endswith("/")


@ALL
def test_command_for_each_variant_or_verb(op: Operation) -> None:
    if not op.cli:
        assert op.cli_reason, f"{op.name}: cli=False needs a cli_reason"
        if op.name in HAND_WRITTEN:
            assert not isinstance(command_at(HAND_WRITTEN[op.name]), click.Group)
        return
    omitted = {op.group + (v.verb,): set(v.omit) for v in op.variants}
    for path, fixed in cli_names(op):
        command = command_at(path)
        assert not isinstance(command, click.Group), f"`pvc {' '.join(path)}` is a group, not a command"
        # The command takes exactly the operation's values that the variant leaves open.
        taken = {p.name for p in command.params if not p.name.startswith("_flag_")} - CLI_EXTRAS
        left_open = {p.name for p in op.params if p.name not in fixed and p.name not in omitted.get(path, set())}
        assert taken == left_open, f"pvc {' '.join(path)}"


@ALL
def test_variants_fix_valid_values(op: Operation) -> None:
    for v in op.variants:
        assert v.fixed, f"{op.name} variant {v.verb} fixes nothing"
        for name, value in v.fixed.items():
            assert convert(op.param(name), value) == value
        for alias in v.aliases:
            hidden = command_at(op.group + (alias,))
            assert hidden.hidden and hidden.callback is command_at(op.group + (v.verb,)).callback


@ALL
def test_help_text_everywhere(op: Operation) -> None:
    assert op.summary.strip(), f"{op.name} has no docstring"
    assert op.summary == op.func.__doc__.strip().splitlines()[0]
    for p in op.params:
        assert p.help.strip(), f"{op.name}: parameter {p.name} has no help"
    for v in op.variants:
        assert v.help.strip(), f"{op.name}: variant {v.verb} has no help"


def test_every_cli_command_and_group_has_help() -> None:
    for path, command in walk(cli):
        text = command.get_short_help_str(limit=200)
        assert text.strip(), f"`pvc {' '.join(path)}` has no help"


@ALL
def test_parameters_come_from_the_signature(op: Operation) -> None:
    signature = list(inspect.signature(op.func).parameters.values())[1:]
    assert [p.name for p in op.params] == [s.name for s in signature]
    for p, s in zip(op.params, signature):
        assert p.required == (s.default is inspect.Parameter.empty)
        assert p.default == (None if p.required else s.default)
    http = [p.http_name for p in op.params]
    assert len(http) == len(set(http)), f"{op.name}: two values share an HTTP name"


@ALL
def test_path_wildcards_are_parameters(op: Operation) -> None:
    wildcards = re.findall(r"<([^>]+)>", op.path or "")
    assert tuple(wildcards) == op.path_params  # only plain <name> wildcards, no filters
    assert len(set(wildcards)) == len(wildcards)
    for name in wildcards:
        p = op.param(name)
        assert p.required, f"{op.name}: the path value {name} cannot be optional"
        assert p.http_name == name
        assert p.positional, f"{op.name}: {name} is a path value, so the CLI takes it as an argument"


def test_declaration_mistakes_are_refused() -> None:
    before = dict(OPERATIONS)

    def f(core: Any, name: str, count: int = 1) -> str:
        """Do a thing."""
        return name

    both = {"name": Param("A name."), "count": Param("A count.", kind="int")}
    cases = [
        ({"params": {"name": Param("A name.")}}, "not declared"),
        ({"params": {**both, "other": Param("x")}}, "not in the signature"),
        ({"params": {**both, "count": Param("A count.", kind="number")}}, "bad kind"),
        ({"params": {**both, "count": Param("A count.", kind="choice")}}, "bad kind"),
        ({"params": both, "path": None}, "must say why"),
        ({"params": both, "path": "/thing/<nome>"}, "are not parameters"),
        ({"params": both, "method": "PATCH"}, "bad result"),
        ({"params": both, "path": "/node"}, None),  # fine, but its name is taken below
    ]
    for kwargs, error in cases:
        kwargs = {"path": "/thing/<name>", **kwargs}
        if error is None:
            with pytest.raises(TypeError, match="declared twice"):
                operation("node", "list", **kwargs)(f)
            continue
        with pytest.raises(TypeError, match=error):
            operation("thing", "do", **kwargs)(f)
    assert OPERATIONS == before


# --- the HTTP side ------------------------------------------------------------------------------


def test_route_table() -> None:
    table = route_table(OPS)
    assert len(table) == len({(m, p) for m, p, _ in table}), "two operations share a method and path"
    assert {(m, p): n for m, p, n in table} == ROUTES


def test_app_routes_come_from_the_registry(app: Any) -> None:
    seen: dict[str, int] = {}
    for route in app.routes:
        op = route.config.get("pvc_operation")
        if op is None:
            assert (route.method, route.rule) in NON_OPERATION_ROUTES, f"{route.method} {route.rule} is not declared"
            continue
        assert OPS[op.name] is op
        assert route.method == op.method and route.rule in [PREFIX + p for p in op.paths]
        assert route.name == (op.name if route.rule == PREFIX + op.path else None)
        seen[op.name] = seen.get(op.name, 0) + 1
    assert seen == {op.name: len(op.paths) for op in OPS.values() if op.paths}
    assert {(r.method, r.rule) for r in app.routes} >= NON_OPERATION_ROUTES
    assert {(r.method, r.rule): r.config.get("pvc_operation").name for r in app.routes
            if r.config.get("pvc_operation")} == ROUTES


def test_serve_routes_lists_the_table() -> None:
    result = CliRunner().invoke(cli, ["serve", "--routes"], prog_name="pvc")
    assert result.exit_code == 0, result.output
    listed = {tuple(line.split(maxsplit=2)) for line in result.stdout.splitlines()}
    assert listed == {(m, p, n) for (m, p), n in ROUTES.items()} | {("POST", "/api/v1/vm/<vm>", "(501: not implemented)")}


# --- the CLI tree mirrors the endpoint tree ------------------------------------------------------


@ALL
def test_command_group_follows_the_path(op: Operation) -> None:
    if op.path is None:
        return
    literal = [s for s in op.path.strip("/").split("/") if not s.startswith("<")]
    assert tuple(literal[: len(op.group)]) == op.group, f"{op.name}: `pvc {' '.join(op.group)}` vs {op.path}"


def test_cli_tree_is_the_registry() -> None:
    expected = set(NON_OPERATION_COMMANDS) | set(HAND_WRITTEN.values())
    for op in OPS.values():
        for i in range(1, len(op.group) + 1):
            expected.add(op.group[:i])
        if op.cli:
            expected.update(path for path, _ in cli_names(op))
            expected.update(op.group + (a,) for v in op.variants for a in v.aliases)
    for group, (_, aliases) in GROUPS.items():  # an alias group holds the same commands
        prefix = tuple(group.split())
        expected.update(p[: len(prefix) - 1] + (alias,) + p[len(prefix):]
                        for p in list(expected) for alias in aliases if p[: len(prefix)] == prefix)
    assert {path for path, _ in walk(cli)} == expected


def test_node_commands() -> None:
    node = command_at(("node",))
    assert isinstance(node, click.Group)
    assert sorted(node.list_commands(click.Context(node))) == [
        "coordinator-state", "daemon-state", "domain-state", "flush", "info", "list", "primary", "ready",
        "secondary", "unflush",
    ]
    assert command_at(("node", "unflush")).hidden


# --- the shared converters ----------------------------------------------------------------------

FLAG = Param("A flag.", kind="flag", name="force")
NUMBER = Param("A count.", kind="int", name="count")
RATIO = Param("A ratio.", kind="float", name="ratio")
STATE = Param("A state.", kind="choice", choices=("primary", "secondary"), name="state", http="coordinator-state")
TEXT = Param("A name.", name="name")


@pytest.mark.parametrize("raw", [*TRUE_WORDS, "TRUE", " Yes ", "On", True])
def test_flag_true(raw: Any) -> None:
    assert convert(FLAG, raw) is True


@pytest.mark.parametrize("raw", [*FALSE_WORDS, "FALSE", " no ", "Off", False])
def test_flag_false(raw: Any) -> None:
    assert convert(FLAG, raw) is False


def test_flag_words() -> None:
    assert set(TRUE_WORDS) == {"", "1", "true", "yes", "on"}
    assert set(FALSE_WORDS) == {"0", "false", "no", "off"}


@pytest.mark.parametrize("raw", ["2", "maybe", "y", "enable", "tru"])
def test_flag_junk(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert(FLAG, raw)
    assert caught.value.message == (
        f"Invalid value for 'force': '{raw}' is not one of 1, true, yes, on, 0, false, no, off."
    )


@pytest.mark.parametrize("raw, value", [("42", 42), (" 7 ", 7), ("-3", -3), (5, 5), ("0", 0)])
def test_int(raw: Any, value: int) -> None:
    assert convert(NUMBER, raw) == value


@pytest.mark.parametrize("raw, message", [
    ("4.2", "Invalid value for 'count': '4.2' is not an integer."),
    ("abc", "Invalid value for 'count': 'abc' is not an integer."),
    ("", "Invalid value for 'count': '' is not an integer."),
    (["1", "2"], "Invalid value for 'count': expected a single value."),
    ({"a": 1}, "Invalid value for 'count': expected a single value."),
    (None, "Invalid value for 'count': expected a single value."),
])
def test_int_junk(raw: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert(NUMBER, raw)
    assert caught.value.message == message


@pytest.mark.parametrize("raw, value", [("1.5", 1.5), ("2", 2.0), (" -0.25 ", -0.25), (3, 3.0)])
def test_float(raw: Any, value: float) -> None:
    assert convert(RATIO, raw) == value


@pytest.mark.parametrize("raw", ["abc", "1,5", ""])
def test_float_junk(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert(RATIO, raw)
    assert caught.value.message == f"Invalid value for 'ratio': '{raw}' is not a number."


def test_choice() -> None:
    assert convert(STATE, "primary") == "primary"
    assert convert(STATE, "secondary") == "secondary"
    for raw in ("Primary", "client", "", " primary"):
        with pytest.raises(InvalidArgument) as caught:
            convert(STATE, raw)
        # The message names the value as HTTP callers send it.
        assert caught.value.message == f"Invalid value for 'coordinator-state': '{raw}' is not one of primary, secondary."


def test_text_is_kept_as_given() -> None:
    assert convert(TEXT, " hv1 ") == " hv1 "
    assert convert(TEXT, 5) == "5"
    with pytest.raises(InvalidArgument, match="expected a single value"):
        convert(TEXT, ["a"])


def test_control_characters_are_escaped_in_messages() -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert(NUMBER, "1\n2")
    assert caught.value.message == "Invalid value for 'count': '1\\n2' is not an integer."


def test_cli_uses_the_same_converter() -> None:
    """The CLI's value type fails with the converter's own message, as HTTP callers get it."""
    from pvc.cli.build import ValueType

    for param, raw in ((STATE, "sideways"), (NUMBER, "x"), (RATIO, "1,5"), (TEXT, ["a"])):
        with pytest.raises(InvalidArgument) as expected:
            convert(param, raw)
        with pytest.raises(click.BadParameter) as caught:
            ValueType(param).convert(raw, None, None)
        assert caught.value.message == expected.value.message
    for op in OPS.values():
        for path, _ in cli_names(op) if op.cli else []:
            for p in command_at(path).params:
                if p.name in CLI_EXTRAS or getattr(p, "is_flag", False):
                    continue
                if op.param(p.name).cli_file:  # read from a file; its text is converted after reading
                    assert isinstance(p.type, click.File) and p.type.mode == "rb"
                else:
                    assert isinstance(p.type, ValueType) and p.type.param is op.param(p.name)
