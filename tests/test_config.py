"""Configuration: the example file documents every key, and every mistake is one exact line naming
the key path (DESIGN.md, "config"); through the CLI that is exit code 2 and nothing done."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from click.testing import CliRunner

from pvc.lib import config
from pvc.lib.config import KEYS, Settings, load_settings
from pvc.lib.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "pvc-api.example.yaml"

#: How the manual marks each of its keys; None: the manual does not say. Keys absent here are ours.
MANUAL = {
    "pvc.debug": "required",
    "pvc.coordinators": "required",
    "pvc.api.listen_address": "required",
    "pvc.api.listen_port": None,
    "pvc.api.authentication.enabled": "required",
    "pvc.api.authentication.secret_key": "optional",
    "pvc.api.authentication.tokens": "optional",
    "pvc.api.ssl.enabled": "required",
    "pvc.api.ssl.cert_file": None,
    "pvc.api.ssl.key_file": None,
}

#: The smallest valid file: every required key, embedded store.
BASE: dict[str, Any] = {
    "pvc": {
        "debug": False,
        "coordinators": [],
        "api": {
            "listen_address": "127.0.0.1",
            "authentication": {"enabled": False},
            "ssl": {"enabled": False},
        },
    }
}

PORT = "pvc.api.listen_port: must be an integer from 1 to 65535"
NOT_A_LIST = "pvc.coordinators: must be a list of host names (host or host:port); empty for the embedded store"
NO_TOKENS = "pvc.api.authentication.tokens: at least one token is required when authentication is enabled"


def changed(*edits: tuple[str, Any]) -> dict[str, Any]:
    """BASE with ``(dotted.path, value)`` edits applied; the value ``DELETE`` removes the key."""
    data = copy.deepcopy(BASE)
    for path, value in edits:
        *parents, last = path.split(".")
        node = data
        for name in parents:
            node = node.setdefault(name, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


DELETE = object()
AUTH_ON = ("pvc.api.authentication.enabled", True)
ONE_TOKEN = ("pvc.api.authentication.tokens", [{"description": "admin", "token": "0123-4567"}])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment of our own: no PVC_CONFIG_FILE, a private data directory."""
    return {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "data")}


@pytest.fixture
def no_system_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the /etc/pvc/pvc-api.yaml lookup at a path of the test's own (never the real /etc)."""
    path = tmp_path / "etc" / "pvc-api.yaml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(path))
    return path


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., str]:
    def write(content: Any, name: str = "pvc-api.yaml") -> str:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
        return str(path)

    return write


def problems_of(path: str, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --- the example file -------------------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    known = {k.path for k in KEYS}
    out: dict[str, Any] = {}
    for name, value in data.items():
        path = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, dict) and path not in known:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def comments_above(lines: list[str]) -> dict[str, list[str]]:
    """For every `key:` line of a YAML file, its dotted path → the comment lines just above it."""
    stack: list[tuple[int, str]] = []
    found: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_]+):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        block = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            block.insert(0, lines[j].strip().lstrip("#").strip())
            j -= 1
        found[".".join(name for _, name in stack)] = block
    return found


def test_example_documents_exactly_the_declared_keys() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert sorted(flatten(data)) == sorted(k.path for k in KEYS)


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.path)
def test_example_comments_each_key_as_the_manual_marks_it(key: config.Key) -> None:
    comments = comments_above(EXAMPLE.read_text(encoding="utf-8").splitlines())
    block = comments.get(key.path)
    assert block, f"{key.path} has no comment above it in {EXAMPLE.name}"
    first = block[0]
    if key.path not in MANUAL:
        assert first.startswith("(optional; added by pvc"), first
        assert not key.required
    elif MANUAL[key.path] is None:
        assert first.startswith("(not marked in the manual"), first
    else:
        assert first.startswith(f"({MANUAL[key.path]}"), first
    # The code's notion of required agrees with the comment (and so with the manual).
    assert first.startswith("(required)") == key.required


def test_example_loads_with_the_manual_values(env: dict[str, str]) -> None:
    settings = load_settings(str(EXAMPLE), env)
    assert settings.debug is True
    assert settings.coordinators == ("pvc-hv1", "pvc-hv2", "pvc-hv3")
    assert settings.engine == "zookeeper"
    assert (settings.listen_address, settings.listen_port) == ("127.0.0.1", 7370)
    assert settings.auth_enabled is False
    assert settings.secret_key == "aSuperLong&SecurePasswordString"
    assert [(t.description, t.token) for t in settings.tokens] == [("testing", "")]
    assert settings.ssl_enabled is False
    assert settings.zk_chroot is None
    assert (settings.session_lifetime, settings.store_timeout, settings.wait_timeout) == (43200, 5.0, 600.0)
    assert settings.store_path == os.path.join(env["XDG_DATA_HOME"], "pvc", "pvc.sqlite")
    assert settings.source == str(EXAMPLE)


def test_example_with_the_embedded_store_runs_a_command(tmp_path: Path) -> None:
    """The example, switched to the embedded store, drives a real `pvc node list`."""
    from pvc.cli import cli

    store = tmp_path / "store.sqlite"
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r"coordinators:\n(\s+- \S+\n)+", "coordinators: []\n", text)
    text = text.replace('path: ""', f'path: "{store}"')
    path = tmp_path / "example.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "node", "list", "--format", "json"])
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert json.loads(result.stdout) == []
    assert store.exists()


# --- values that load ---------------------------------------------------------------------------


def test_relative_store_path_is_relative_to_the_file(write: Callable[..., str], env: dict[str, str],
                                                     tmp_path: Path) -> None:
    path = write(changed(("pvc.store.path", "data/pvc.sqlite")))
    assert load_settings(path, env).store_path == str(Path(path).parent / "data" / "pvc.sqlite")
    assert load_settings(write(changed(("pvc.store.path", "/abs/pvc.sqlite"))), env).store_path == "/abs/pvc.sqlite"


def test_minimal_file_gives_the_defaults(write: Callable[..., str], env: dict[str, str]) -> None:
    settings = load_settings(write(BASE), env)
    expected = Settings(store_path=os.path.join(env["XDG_DATA_HOME"], "pvc", "pvc.sqlite"))
    assert settings == expected
    assert settings.engine == "embedded"


def test_data_directory_falls_back_to_home(write: Callable[..., str], tmp_path: Path) -> None:
    settings = load_settings(write(BASE), {"HOME": str(tmp_path / "h")})
    assert settings.store_path == str(tmp_path / "h" / ".local" / "share" / "pvc" / "pvc.sqlite")


@pytest.mark.parametrize("port, expected", [(1, 1), (65535, 65535), ("8080", 8080), (7370, 7370)])
def test_valid_ports(write: Callable[..., str], env: dict[str, str], port: Any, expected: int) -> None:
    assert load_settings(write(changed(("pvc.api.listen_port", port))), env).listen_port == expected


def test_valid_coordinators_and_our_keys(write: Callable[..., str], env: dict[str, str]) -> None:
    hosts = ["hv1", "hv2.example.org:2181", "10.0.0.1:2182", "[::1]:2181", "::1"]
    data = changed(
        ("pvc.coordinators", hosts), AUTH_ON, ONE_TOKEN,
        ("pvc.api.authentication.session_lifetime", 60),
        ("pvc.api.ssl.enabled", True), ("pvc.api.ssl.cert_file", "/c.pem"), ("pvc.api.ssl.key_file", "/k.pem"),
        ("pvc.store.chroot", "/pvc"), ("pvc.store.timeout", 2.5), ("pvc.store.path", "/srv/pvc.sqlite"),
        ("pvc.timeouts.wait", 30),
    )
    s = load_settings(write(data), env)
    assert s.coordinators == tuple(hosts) and s.engine == "zookeeper"
    assert s.auth_enabled and [t.token for t in s.tokens] == ["0123-4567"] and s.secret_key is None
    assert (s.session_lifetime, s.zk_chroot, s.store_timeout, s.wait_timeout) == (60, "/pvc", 2.5, 30.0)
    assert (s.ssl_enabled, s.ssl_cert_file, s.ssl_key_file, s.store_path) == (True, "/c.pem", "/k.pem", "/srv/pvc.sqlite")
    assert "0123-4567" not in repr(s)  # tokens never show in a repr


def test_node_agent_keys(write: Callable[..., str], env: dict[str, str], tmp_path: Path) -> None:
    data = changed(
        ("pvc.node.name", "hv7"), ("pvc.node.libvirt_uri", "test:nodes/hv7.xml"), ("pvc.node.coordinator", False),
        ("pvc.system.intervals.keepalive_interval", 2), ("pvc.system.intervals.shutdown_timeout", 30),
        ("pvc.system.intervals.flush_parallel", 8), ("pvc.system.fencing.intervals.fence_intervals", 3),
        ("pvc.system.fencing.actions.successful_fence", "none"), ("pvc.system.fencing.actions.failed_fence", "migrate"),
        ("pvc.system.fencing.ipmi", {"hv7": {"host": "hv7-lom", "user": "admin", "password_file": "/etc/pvc/hv7"},
                                     "hv8": {"host": "10.0.0.8", "user": "root", "password_file": "/p", "port": 6230}}),
        ("pvc.system.migration.target_uri", "qemu+ssh://{node}/system"), ("pvc.system.migration.data_uri", "tcp://{node}"),
        ("pvc.system.migration.unsafe", True), ("pvc.system.migration.timeout", 60),
    )
    s = load_settings(write(data), env)
    assert (s.node_name, s.node_coordinator) == ("hv7", False)
    assert s.libvirt_uri == f"test://{tmp_path}/nodes/hv7.xml"  # test:PATH is relative to the file
    assert (s.keepalive_interval, s.fence_intervals, s.dead_after()) == (2.0, 3, 6.0)
    assert (s.shutdown_timeout, s.flush_parallel, s.migration_timeout, s.migration_unsafe) == (30.0, 8, 60.0, True)
    assert (s.successful_fence, s.failed_fence) == ("none", "migrate")
    assert s.bmc_of("hv8") == config.Bmc("hv8", "10.0.0.8", "root", "/p", 6230)
    assert s.bmc_of("hv7").port == 623 and s.bmc_of("hv9") is None  # type: ignore[union-attr]
    assert s.migration_target_uri.format(node="hv8") == "qemu+ssh://hv8/system"
    defaults = load_settings(write(BASE), env)
    assert (defaults.node_name, defaults.libvirt_uri, defaults.node_coordinator) == (None, "qemu:///system", None)
    assert (defaults.keepalive_interval, defaults.fence_intervals) == (5.0, 6)
    assert (defaults.successful_fence, defaults.failed_fence, defaults.bmcs) == ("migrate", "none", ())


# --- every mistake: one exact line naming the key path -------------------------------------------

REQUIRED = [k.path for k in KEYS if k.required]

MISTAKES = [
    # missing required keys
    *[(f"missing {p}", changed((p, DELETE)), [f"{p}: required key is missing"]) for p in REQUIRED],
    # wrong types
    ("debug string", changed(("pvc.debug", "yes")), ["pvc.debug: must be true or false"]),
    ("debug number", changed(("pvc.debug", 1)), ["pvc.debug: must be true or false"]),
    ("auth enabled string", changed(("pvc.api.authentication.enabled", "true")),
     ["pvc.api.authentication.enabled: must be true or false"]),
    ("ssl enabled null", changed(("pvc.api.ssl.enabled", None)), ["pvc.api.ssl.enabled: must be true or false"]),
    ("address number", changed(("pvc.api.listen_address", 5)),
     ["pvc.api.listen_address: must be an IP address or host name, e.g. 127.0.0.1 or 0.0.0.0"]),
    ("address empty", changed(("pvc.api.listen_address", "")),
     ["pvc.api.listen_address: must be an IP address or host name, e.g. 127.0.0.1 or 0.0.0.0"]),
    ("address junk", changed(("pvc.api.listen_address", "not an address")),
     ["pvc.api.listen_address: 'not an address' is not a host name or IP address"]),
    ("secret_key number", changed(("pvc.api.authentication.secret_key", 5)),
     ["pvc.api.authentication.secret_key: must be a string"]),
    ("cert_file list", changed(("pvc.api.ssl.cert_file", ["a"])), ["pvc.api.ssl.cert_file: must be a string"]),
    ("store path number", changed(("pvc.store.path", 5)), ["pvc.store.path: must be a string"]),
    ("session lifetime 0", changed(("pvc.api.authentication.session_lifetime", 0)),
     ["pvc.api.authentication.session_lifetime: must be a whole number of seconds greater than 0"]),
    ("session lifetime float", changed(("pvc.api.authentication.session_lifetime", 1.5)),
     ["pvc.api.authentication.session_lifetime: must be a whole number of seconds greater than 0"]),
    ("store timeout 0", changed(("pvc.store.timeout", 0)),
     ["pvc.store.timeout: must be a number of seconds greater than 0"]),
    ("store timeout string", changed(("pvc.store.timeout", "5")),
     ["pvc.store.timeout: must be a number of seconds greater than 0"]),
    ("wait negative", changed(("pvc.timeouts.wait", -1)),
     ["pvc.timeouts.wait: must be a number of seconds greater than 0"]),
    ("wait boolean", changed(("pvc.timeouts.wait", True)),
     ["pvc.timeouts.wait: must be a number of seconds greater than 0"]),
    *[(f"chroot {c!r}", changed(("pvc.store.chroot", c)),
       ["pvc.store.chroot: must be an absolute ZooKeeper path such as /pvc (no trailing '/')"])
      for c in ("pvc", "/pvc/", "/a//b")],
    ("chroot number", changed(("pvc.store.chroot", 5)), ["pvc.store.chroot: must be a string"]),
    ("chroot dot-dot", changed(("pvc.store.chroot", "/pvc/../x")),
     ["pvc.store.chroot: must be an absolute ZooKeeper path of valid names: Invalid path component name '..': "
      "'.' and '..' are not names"]),
    ("chroot dot", changed(("pvc.store.chroot", "/./pvc")),
     ["pvc.store.chroot: must be an absolute ZooKeeper path of valid names: Invalid path component name '.': "
      "'.' and '..' are not names"]),
    ("chroot control", changed(("pvc.store.chroot", "/pvc/a\n")),
     ["pvc.store.chroot: must be an absolute ZooKeeper path of valid names: Invalid path component name "
      "'a\\n': it must not contain control characters"]),
    # bad ports
    *[(f"port {p!r}", changed(("pvc.api.listen_port", p)), [PORT])
      for p in (0, 70000, "abc", -1, 65536, "", "7370 ", 7370.5, True, None, [7370], "\u0663\u0663")],
    # bad coordinators
    ("coordinators string", changed(("pvc.coordinators", "pvc-hv1")), [NOT_A_LIST]),
    ("coordinators mapping", changed(("pvc.coordinators", {"pvc-hv1": 2181})), [NOT_A_LIST]),
    *[(f"coordinator {c!r}", changed(("pvc.coordinators", ["pvc-hv1", c])),
       [f"pvc.coordinators: entry 2 ({c!r}) must be host or host:port with a port from 1 to 65535"])
      for c in ("bad host", "hv2:0", "hv2:70000", "hv2:", "hv2:abc", "a:b:c", "", "[::1]x", 5, None)],
    # the node agent's keys
    ("node name with a slash", changed(("pvc.node.name", "a/b")),
     ["pvc.node.name: Invalid node name 'a/b': it must not contain '/'"]),
    ("libvirt uri with a space", changed(("pvc.node.libvirt_uri", "qemu:///sys tem")),
     ["pvc.node.libvirt_uri: must be a non-empty URI without spaces"]),
    ("coordinator string", changed(("pvc.node.coordinator", "yes")), ["pvc.node.coordinator: must be true or false"]),
    ("keepalive 0", changed(("pvc.system.intervals.keepalive_interval", 0)),
     ["pvc.system.intervals.keepalive_interval: must be a number of seconds greater than 0"]),
    ("fence intervals float", changed(("pvc.system.fencing.intervals.fence_intervals", 2.5)),
     ["pvc.system.fencing.intervals.fence_intervals: must be a whole number greater than 0"]),
    ("fence action", changed(("pvc.system.fencing.actions.successful_fence", "reboot")),
     ["pvc.system.fencing.actions.successful_fence: must be one of migrate, none"]),
    ("migration template", changed(("pvc.system.migration.target_uri", "qemu+tcp://{host}/system")),
     ["pvc.system.migration.target_uri: must be a URI that may contain {node} (the target node's name) and no "
      "other {...}"]),
    ("a BMC password in the file", changed(("pvc.system.fencing.ipmi",
                                            {"hv1": {"host": "h", "user": "u", "password": "secret"}})),
     ["pvc.system.fencing.ipmi: hv1: unknown key 'password' (the password goes in password_file, never in this "
      "file)"]),
    ("a BMC without a host", changed(("pvc.system.fencing.ipmi", {"hv1": {"user": "u", "password_file": "/p"}})),
     ["pvc.system.fencing.ipmi: hv1: host must be a non-empty string"]),
    ("BMCs as a list", changed(("pvc.system.fencing.ipmi", ["hv1"])),
     ["pvc.system.fencing.ipmi: must be a mapping of node name to {host, user, password_file[, port]}"]),
    # unknown keys
    ("unknown api key", changed(("pvc.api.bogus", 1)), ["pvc.api.bogus: unknown key"]),
    ("misplaced key", changed(("pvc.listen_port", 7370)), ["pvc.listen_port: unknown key"]),
    ("unknown top-level key", changed(("extra", 1)), ["extra: unknown key"]),
    ("unknown section", changed(("pvc.storage.path", "/x")), ["pvc.storage: unknown key"]),
    ("typo of a required key", changed(("pvc.api.ssl.enabled", DELETE), ("pvc.api.ssl.enable", False)),
     ["pvc.api.ssl.enable: unknown key", "pvc.api.ssl.enabled: required key is missing"]),
    ("unknown token field", changed(AUTH_ON, ("pvc.api.authentication.tokens", [{"token": "t", "owner": "x"}])),
     ["pvc.api.authentication.tokens: entry 1 has unknown key 'owner'"]),
    # sections that are not mappings: one line, not one per key inside
    ("api not a mapping", changed(("pvc.api", "x")), ["pvc.api: must be a mapping"]),
    ("pvc not a mapping", {"pvc": ["debug"]}, ["pvc: must be a mapping"]),
    ("auth not a mapping", changed(("pvc.api.authentication", True)), ["pvc.api.authentication: must be a mapping"]),
    # authentication
    ("auth without tokens", changed(AUTH_ON), [NO_TOKENS]),
    ("auth with an empty list", changed(AUTH_ON, ("pvc.api.authentication.tokens", [])), [NO_TOKENS]),
    ("auth with null tokens", changed(AUTH_ON, ("pvc.api.authentication.tokens", None)), [NO_TOKENS]),
    ("auth with an empty token", changed(AUTH_ON, ("pvc.api.authentication.tokens", [{"description": "x", "token": ""}])),
     ["pvc.api.authentication.tokens: entry 1 has an empty token"]),
    ("auth with a blank second token",
     changed(AUTH_ON, ("pvc.api.authentication.tokens", [{"token": "good"}, {"token": "  "}])),
     ["pvc.api.authentication.tokens: entry 2 has an empty token"]),
    ("token missing", changed(AUTH_ON, ("pvc.api.authentication.tokens", [{"description": "x"}])),
     ["pvc.api.authentication.tokens: entry 1 has no 'token'"]),
    ("token not a string", changed(AUTH_ON, ("pvc.api.authentication.tokens", [{"token": 12345}])),
     ["pvc.api.authentication.tokens: entry 1: token must be a string"]),
    ("token entry not a mapping", changed(AUTH_ON, ("pvc.api.authentication.tokens", ["abc"])),
     ["pvc.api.authentication.tokens: entry 1 must be a mapping with a 'token' key"]),
    ("tokens not a list", changed(AUTH_ON, ("pvc.api.authentication.tokens", "abc")),
     ["pvc.api.authentication.tokens: must be a list of {description, token} entries"]),
    ("auth with an empty secret_key", changed(AUTH_ON, ONE_TOKEN, ("pvc.api.authentication.secret_key", "")),
     ["pvc.api.authentication.secret_key: must not be empty when authentication is enabled"]),
    # TLS
    ("ssl without cert or key", changed(("pvc.api.ssl.enabled", True)),
     ["pvc.api.ssl.cert_file: required when pvc.api.ssl.enabled is true",
      "pvc.api.ssl.key_file: required when pvc.api.ssl.enabled is true"]),
    ("ssl without key", changed(("pvc.api.ssl.enabled", True), ("pvc.api.ssl.cert_file", "/c.pem")),
     ["pvc.api.ssl.key_file: required when pvc.api.ssl.enabled is true"]),
    ("ssl with an empty cert", changed(("pvc.api.ssl.enabled", True), ("pvc.api.ssl.cert_file", ""),
                                       ("pvc.api.ssl.key_file", "/k.pem")),
     ["pvc.api.ssl.cert_file: required when pvc.api.ssl.enabled is true"]),
    ("ssl with a cert of the wrong type", changed(("pvc.api.ssl.enabled", True), ("pvc.api.ssl.cert_file", 5),
                                                  ("pvc.api.ssl.key_file", "/k.pem")),
     ["pvc.api.ssl.cert_file: must be a string"]),
]


@pytest.mark.parametrize("data, expected", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_one_exact_line(write: Callable[..., str], env: dict[str, str], data: Any,
                                        expected: list[str]) -> None:
    assert problems_of(write(data), env) == expected


def test_disabled_features_do_not_need_their_keys(write: Callable[..., str], env: dict[str, str]) -> None:
    """As in the manual's example: an empty token, secret and cert files are fine while disabled."""
    data = changed(("pvc.api.authentication.tokens", [{"description": "testing", "token": ""}]),
                   ("pvc.api.authentication.secret_key", ""), ("pvc.api.ssl.cert_file", ""))
    settings = load_settings(write(data), env)
    assert not settings.auth_enabled and not settings.ssl_enabled


def test_several_mistakes_are_reported_together(write: Callable[..., str], env: dict[str, str]) -> None:
    text = (
        "pvc:\n"
        "  debug: maybe\n"
        "  coordinators: [pvc-hv1, 'hv2:0']\n"
        "  api:\n"
        "    listen_address: 127.0.0.1\n"
        "    listen_port: 0\n"
        "    bogus: 1\n"
        "    authentication:\n"
        "      enabled: true\n"
        "      secret_key: ''\n"
        "  timeouts: {wait: 0}\n"
    )
    assert problems_of(write(text), env) == [
        "pvc.api.bogus: unknown key",
        "pvc.debug: must be true or false",
        "pvc.coordinators: entry 2 ('hv2:0') must be host or host:port with a port from 1 to 65535",
        PORT,
        "pvc.api.ssl.enabled: required key is missing",
        "pvc.timeouts.wait: must be a number of seconds greater than 0",
        NO_TOKENS,
        "pvc.api.authentication.secret_key: must not be empty when authentication is enabled",
    ]


# --- files that are not configuration ----------------------------------------------------------


@pytest.mark.parametrize("text, where, problem", [
    ("pvc:\n  debug: true\n   x: 1\n", "line 3, column 5", "mapping values are not allowed here"),
    ("pvc:\n\tdebug: true\n", "line 2, column 1", "found character '\\t' that cannot start any token"),
    ("pvc: {debug: true\n", "line 2, column 1", "expected ',' or '}', but got '<stream end>'"),
    ("pvc:\n  debug: [\n", "line 3, column 1", "expected the node content, but found '<stream end>'"),
    ("pvc:\n  debug: \x07\n", "line 2, column 10",
     "unacceptable character #x0007: special characters are not allowed"),
])
def test_invalid_yaml_names_line_and_column(write: Callable[..., str], env: dict[str, str], text: str, where: str,
                                            problem: str) -> None:
    path = write(text)
    assert problems_of(path, env) == [f"{path}: not valid YAML at {where}: {problem}"]


@pytest.mark.parametrize("text", ["", "---\n", "- pvc\n", "just text\n", "debug: true\n"])
def test_file_without_a_pvc_mapping(write: Callable[..., str], env: dict[str, str], text: str) -> None:
    path = write(text)
    extra = ["debug: unknown key"] if text.startswith("debug") else []
    assert problems_of(path, env) == extra + [f"{path}: must be a mapping with a top-level 'pvc' key"]


def test_missing_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = str(tmp_path / "nope.yaml")
    assert problems_of(path, env) == [f"{path}: cannot read the configuration file: No such file or directory"]


def test_unreadable_file(tmp_path: Path, env: dict[str, str]) -> None:
    # A directory cannot be read as a file, even by root (who can read a chmod 000 file).
    assert problems_of(str(tmp_path), env) == [f"{tmp_path}: cannot read the configuration file: Is a directory"]


def test_file_that_is_not_utf8(write: Callable[..., str], env: dict[str, str]) -> None:
    path = write(b"pvc:\n  debug: \xff\n")
    assert problems_of(path, env) == [f"{path}: cannot read the configuration file: not UTF-8 text (byte 0xff at offset 14)"]


# --- which file: --config > PVC_CONFIG_FILE > /etc/pvc/pvc-api.yaml (if it exists) > defaults -------


@pytest.fixture
def three_files(write: Callable[..., str], no_system_file: Path) -> dict[str, str]:
    system = no_system_file
    system.parent.mkdir()
    system.write_text(yaml.safe_dump(changed(("pvc.api.listen_port", 3333))), encoding="utf-8")
    return {
        "explicit": write(changed(("pvc.api.listen_port", 1111)), "explicit.yaml"),
        "env": write(changed(("pvc.api.listen_port", 2222)), "env.yaml"),
        "system": str(system),
    }


def test_explicit_file_beats_the_environment(three_files: dict[str, str], env: dict[str, str]) -> None:
    s = load_settings(three_files["explicit"], {**env, "PVC_CONFIG_FILE": three_files["env"]})
    assert (s.listen_port, s.source) == (1111, three_files["explicit"])


def test_environment_beats_the_system_file(three_files: dict[str, str], env: dict[str, str]) -> None:
    s = load_settings(None, {**env, "PVC_CONFIG_FILE": three_files["env"]})
    assert (s.listen_port, s.source) == (2222, three_files["env"])


def test_system_file_when_nothing_else(three_files: dict[str, str], env: dict[str, str]) -> None:
    s = load_settings(None, {**env, "PVC_CONFIG_FILE": ""})
    assert (s.listen_port, s.source) == (3333, three_files["system"])


def test_defaults_when_there_is_no_file(no_system_file: Path, env: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch, write: Callable[..., str]) -> None:
    # The process environment is not consulted: only the mapping passed in.
    monkeypatch.setenv("PVC_CONFIG_FILE", write("pvc: [broken\n"))
    assert not no_system_file.exists()
    s = load_settings(None, env)
    assert s == Settings(store_path=os.path.join(env["XDG_DATA_HOME"], "pvc", "pvc.sqlite"))
    assert s.source == "built-in defaults"


def test_environment_file_must_exist(no_system_file: Path, env: dict[str, str], tmp_path: Path) -> None:
    """A PVC_CONFIG_FILE that is not there is an error, never a silent fall-back to defaults."""
    path = str(tmp_path / "gone.yaml")
    assert problems_of(None, {**env, "PVC_CONFIG_FILE": path}) == [  # type: ignore[arg-type]
        f"{path}: cannot read the configuration file: No such file or directory"
    ]


def test_bad_system_file_is_reported(three_files: dict[str, str], env: dict[str, str]) -> None:
    Path(three_files["system"]).write_text(yaml.safe_dump(changed(("pvc.debug", 3))), encoding="utf-8")
    assert problems_of(None, env) == ["pvc.debug: must be true or false"]  # type: ignore[arg-type]


# --- through the real CLI ----------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    from pvc.cli import cli

    return CliRunner().invoke(cli, list(args), env=env, prog_name="pvc")


def test_cli_reports_each_problem_on_its_own_line(write: Callable[..., str], tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    data = changed(("pvc.debug", "no"), ("pvc.api.listen_port", 70000), ("pvc.api.ssl.enabled", DELETE),
                   ("pvc.store.path", str(store)))
    result = run_cli("--config", write(data), "node", "list")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: pvc.debug: must be true or false",
        f"Error: {PORT}",
        "Error: pvc.api.ssl.enabled: required key is missing",
    ]
    assert not store.exists()  # nothing done: the store was never opened


def test_cli_reads_pvc_config_file(write: Callable[..., str], tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    path = write(changed(("pvc.api.listen_port", "abc"), ("pvc.store.path", str(store))))
    result = run_cli("node", "flush", "hv1", env={"PVC_CONFIG_FILE": path})
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"Error: {PORT}\n"), result.output
    assert not store.exists()


@pytest.mark.parametrize("content, message", [
    ("pvc:\n  debug: true\n   x: 1\n", "{path}: not valid YAML at line 3, column 5: mapping values are not allowed here"),
    (None, "{path}: cannot read the configuration file: No such file or directory"),
])
def test_cli_unusable_file(write: Callable[..., str], tmp_path: Path, content: str | None, message: str) -> None:
    path = write(content) if content is not None else str(tmp_path / "missing.yaml")
    result = run_cli("--config", path, "node", "list")
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert result.stderr == "Error: " + message.format(path=path) + "\n"


def test_cli_help_does_not_read_the_configuration(write: Callable[..., str]) -> None:
    path = write("pvc: [broken\n")
    for args in (["--config", path, "--help"], ["--config", path, "node", "list", "--help"]):
        result = run_cli(*args)
        assert (result.exit_code, result.stderr) == (0, ""), result.output
        assert "Usage: pvc" in result.stdout


def test_cli_runs_with_a_good_file(write: Callable[..., str], tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    result = run_cli("--config", write(changed(("pvc.store.path", str(store)))), "node", "list", "--format", "json")
    assert (result.exit_code, result.stderr, json.loads(result.stdout)) == (0, "", []), result.output
    assert store.exists()
