"""Property tests (hypothesis): the fuzzy `limit` rule, name validation, and ACL ordering on both
store engines."""

from __future__ import annotations

import itertools
import re
import unicodedata
import uuid
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, InvalidArgument, NotFound
from pvc.lib.match import select, select_any
from pvc.lib.ops.acl import add_acl, list_acls, remove_acl
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.ops.network import add_network
from pvc.lib.store import Create, Delete

SETTINGS = settings(deadline=None, database=None, derandomize=True, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow])

#: Characters a stored name can hold (see schema.validate_name): no controls, no surrogates or
#: private use, nothing from U+FFF0 up, no '/'.
NAME_CHARS = st.characters(max_codepoint=0xD7FF, blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs", "Co"),
                           blacklist_characters="/")
NAMES = st.text(NAME_CHARS, min_size=1, max_size=20).filter(lambda n: n not in (".", ".."))


# --- the fuzzy limit rule (the original's §2.8) ----------------------------------------------------


@SETTINGS
@given(names=st.lists(NAMES, max_size=8, unique=True), part=st.text(NAME_CHARS, max_size=5))
def test_a_plain_limit_is_a_substring_match(names: list[str], part: str) -> None:
    limit = re.escape(part)
    expected = [n for n in names if part in n]
    assert select(names, limit) == expected
    assert select_any(names, limit, lambda n: n) == expected


@SETTINGS
@given(names=st.lists(NAMES, max_size=8, unique=True), part=st.text(NAME_CHARS, min_size=1, max_size=5))
def test_anchors_make_prefix_suffix_and_exact_matches(names: list[str], part: str) -> None:
    names = names + [part]  # at least one match of each kind
    assert select(names, "^" + re.escape(part)) == [n for n in names if n.startswith(part)]
    assert select(names, re.escape(part) + "$") == [n for n in names if n.endswith(part)]
    assert select(names, "^" + re.escape(part) + "$") == [n for n in names if n == part]


@SETTINGS
@given(names=st.lists(NAMES, max_size=8, unique=True), limit=st.text(max_size=8))
def test_any_limit_selects_in_order_or_is_refused(names: list[str], limit: str) -> None:
    """Whatever the limit: a sub-list of the names in their order, or InvalidArgument (a bad
    regex); no limit selects everything."""
    try:
        chosen = select(names, limit)
    except InvalidArgument:
        return
    positions = [names.index(n) for n in chosen]
    assert positions == sorted(positions) and len(set(chosen)) == len(chosen)
    assert select(names, None) == names and select(names, "") == names


@SETTINGS
@given(items=st.lists(st.tuples(NAMES, NAMES), max_size=6, unique_by=lambda t: t[0]), part=st.text(NAME_CHARS, max_size=3))
def test_an_item_matching_by_either_key_is_listed_once(items: list[tuple[str, str]], part: str) -> None:
    chosen = select_any(items, re.escape(part), lambda t: t[0], lambda t: t[1])
    assert chosen == [t for t in items if part in t[0] or part in t[1]]


# --- name validation -------------------------------------------------------------------------------


def acceptable(value: str) -> bool:
    """The rule of DESIGN.md and schema.validate_name, restated."""
    return (value not in ("", ".", "..") and "/" not in value
            and not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value)
            and not any("\ud800" <= c <= "\uf8ff" or c >= "\ufff0" for c in value)
            and len(value.encode("utf-8")) <= schema.MAX_NAME_BYTES)


@SETTINGS
@given(value=st.one_of(st.text(max_size=30), st.text(NAME_CHARS, min_size=250, max_size=260),
                       st.sampled_from([".", "..", "", "/", "a/b", "\x00", "\u2028", "\ufeff", "\ud800", "😀"])))
def test_validate_name_accepts_exactly_the_storable_names(value: str) -> None:
    if acceptable(value):
        assert schema.validate_name("node", value) == value
        assert schema.node(value) == f"{schema.NODES}/{value}"
    else:
        with pytest.raises(InvalidArgument):
            schema.validate_name("node", value)


@pytest.fixture(scope="module", params=["embedded", pytest.param("zookeeper", marks=pytest.mark.zk)])
def module_core(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster per engine for the whole module (hypothesis runs many examples in one test)."""
    if request.param == "embedded":
        settings_ = Settings(store_path=str(tmp_path_factory.mktemp("props") / "pvc.sqlite"))
    else:
        server = request.getfixturevalue("zk_server")
        chroot = f"/props-{uuid.uuid4().hex[:12]}"
        request.getfixturevalue("zk_admin").commit([Create(chroot)])
        settings_ = Settings(coordinators=(server.hosts,), zk_chroot=chroot)
    core = Cluster(settings_)
    if request.param == "zookeeper":
        init_cluster(core)
    yield core
    core.close()


@settings(deadline=None, database=None, derandomize=True, max_examples=100,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=NAMES)
def test_every_valid_name_is_stored_and_listed_by_both_engines(module_core: Cluster, value: str) -> None:
    """Both engines accept exactly the names validate_name accepts, and give them back unchanged."""
    path = schema.node(value)
    module_core.store.commit([Create(path, "x")])
    try:
        assert value in module_core.store.children(schema.NODES)
        assert module_core.store.get_many([path])[path].value == "x"  # type: ignore[union-attr]
    finally:
        module_core.store.commit([Delete(path)])


# --- ACL ordering ------------------------------------------------------------------------------------

_VNI = itertools.count(100)
DESCRIPTIONS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
STEPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(["in", "out"]), DESCRIPTIONS, st.none() | st.integers(0, 8)),
    st.tuples(st.just("remove"), st.sampled_from(["in", "out"]), DESCRIPTIONS, st.none()),
), min_size=1, max_size=10)


@settings(deadline=None, database=None, derandomize=True, max_examples=50,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_acl_orders_stay_0_to_n_minus_1_in_insertion_order(module_core: Cluster, steps: list[Any]) -> None:
    """After any sequence of adds (at any order, or last) and removes, each direction's rules have
    the orders 0..n-1, in the order a list model predicts; refused steps change nothing."""
    vni = next(_VNI)
    add_network(module_core, vni, f"props{vni}-{uuid.uuid4().hex[:6]}", "managed", ip4_network="10.9.0.0/24",
                ip4_gateway="10.9.0.1")
    model: dict[str, list[str]] = {"in": [], "out": []}
    for action, direction, description, order in steps:
        rules = model[direction]
        if action == "add":
            if description in rules:
                with pytest.raises(AlreadyExists):
                    add_acl(module_core, str(vni), description, direction, f"tcp dport {len(rules)} accept", order)
            else:
                add_acl(module_core, str(vni), description, direction, f"tcp dport {len(rules)} accept", order)
                rules.insert(len(rules) if order is None else min(order, len(rules)), description)
        elif description in rules:
            remove_acl(module_core, str(vni), description, direction)
            rules.remove(description)
        else:
            with pytest.raises(NotFound):
                remove_acl(module_core, str(vni), description, direction)
        for d in ("in", "out"):
            listed = list_acls(module_core, str(vni), direction=d)
            assert [r["description"] for r in listed] == model[d]
            assert [r["order"] for r in listed] == list(range(len(model[d])))
