"""The key layout and name validation (pvc.lib.schema): pure functions, no store needed."""

from __future__ import annotations

import pytest

from pvc.lib import schema
from pvc.lib.errors import InvalidArgument

GOOD_NAMES = [
    "hv1",
    "node-01.example.com",
    "a" * 255,  # exactly the limit
    "é" * 127,  # 254 bytes
    "名前" * 42,  # 252 bytes
    "...",
    ".hidden",
    "a.b",
    "..a",
    " spaced ",
    "-",
    "ünïcødé",
    "\u00a0",  # no-break space is not a control character
    "\uffef",  # the last BMP character ZooKeeper accepts
]

# (name, fragment the message must contain)
BAD_NAMES = [
    ("", "must not be empty"),
    ("/", "must not contain '/'"),
    ("a/b", "must not contain '/'"),
    ("/a", "must not contain '/'"),
    ("a/", "must not contain '/'"),
    (".", "are not names"),
    ("..", "are not names"),
    ("a\x00b", "control characters"),
    ("a\nb", "control characters"),
    ("\t", "control characters"),
    ("a\rb", "control characters"),
    ("a\x1bb", "control characters"),
    ("a\x7f", "control characters"),
    ("a\x85", "control characters"),  # C1 control (NEL)
    ("a\u2028b", "control characters"),  # line separator
    ("a\u2029b", "control characters"),  # paragraph separator
    ("a\u200bb", "control characters"),  # zero-width space (format character)
    ("a\u202eb", "control characters"),  # right-to-left override (format character)
    ("a\ufeff", "control characters"),  # byte order mark
    ("a" * 256, "longer than 255 bytes"),
    ("é" * 128, "longer than 255 bytes"),  # 128 characters but 256 bytes
    ("名" * 86, "longer than 255 bytes"),  # 258 bytes
    ("a\ud800", "U+D800"),  # lone surrogate: cannot even be encoded as UTF-8
    ("a\udfff", "U+DFFF"),
    ("\ue000", "U+E000"),  # private use: ZooKeeper refuses it
    ("\uf8ff", "U+F8FF"),
    ("a\ufffd", "U+FFFD"),  # ZooKeeper refuses U+FFF0 and up
    ("\uffff", "U+FFFF"),
    ("smile\U0001F600", "U+1F600"),  # outside the BMP: ZooKeeper refuses it
]


@pytest.mark.parametrize("name", GOOD_NAMES, ids=[f"good{i}" for i in range(len(GOOD_NAMES))])
def test_validate_name_accepts_good_names(name: str) -> None:
    assert schema.validate_name("node", name) == name
    assert schema.node(name) == f"/nodes/{name}"
    assert schema.check_path(f"/x/{name}") == f"/x/{name}"


@pytest.mark.parametrize("name,fragment", BAD_NAMES, ids=[f"bad{i}" for i in range(len(BAD_NAMES))])
def test_validate_name_rejects_bad_names(name: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        schema.validate_name("node", name)
    message = str(info.value)
    assert message.startswith("Invalid node name"), message
    assert fragment in message, message
    # The message is one clean line: the hostile characters are escaped, never printed raw.
    assert message.isprintable(), repr(message)
    assert info.value.kind == "invalid_argument"
    # Every builder of a path refuses it the same way.
    with pytest.raises(InvalidArgument, match="Invalid node name"):
        schema.node(name)
    with pytest.raises(InvalidArgument, match="Invalid node name"):
        schema.node_key(name, "daemonstate")
    if "/" not in name:  # with a '/', the joined text is a valid path of other names
        with pytest.raises(InvalidArgument):
            schema.check_path(f"/nodes/{name}")


@pytest.mark.parametrize("value", [None, 5, b"hv1", ["hv1"]])
def test_validate_name_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidArgument, match="Invalid vm name"):
        schema.validate_name("vm", value)


def test_message_quotes_the_name_and_escapes_control_characters() -> None:
    with pytest.raises(InvalidArgument) as info:
        schema.validate_name("vm", "evil\nname")
    assert "'evil\\nname'" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        schema.validate_name("vm", "a/b")
    assert "'a/b'" in str(info.value)


def test_length_limit_counts_utf8_bytes() -> None:
    assert schema.MAX_NAME_BYTES == 255
    assert schema.validate_name("vm", "a" * 254 + "b") == "a" * 254 + "b"
    with pytest.raises(InvalidArgument):
        schema.validate_name("vm", "a" * 254 + "é")  # 254 characters, 256 bytes


def test_node_key() -> None:
    assert schema.node_key("hv1", "daemonstate") == "/nodes/hv1/daemonstate"
    for field in schema.NODE_FIELDS:
        assert schema.node_key("hv1", field) == f"/nodes/hv1/{field}"
        schema.validate_name("field", field)
    with pytest.raises(ValueError, match="unknown node field"):
        schema.node_key("hv1", "ipmipassword")  # the original stored IPMI passwords here; pvc does not
    with pytest.raises(ValueError):
        schema.node_key("hv1", "../domains")


def test_parent() -> None:
    assert schema.parent("/nodes") == "/"
    assert schema.parent("/nodes/hv1") == "/nodes"
    assert schema.parent("/nodes/hv1/daemonstate") == "/nodes/hv1"
    assert schema.parent("/") == "/"


@pytest.mark.parametrize("path", ["/", "/nodes", "/nodes/hv1", "/a/b/c/d", "/...", "/x/" + "a" * 255])
def test_check_path_accepts(path: str) -> None:
    assert schema.check_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "nodes",
        "nodes/hv1",
        "/nodes/",
        "//",
        "//nodes",
        "/nodes//hv1",
        "/nodes/.",
        "/nodes/..",
        "/nodes/../domains",
        "/./nodes",
        "/nodes/hv1\x00",
        "/nodes/hv\n1",
        "/nodes/hv1\x7f",
        "/nodes/hv1\u2028",
        "/nodes/" + "a" * 256,
        "/nodes/\ud800",
        "/nodes/\U0001F600",
    ],
    ids=lambda p: repr(p)[:40],
)
def test_check_path_rejects(path: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        schema.check_path(path)
    assert str(info.value).startswith("Invalid key"), str(info.value)
    assert str(info.value).isprintable()


def test_root_tree_is_valid_and_parents_come_first() -> None:
    paths = [path for path, _ in schema.ROOT_TREE]
    assert len(paths) == len(set(paths))
    for i, path in enumerate(paths):
        assert schema.check_path(path) == path
        up = schema.parent(path)
        assert up == "/" or up in paths[:i], f"{path} comes before its parent {up}"
    # The original's layout (§3.2): the five roots, the Ceph sub-trees, no primary node.
    assert set(schema.ROOTS) == {p for p in paths if schema.parent(p) == "/"}
    assert {"/ceph/osds", "/ceph/pools", "/ceph/volumes", "/ceph/snapshots"} <= set(paths)
    assert dict(schema.ROOT_TREE)[schema.PRIMARY_NODE] == schema.NO_PRIMARY == "none"
