"""Network ACLs (firewall rules), on both store engines: through the library, the HTTP client and
the CLI runner. "Nothing changed" compares the whole tree, values and versions, before and after;
concurrent writers are threads with their own store session, as separate processes would be."""

from __future__ import annotations

import json
import random
import sys
import threading
from typing import Any, Callable

import pytest

from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, InvalidArgument, NotFound, quote
from pvc.lib.ops.acl import add_acl, get_acl, list_acls, remove_acl
from pvc.lib.retry import ATTEMPTS
from pvc.lib.store import Create
from tests.test_ops_node import changed_keys, snapshot
from tests.wsgi import Client

API = "/api/v1"
BAD_NAMES = ["", "a/b", ".", "..", "ssh\nin", "ssh\x00in", "x" * 256]
BAD_RULES = {
    "": "it must not be empty",
    "   ": "it must not be empty",
    "tcp dport 22 accept\nflush ruleset": "single line",
    "tcp dport 22 accept\r": "single line",
    "tcp dport 22 accept; flush ruleset": "';'",
    "tcp dport 22 accept\x00": "control characters",
    "tcp dport\t22 accept": "control characters",
    "tcp dport 22 accept\u2028flush ruleset": "control characters",
    "tcp dport 22 accept\u200b": "control characters",
    "ip saddr { " + ", ".join(f"10.0.{i // 250}.{i % 250}" for i in range(400)) + " } accept": "longer than 4096",
}
BAD_DIRECTIONS = ["inbound", "IN", "", "in ", "both", "i"]


# --- helpers -------------------------------------------------------------------------------------


def make_network(core: Cluster, vni: str = "1000", description: str = "net1") -> str:
    """A managed network with the original's keys (one commit), as `network add` writes it."""
    fields = {"nettype": "managed", "domain": f"{description}.local", "ip4_network": "10.0.0.0/24",
              "ip4_gateway": "10.0.0.1", "ip6_network": "None", "ip6_gateway": "None", "dhcp4_flag": "True",
              "dhcp6_flag": "False", "dhcp4_start": "10.0.0.100", "dhcp4_end": "10.0.0.200"}
    ops = [Create(schema.network(vni), description)]
    ops += [Create(schema.network_key(vni, f), v) for f, v in fields.items()]
    ops += [Create(schema.network_key(vni, c), "") for c in schema.NETWORK_CONTAINERS]
    ops += [Create(schema.acl_direction(vni, d), "") for d in schema.ACL_DIRECTIONS]
    core.store.commit(ops)
    return vni


@pytest.fixture
def net(core: Cluster) -> str:
    return make_network(core)


def rule_for(i: int) -> str:
    return f"tcp dport {1000 + i} accept"


def names(acls: list[dict[str, Any]]) -> list[str]:
    return [a["description"] for a in acls]


def stored(core: Cluster, vni: str, direction: str) -> dict[str, tuple[str, str]]:
    """description → (order, rule) as the tree holds them."""
    out = {}
    for name in core.store.children(schema.acl_direction(vni, direction)):
        assert core.store.get(schema.acl(vni, direction, name)).value == ""
        assert core.store.children(schema.acl(vni, direction, name)) == ["order", "rule"]
        out[name] = (core.store.get(schema.acl_key(vni, direction, name, "order")).value,
                     core.store.get(schema.acl_key(vni, direction, name, "rule")).value)
    return out


def assert_dense(core: Cluster, vni: str, direction: str) -> list[str]:
    """The orders of a direction are exactly 0..n-1 in the tree and in the listing; the names in order."""
    tree = stored(core, vni, direction)
    assert sorted(int(order) for order, _ in tree.values()) == list(range(len(tree)))
    listed = list_acls(core, vni, direction=direction)
    assert [a["order"] for a in listed] == list(range(len(tree)))
    assert {a["description"]: (str(a["order"]), a["rule"]) for a in listed} == tree
    return names(listed)


# --- adding and listing ------------------------------------------------------------------------


def test_empty_network_lists_nothing(core: Cluster, net: str) -> None:
    assert list_acls(core, net) == []
    assert list_acls(core, net, "ssh", "in") == []


def test_add_writes_the_original_layout_and_lists_json_types(core: Cluster, net: str) -> None:
    assert add_acl(core, net, "ssh-in", "in", "tcp dport 22 accept") == "Firewall rule 'ssh-in' added successfully!"
    add_acl(core, net, "web-out", "out", "tcp dport 443 accept")
    add_acl(core, net, "http-in", "in", "tcp dport 80 accept")
    assert stored(core, net, "in") == {"ssh-in": ("0", "tcp dport 22 accept"), "http-in": ("1", "tcp dport 80 accept")}
    assert stored(core, net, "out") == {"web-out": ("0", "tcp dport 443 accept")}
    assert list_acls(core, net) == [
        {"description": "ssh-in", "direction": "in", "order": 0, "rule": "tcp dport 22 accept"},
        {"description": "http-in", "direction": "in", "order": 1, "rule": "tcp dport 80 accept"},
        {"description": "web-out", "direction": "out", "order": 0, "rule": "tcp dport 443 accept"},
    ]
    assert names(list_acls(core, net, direction="out")) == ["web-out"]
    assert names(list_acls(core, net, direction="in")) == ["ssh-in", "http-in"]


def test_network_by_description(core: Cluster, net: str) -> None:
    make_network(core, "2000", "other")
    add_acl(core, "net1", "ssh-in", "in", "tcp dport 22 accept")
    add_acl(core, "other", "dns-in", "in", "udp dport 53 accept")
    assert names(list_acls(core, "net1")) == names(list_acls(core, "1000")) == ["ssh-in"]
    assert names(list_acls(core, "other")) == ["dns-in"]
    assert get_acl(core, "other", "dns-in")[0]["rule"] == "udp dport 53 accept"
    remove_acl(core, "net1", "ssh-in", "in")
    assert list_acls(core, "1000") == []


def test_on_a_network_made_by_network_add(core: Cluster) -> None:
    from pvc.lib.ops.network import add_network

    add_network(core, 3000, "made", "managed", ip4_network="10.3.0.0/24", ip4_gateway="10.3.0.1")
    add_acl(core, "made", "ssh-in", "in", "tcp dport 22 accept")
    add_acl(core, "3000", "first", "in", "counter accept", 0)
    assert stored(core, "3000", "in") == {"first": ("0", "counter accept"), "ssh-in": ("1", "tcp dport 22 accept")}
    assert names(list_acls(core, "made")) == ["first", "ssh-in"]


def test_rule_text_is_kept_verbatim(core: Cluster, net: str) -> None:
    rule = "ip saddr { 10.0.0.5, 10.0.0.6 } tcp dport { 22, 80 } ct state new counter accept # comment"
    add_acl(core, net, "Allow SSH (hosts)", "in", rule)
    assert get_acl(core, net, "Allow SSH (hosts)") == [
        {"description": "Allow SSH (hosts)", "direction": "in", "order": 0, "rule": rule}]


def model_insert(model: list[str], name: str, order: int | None) -> None:
    model.insert(len(model) if order is None or order > len(model) else order, name)


def test_insert_front_middle_end_of_many_rules(core: Cluster, net: str) -> None:
    model: list[str] = []
    for i in range(12):
        add_acl(core, net, f"r{i}", "in", rule_for(i))
        model_insert(model, f"r{i}", None)
    # Numeric, not string order: r10 (order 10) comes after r2 (order 2), the original's bug L14.
    listed = list_acls(core, net)
    assert names(listed) == model == [f"r{i}" for i in range(12)]
    assert [a["order"] for a in listed] == list(range(12))
    assert names(listed).index("r10") > names(listed).index("r2")
    for name, order in [("front", 0), ("middle", 6), ("past-end", 100), ("at-end", 15), ("second", 1),
                        ("before-last", 15), ("last", None)]:
        add_acl(core, net, name, "in", "counter accept", order)
        model_insert(model, name, order)
        assert assert_dense(core, net, "in") == model
    assert model == ["front", "second", "r0", "r1", "r2", "r3", "r4", "middle", "r5", "r6", "r7", "r8", "r9", "r10",
                     "r11", "before-last", "past-end", "at-end", "last"]
    assert [a["order"] for a in list_acls(core, net)] == list(range(19))
    assert list_acls(core, net, direction="out") == []


def test_insert_renumbers_the_others_in_the_same_write(core: Cluster, net: str) -> None:
    for i in range(3):
        add_acl(core, net, f"r{i}", "in", rule_for(i))
    before = snapshot(core)
    add_acl(core, net, "first", "in", "counter accept", 0)
    changed = changed_keys(before, snapshot(core))
    first = schema.acl(net, "in", "first")
    assert changed == {first, first + "/order", first + "/rule", schema.acl_direction(net, "in")} | {
        schema.acl_key(net, "in", f"r{i}", "order") for i in range(3)}
    assert stored(core, net, "in") == {"first": ("0", "counter accept"), "r0": ("1", rule_for(0)),
                                       "r1": ("2", rule_for(1)), "r2": ("3", rule_for(2))}
    # Appending touches none of the others.
    before = snapshot(core)
    add_acl(core, net, "tail", "in", "counter drop")
    tail = schema.acl(net, "in", "tail")
    assert changed_keys(before, snapshot(core)) == {tail, tail + "/order", tail + "/rule",
                                                     schema.acl_direction(net, "in")}


def test_description_unique_per_direction(core: Cluster, net: str) -> None:
    add_acl(core, net, "ssh", "in", "tcp dport 22 accept")
    add_acl(core, net, "ssh", "out", "tcp dport 22 accept")  # the other direction is another chain
    before = snapshot(core)
    for direction in ("in", "out"):
        with pytest.raises(AlreadyExists, match=f"^A rule with description 'ssh' already exists in direction "
                                                f"'{direction}' of network '1000'.$"):
            add_acl(core, net, "ssh", direction, "counter accept", 0)
    assert snapshot(core) == before
    assert get_acl(core, net, "ssh") == [
        {"description": "ssh", "direction": "in", "order": 0, "rule": "tcp dport 22 accept"},
        {"description": "ssh", "direction": "out", "order": 0, "rule": "tcp dport 22 accept"},
    ]
    assert names(get_acl(core, net, "ssh", "out")) == ["ssh"]


# --- validation: every refusal names the value and writes nothing --------------------------------


@pytest.mark.parametrize("rule, reason", list(BAD_RULES.items()), ids=range(len(BAD_RULES)))
def test_bad_rules_are_refused(core: Cluster, net: str, rule: str, reason: str) -> None:
    add_acl(core, net, "ssh", "in", "tcp dport 22 accept")
    before = snapshot(core)
    with pytest.raises(InvalidArgument) as caught:
        add_acl(core, net, "other", "in", rule)
    message = caught.value.message
    shown = rule if len(rule) <= 4096 else rule[:40] + "..."
    assert message.startswith(f"Invalid rule {quote(shown)}: ") and reason in message, message
    assert snapshot(core) == before


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_descriptions_are_refused(core: Cluster, net: str, bad: str) -> None:
    add_acl(core, net, "ssh", "in", "tcp dport 22 accept")
    before = snapshot(core)
    with pytest.raises(InvalidArgument, match="^Invalid ACL description name"):
        add_acl(core, net, bad, "in", "counter accept")
    with pytest.raises(InvalidArgument, match="^Invalid ACL description name"):
        remove_acl(core, net, bad, "in")
    with pytest.raises(InvalidArgument, match="^Invalid ACL description name"):
        get_acl(core, net, bad)
    assert snapshot(core) == before
    assert not core.store.exists(schema.network_key(net, "firewall_rules") + "/in/a")


@pytest.mark.parametrize("bad", BAD_DIRECTIONS)
def test_bad_directions_are_refused(core: Cluster, net: str, bad: str) -> None:
    add_acl(core, net, "ssh", "in", "tcp dport 22 accept")
    before = snapshot(core)
    expected = f"^Invalid direction '{bad}': it must be 'in' or 'out'.$"
    with pytest.raises(InvalidArgument, match=expected):
        add_acl(core, net, "web", bad, "counter accept")
    with pytest.raises(InvalidArgument, match=expected):
        remove_acl(core, net, "ssh", bad)
    with pytest.raises(InvalidArgument, match=expected):
        list_acls(core, net, direction=bad)
    with pytest.raises(InvalidArgument, match=expected):
        get_acl(core, net, "ssh", bad)
    assert snapshot(core) == before


@pytest.mark.parametrize("order", [-1, -100])
def test_negative_order_is_refused(core: Cluster, net: str, order: int) -> None:
    add_acl(core, net, "ssh", "in", "tcp dport 22 accept")
    before = snapshot(core)
    with pytest.raises(InvalidArgument, match=f"^Invalid order '{order}': it must be a whole number, 0 or more.$"):
        add_acl(core, net, "web", "in", "counter accept", order)
    assert snapshot(core) == before


def test_unknown_network(core: Cluster, net: str) -> None:
    add_acl(core, net, "ssh", "in", "tcp dport 22 accept")
    before = snapshot(core)
    for network in ("1001", "nope", "net"):
        message = f"^Network '{network}' not found.$"
        with pytest.raises(NotFound, match=message):
            add_acl(core, network, "web", "in", "counter accept")
        with pytest.raises(NotFound, match=message):
            remove_acl(core, network, "ssh", "in")
        with pytest.raises(NotFound, match=message):
            list_acls(core, network)
        with pytest.raises(NotFound, match=message):
            get_acl(core, network, "ssh")
    assert snapshot(core) == before


# --- lookups ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit, expected", [
    ("ssh", ["ssh-in", "ssh-admin", "ssh-out"]),
    ("^ssh", ["ssh-in", "ssh-admin", "ssh-out"]),
    ("in$", ["ssh-in", "http-in", "ssh-admin"]),
    ("^ssh-in$", ["ssh-in"]),
    ("h.tp", ["http-in"]),
    ("SSH", []),
    ("", ["ssh-in", "http-in", "ssh-admin", "ssh-out"]),
])
def test_list_limit_is_the_fuzzy_regex_on_the_description(core: Cluster, net: str, limit: str,
                                                         expected: list[str]) -> None:
    add_acl(core, net, "ssh-in", "in", "tcp dport 22 accept")
    add_acl(core, net, "http-in", "in", "tcp dport 80 accept")
    add_acl(core, net, "ssh-admin", "in", "tcp dport 2222 accept")
    add_acl(core, net, "ssh-out", "out", "tcp dport 22 accept")
    assert names(list_acls(core, net, limit)) == expected
    assert names(list_acls(core, net, limit, "out")) == [n for n in expected if n == "ssh-out"]


def test_list_bad_limit_regex(core: Cluster, net: str) -> None:
    add_acl(core, net, "ssh-in", "in", "tcp dport 22 accept")
    with pytest.raises(InvalidArgument, match=r"^Invalid limit '\(':"):
        list_acls(core, net, "(")


@pytest.mark.parametrize("name", ["ssh", "ssh-i", "^ssh-in$", "ssh.in", "SSH-IN", "sh-in"])
def test_get_is_exact(core: Cluster, net: str, name: str) -> None:
    add_acl(core, net, "ssh-in", "in", "tcp dport 22 accept")
    with pytest.raises(NotFound) as caught:
        get_acl(core, net, name)
    assert caught.value.message == f"No firewall rule exists matching description '{name}' in network '1000'."
    with pytest.raises(NotFound, match="in direction 'out' of network '1000'"):
        get_acl(core, net, "ssh-in", "out")
    assert get_acl(core, net, "ssh-in", "in") == get_acl(core, net, "ssh-in") == [
        {"description": "ssh-in", "direction": "in", "order": 0, "rule": "tcp dport 22 accept"}]


# --- removing -------------------------------------------------------------------------------------


def test_remove_renumbers_the_rest(core: Cluster, net: str) -> None:
    model = [f"r{i}" for i in range(12)]
    for i, name in enumerate(model):
        add_acl(core, net, name, "in", rule_for(i))
    add_acl(core, net, "out-rule", "out", "counter accept")
    for name in ("r5", "r0", "r11", "r10", "r3"):
        assert remove_acl(core, net, name, "in") == f"Firewall rule '{name}' removed successfully!"
        model.remove(name)
        assert assert_dense(core, net, "in") == model
        assert not core.store.exists(schema.acl(net, "in", name))
    assert names(list_acls(core, net, direction="out")) == ["out-rule"]
    for name in list(model):
        remove_acl(core, net, name, "in")
    assert list_acls(core, net) == [{"description": "out-rule", "direction": "out", "order": 0, "rule": "counter accept"}]
    assert core.store.children(schema.acl_direction(net, "in")) == []


def test_remove_writes_one_commit(core: Cluster, net: str) -> None:
    for i in range(4):
        add_acl(core, net, f"r{i}", "in", rule_for(i))
    before = snapshot(core)
    remove_acl(core, net, "r1", "in")
    gone = schema.acl(net, "in", "r1")
    assert changed_keys(before, snapshot(core)) == {gone, gone + "/order", gone + "/rule",
                                                     schema.acl_direction(net, "in")} | {
        schema.acl_key(net, "in", f"r{i}", "order") for i in (2, 3)}


def test_remove_unknown_or_wrong_direction(core: Cluster, net: str) -> None:
    add_acl(core, net, "ssh-in", "in", "tcp dport 22 accept")
    before = snapshot(core)
    for name, direction in (("ssh-in", "out"), ("ssh", "in"), ("ssh-in ", "in")):
        with pytest.raises(NotFound, match=f"^No firewall rule exists matching description '{name}' in direction "
                                           f"'{direction}' of network '1000'.$"):
            remove_acl(core, net, name, direction)
    assert snapshot(core) == before


def test_missing_direction_key_of_an_older_tree(core: Cluster, net: str) -> None:
    """A network whose firewall_rules containers are missing gets them with its first rule."""
    core.store.delete_tree(schema.network_key(net, "firewall_rules"))
    assert list_acls(core, net) == []
    with pytest.raises(NotFound):
        remove_acl(core, net, "ssh", "in")
    add_acl(core, net, "ssh", "out", "tcp dport 22 accept")
    assert stored(core, net, "out") == {"ssh": ("0", "tcp dport 22 accept")}
    assert not core.store.exists(schema.acl_direction(net, "in"))


def test_unnumbered_rules_of_a_hand_edited_tree_go_last_and_get_numbers(core: Cluster, net: str) -> None:
    add_acl(core, net, "a", "in", "counter accept")
    add_acl(core, net, "b", "in", "counter accept")
    core.store.commit([Create(schema.acl(net, "in", "z"), ""), Create(schema.acl_key(net, "in", "z", "rule"), "drop"),
                       Create(schema.acl(net, "in", "y"), ""), Create(schema.acl_key(net, "in", "y", "order"), "x"),
                       Create(schema.acl_key(net, "in", "y", "rule"), "drop")])
    assert [(a["description"], a["order"]) for a in list_acls(core, net)] == [("a", 0), ("b", 1), ("y", None),
                                                                               ("z", None)]
    add_acl(core, net, "c", "in", "counter accept", 1)
    assert [(a["description"], a["order"]) for a in list_acls(core, net)] == [
        ("a", 0), ("c", 1), ("b", 2), ("y", 3), ("z", 4)]


# --- concurrency --------------------------------------------------------------------------------


def run_writers(settings: Settings, jobs: list[list[Callable[[Cluster], Any]]],
                check: Callable[[], None] | None = None) -> list[BaseException]:
    """Run each list of jobs on its own thread with its own store session, in rounds: every thread
    waits for the others before each job, so each round is a real race between all of them, and
    ``check`` runs between the rounds (a later commit renumbers, so it would hide a bad round).

    Within a round a writer can lose only to the others' commits of that round, at most
    len(jobs) - 1 < ATTEMPTS of them, so every job that is valid must land."""
    assert len({len(mine) for mine in jobs}) == 1 and len(jobs) <= ATTEMPTS
    barrier = threading.Barrier(len(jobs), action=check)
    errors: list[BaseException] = []

    def worker(mine: list[Callable[[Cluster], Any]]) -> None:
        try:
            with Cluster(settings) as own:
                own.store.exists(schema.NETWORKS)  # connected before the start line
                for job in mine:
                    barrier.wait(30)
                    job(own)
                barrier.wait(30)  # the last round is checked too
        except BaseException as e:  # handed to the test
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(mine,), daemon=True) for mine in jobs]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so their reads and commits interleave
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    return errors


def adder(name: str, order: int | None, direction: str = "in") -> Callable[[Cluster], Any]:
    return lambda own: add_acl(own, "1000", name, direction, f"counter comment \"{name}\" accept", order)


@pytest.mark.parametrize("threads", [2, 4])
def test_concurrent_inserts_into_one_direction(core: Cluster, net: str, threads: int) -> None:
    """Writers racing on one direction all land, with orders 0..n-1 and no duplicates."""
    for i in range(12):
        add_acl(core, net, f"base{i}", "in", rule_for(i))
    rng = random.Random(threads)
    each = 24 // threads
    jobs = [[adder(f"t{t}-{k}", rng.choice([None, None, 0, 6, 11, 50])) for k in range(each)] for t in range(threads)]
    rounds: list[list[str]] = []
    with Cluster(core.settings) as checker:
        errors = run_writers(core.settings, jobs, lambda: rounds.append(assert_dense(checker, net, "in")))
    assert errors == []
    assert [len(r) for r in rounds] == [12 + threads * k for k in range(each + 1)]  # every round, all landed
    listed = assert_dense(core, net, "in")
    assert listed == rounds[-1]
    assert len(listed) == len(set(listed)) == 12 + threads * each
    assert set(listed) == {f"base{i}" for i in range(12)} | {f"t{t}-{k}" for t in range(threads) for k in range(each)}
    assert list_acls(core, net, direction="out") == []


def test_concurrent_inserts_and_removals(core: Cluster, net: str) -> None:
    for i in range(12):
        add_acl(core, net, f"base{i}", "in", rule_for(i))
    add_acl(core, net, "keep-out", "out", "counter accept")
    removals = [lambda own, i=i: remove_acl(own, "1000", f"base{i}", "in") for i in (0, 3, 6, 9)]
    inserts = [adder(f"new{k}", order) for k, order in enumerate((0, 2, None, 5))]
    other_direction = [adder(f"out{k}", 0, "out") for k in range(4)]
    sizes: list[tuple[int, int]] = []
    with Cluster(core.settings) as checker:
        errors = run_writers(core.settings, [removals, inserts, other_direction],
                             lambda: sizes.append((len(assert_dense(checker, net, "in")),
                                                   len(assert_dense(checker, net, "out")))))
    assert errors == []
    assert sizes == [(12, 1), (12, 2), (12, 3), (12, 4), (12, 5)]  # one removal and one insert per round
    listed = assert_dense(core, net, "in")
    assert set(listed) == {f"base{i}" for i in (1, 2, 4, 5, 7, 8, 10, 11)} | {f"new{k}" for k in range(4)}
    assert assert_dense(core, net, "out") == ["out3", "out2", "out1", "out0", "keep-out"]


def test_concurrent_same_description_lands_once(core: Cluster, net: str) -> None:
    results: list[str] = []

    def job(own: Cluster) -> None:
        try:
            add_acl(own, "1000", "same", "in", "counter accept", 0)
            results.append("added")
        except AlreadyExists:
            results.append("exists")

    errors = run_writers(core.settings, [[job] for _ in range(4)])
    assert errors == []
    assert sorted(results) == ["added", "exists", "exists", "exists"]
    assert stored(core, net, "in") == {"same": ("0", "counter accept")}


# --- HTTP -----------------------------------------------------------------------------------------


def assert_error(r: Any, status: int, *fragments: str) -> None:
    assert r.status == status, (r.status, r.body)
    body = r.json()
    for fragment in fragments:
        assert fragment in body["message"], body


def test_http_add_list_get_remove(client: Client, core: Cluster, net: str) -> None:
    path = f"{API}/network/1000/acl"
    r = client.post(path, data={"description": "ssh-in", "direction": "in", "rule": "tcp dport 22 accept"})
    assert (r.status, r.json()) == (200, {"message": "Firewall rule 'ssh-in' added successfully!"})
    r = client.post(f"{API}/network/net1/acl", json={"description": "first", "direction": "in",
                                                       "rule": "ct state established accept", "order": 0})
    assert r.status == 200, r.body
    r = client.post(path + "?description=web&direction=out&rule=tcp+dport+443+accept&order=7")
    assert r.status == 200, r.body
    r = client.get(path)
    assert r.status == 200
    assert r.json() == [
        {"description": "first", "direction": "in", "order": 0, "rule": "ct state established accept"},
        {"description": "ssh-in", "direction": "in", "order": 1, "rule": "tcp dport 22 accept"},
        {"description": "web", "direction": "out", "order": 0, "rule": "tcp dport 443 accept"},
    ]
    assert names(client.get(path, query={"direction": "out"}).json()) == ["web"]
    assert names(client.get(path, query={"limit": "^s"}).json()) == ["ssh-in"]
    assert names(client.get(path, query={"limit": "zzz"}).json()) == []
    assert client.get(path + "/ssh-in").json() == [
        {"description": "ssh-in", "direction": "in", "order": 1, "rule": "tcp dport 22 accept"}]
    assert_error(client.get(path + "/ssh"), 404, "'ssh'")
    assert_error(client.get(path + "/ssh-in", query={"direction": "out"}), 404, "'ssh-in'")
    r = client.delete(path + "/first", query={"direction": "in"})
    assert (r.status, r.json()) == (200, {"message": "Firewall rule 'first' removed successfully!"})
    assert client.get(path + "/ssh-in").json()[0]["order"] == 0


def test_http_refusals(client: Client, core: Cluster, net: str) -> None:
    path = f"{API}/network/1000/acl"
    ssh = {"description": "ssh", "direction": "in", "rule": "tcp dport 22 accept"}
    assert client.post(path, data=ssh).status == 200
    before = snapshot(core)
    good = {"description": "web", "direction": "in", "rule": "tcp dport 80 accept"}
    cases = [
        ({**good, "direction": "inbound"}, "'inbound'"),
        ({**good, "direction": ""}, "''"),
        ({**good, "rule": "tcp dport 80 accept\nflush ruleset"}, "'tcp dport 80 accept\\nflush ruleset'"),
        ({**good, "rule": "tcp dport 80 accept; flush ruleset"}, "'tcp dport 80 accept; flush ruleset'"),
        ({**good, "rule": ""}, "Invalid rule ''"),
        ({**good, "description": "a/b"}, "'a/b'"),
        ({**good, "description": "ssh"}, "'ssh' already exists"),
        ({**good, "order": "-1"}, "'-1'"),
        ({**good, "order": "two"}, "'two'"),
        ({**good, "order": ""}, "''"),
        ({k: v for k, v in good.items() if k != "rule"}, "Missing value 'rule'"),
        ({k: v for k, v in good.items() if k != "direction"}, "Missing value 'direction'"),
        ({**good, "limit": "x"}, "Unknown value 'limit'"),
    ]
    for data, fragment in cases:
        assert_error(client.post(path, data=data), 510, fragment)
    assert_error(client.post(f"{API}/network/1001/acl", data=good), 510, "Network '1001' not found.")
    assert_error(client.delete(path + "/ssh"), 510, "Missing value 'direction'")
    assert_error(client.delete(path + "/ssh", query={"direction": "sideways"}), 510, "'sideways'")
    assert_error(client.delete(path + "/ssh", query={"direction": "out"}), 510, "'ssh'", "'out'")
    assert_error(client.delete(path + "/nope", query={"direction": "in"}), 510, "'nope'")
    assert_error(client.delete(f"{API}/network/nope/acl/ssh", query={"direction": "in"}), 510, "'nope'")
    assert snapshot(core) == before
    # Reads: a bad direction or regex is 400, an unknown network or rule 404.
    assert_error(client.get(path, query={"direction": "sideways"}), 400, "'sideways'")
    assert_error(client.get(path, query={"limit": "("}), 400, "'('")
    assert_error(client.get(path + "/ssh", query={"direction": "x"}), 400, "'x'")
    assert_error(client.get(f"{API}/network/1001/acl"), 404, "'1001'")
    assert_error(client.get(f"{API}/network/1001/acl/ssh"), 404, "'1001'")
    assert snapshot(core) == before


def test_http_insertion_order_of_many(client: Client, net: str) -> None:
    path = f"{API}/network/1000/acl"
    model: list[str] = []
    for i in range(12):
        assert client.post(path, data={"description": f"r{i}", "direction": "out", "rule": rule_for(i)}).status == 200
        model_insert(model, f"r{i}", None)
    for name, order in (("front", 0), ("middle", 7), ("end", 99)):
        assert client.post(path, data={"description": name, "direction": "out", "rule": "counter accept",
                                       "order": str(order)}).status == 200
        model_insert(model, name, order)
    listed = client.get(path).json()
    assert names(listed) == model
    assert [a["order"] for a in listed] == list(range(15))


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_add_list_remove(cli: Callable[..., Any], core: Cluster, net: str) -> None:
    r = cli("network", "acl", "add", "1000", "-d", "ssh-in", "--direction", "in", "-r", "tcp dport 22 accept")
    assert (r.exit_code, r.stdout) == (0, "Firewall rule 'ssh-in' added successfully!\n")
    for i in range(11):
        assert cli("network", "acl", "add", "net1", "--description", f"r{i}", "--direction", "in",
                   "--rule", rule_for(i)).exit_code == 0
    r = cli("network", "acl", "add", "1000", "-d", "first", "--direction", "in", "-r", "counter accept", "-o", "0")
    assert r.exit_code == 0, r.output
    r = cli("network", "acl", "list", "1000")
    assert r.exit_code == 0, r.output
    lines = r.stdout.rstrip("\n").split("\n")
    assert lines[0].split() == ["Direction", "Order", "Description", "Rule"]
    rows = [line.split(None, 3) for line in lines[1:]]
    assert [row[1] for row in rows] == [str(i) for i in range(13)]  # 10 after 9, not after 1
    assert [row[2] for row in rows] == ["first", "ssh-in"] + [f"r{i}" for i in range(11)]
    assert rows[1] == ["in", "1", "ssh-in", "tcp dport 22 accept"]
    r = cli("network", "acl", "list", "1000", "r1", "--format", "json")
    assert names(json.loads(r.stdout)) == ["r1", "r10"]
    r = cli("network", "acl", "list", "1000", "--direction", "out", "--format", "json")
    assert (r.exit_code, json.loads(r.stdout)) == (0, [])
    r = cli("network", "acl", "info", "1000", "ssh-in", "--format", "json")
    assert json.loads(r.stdout) == [{"description": "ssh-in", "direction": "in", "order": 1,
                                     "rule": "tcp dport 22 accept"}]
    # Removing asks first; no answer removes nothing.
    before = snapshot(core)
    r = cli("network", "acl", "remove", "1000", "first", "--direction", "in", input="n\n")
    assert r.exit_code == 1 and "Really remove" in r.output
    assert snapshot(core) == before
    r = cli("network", "acl", "remove", "1000", "first", "--direction", "in", input="y\n")
    assert r.exit_code == 0 and "Firewall rule 'first' removed successfully!" in r.stdout
    r = cli("network", "acl", "remove", "net1", "r5", "--direction", "in", "--yes")
    assert (r.exit_code, r.stdout) == (0, "Firewall rule 'r5' removed successfully!\n")
    assert assert_dense(core, net, "in") == ["ssh-in"] + [f"r{i}" for i in range(11) if i != 5]


def test_cli_refusals(cli: Callable[..., Any], core: Cluster, net: str) -> None:
    assert cli("network", "acl", "add", "1000", "-d", "ssh", "--direction", "in", "-r", "accept").exit_code == 0
    before = snapshot(core)
    base = ["network", "acl", "add", "1000", "-d", "web", "--direction", "in"]
    r = cli(*base, "-r", "tcp dport 80 accept; flush ruleset")
    assert r.exit_code == 2 and "Invalid rule 'tcp dport 80 accept; flush ruleset'" in r.stderr
    r = cli(*base, "-r", "accept\nflush ruleset")
    assert r.exit_code == 2 and "'accept\\nflush ruleset'" in r.stderr
    r = cli(*base, "-r", "accept", "-o", "-1")
    assert r.exit_code == 2 and "Invalid order '-1'" in r.stderr
    r = cli("network", "acl", "add", "1000", "-d", "ssh", "--direction", "in", "-r", "accept")
    assert r.exit_code == 4 and "'ssh' already exists" in r.stderr
    r = cli("network", "acl", "add", "1000", "-d", "web", "--direction", "inbound", "-r", "accept")
    assert r.exit_code == 2 and "'inbound'" in r.stderr
    r = cli("network", "acl", "add", "1001", "-d", "web", "--direction", "in", "-r", "accept")
    assert r.exit_code == 3 and "Network '1001' not found." in r.stderr
    r = cli("network", "acl", "remove", "1000", "nope", "--direction", "in", "--yes")
    assert r.exit_code == 3 and "'nope'" in r.stderr
    r = cli("network", "acl", "remove", "1000", "ssh", "--yes")
    assert r.exit_code == 2 and "direction" in r.stderr.lower()
    r = cli("network", "acl", "list", "1000", "--direction", "sideways")
    assert r.exit_code == 2 and "'sideways'" in r.stderr
    r = cli("network", "acl", "info", "1000", "ss")
    assert r.exit_code == 3 and "'ss'" in r.stderr
    assert snapshot(core) == before


@pytest.mark.parametrize("how", [["--in"], ["--out"], ["--direction", "in"], ["--direction", "out"]])
def test_cli_in_out_flags_of_the_original(cli: Callable[..., Any], core: Cluster, net: str, how: list[str]) -> None:
    """`--in` / `--out` (the original's §5.2) mean `--direction in|out` on add, remove, list and info."""
    direction = how[-1].lstrip("-")
    other = "out" if direction == "in" else "in"
    add_acl(core, net, "both", other, "counter accept")
    r = cli("network", "acl", "add", net, "-d", "web", *how, "-r", "tcp dport 80 accept")
    assert (r.exit_code, r.stdout) == (0, "Firewall rule 'web' added successfully!\n"), r.output
    r = cli("network", "acl", "add", net, "-d", "both", *how, "-r", "accept", "-o", "0")
    assert r.exit_code == 0, r.output
    assert stored(core, net, direction) == {"both": ("0", "accept"), "web": ("1", "tcp dport 80 accept")}
    r = cli("network", "acl", "list", net, *how, "--format", "json")
    assert (r.exit_code, [(a["direction"], a["description"]) for a in json.loads(r.stdout)]) == \
        (0, [(direction, "both"), (direction, "web")]), r.output
    r = cli("network", "acl", "info", net, "both", *how, "--format", "json")
    assert (r.exit_code, json.loads(r.stdout)) == (0, [{"description": "both", "direction": direction, "order": 0,
                                                        "rule": "accept"}]), r.output
    r = cli("network", "acl", "remove", net, "both", *how, "--yes")
    assert (r.exit_code, r.stdout) == (0, "Firewall rule 'both' removed successfully!\n"), r.output
    assert stored(core, net, direction) == {"web": ("0", "tcp dport 80 accept")}
    assert stored(core, net, other) == {"both": ("0", "counter accept")}


def test_cli_without_direction(cli: Callable[..., Any], core: Cluster, net: str) -> None:
    """list and info take either direction without one; add and remove need one (exit 2, nothing written)."""
    add_acl(core, net, "ssh", "in", "tcp dport 22 accept")
    add_acl(core, net, "ssh", "out", "tcp sport 22 accept")
    r = cli("network", "acl", "list", net, "--format", "json")
    assert (r.exit_code, [(a["direction"], a["description"]) for a in json.loads(r.stdout)]) == \
        (0, [("in", "ssh"), ("out", "ssh")]), r.output
    r = cli("network", "acl", "info", net, "ssh", "--format", "json")
    assert (r.exit_code, [a["direction"] for a in json.loads(r.stdout)]) == (0, ["in", "out"]), r.output
    before = snapshot(core)
    for args in (["add", net, "-d", "web", "-r", "accept"], ["remove", net, "ssh", "--yes"], ["remove", net, "ssh"]):
        r = cli("network", "acl", *args, input="y\n")
        assert r.exit_code == 2, (args, r.output)
        assert "--direction" in r.stderr and "--in/--out" in r.stderr, r.stderr
        assert r.stdout == ""
        assert snapshot(core) == before


@pytest.mark.parametrize("args", [["--in", "--out"], ["--out", "--in"], ["--in", "--direction", "out"],
                                  ["--direction", "in", "--out"]])
def test_cli_contradicting_directions_are_refused(cli: Callable[..., Any], core: Cluster, net: str,
                                                  args: list[str]) -> None:
    """Two directions on one command line are a usage error (exit 2), not "the last one wins"."""
    add_acl(core, net, "ssh", "in", "tcp dport 22 accept")
    before = snapshot(core)
    for command in (["add", net, "-d", "web", "-r", "accept"], ["remove", net, "ssh", "--yes"], ["list", net]):
        r = cli("network", "acl", *command, *args)
        assert r.exit_code == 2, (command, args, r.output)
        assert "contradict" in r.stderr, r.stderr
        assert snapshot(core) == before
