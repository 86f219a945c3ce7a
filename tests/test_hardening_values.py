"""Issue 11, items 3, 6 and 10: `limit` regexes bounded in time and size, JSON text that is not
Unicode, and loose values (integers, domains, JSON duplicates, VM resources, huge names)."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Callable

import pytest

from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument
from pvc.lib.match import MAX_LIMIT, fuzzy, select, select_any
from pvc.lib.network_rules import check_domain, vni_number
from pvc.lib.ops.network import add_network, list_networks
from pvc.lib.ops.vm import define_vm, list_vms, modify_vm
from pvc.lib.registry import Param, convert
from tests.attack_values import DESCRIPTION, EVIL_LIMIT, measure_loose_values, measure_regex, measure_surrogate
from tests.test_api import assert_error
from tests.test_serve import call, running
from tests.vm_fixtures import new_uuid, snapshot, vm_xml
from tests.wsgi import Client

API = "/api/v1"
NUMBER = Param("A count.", kind="int", name="count")
RATIO = Param("A ratio.", kind="float", name="ratio")
#: Far more than the bound, far less than the run of an unbounded match (minutes for 27 characters).
QUICK = 2.0


def cpu(func: Callable[[], Any]) -> tuple[Any, float]:
    """What ``func`` returned or raised, and the CPU seconds this thread spent on it."""
    started = time.thread_time()
    try:
        outcome: Any = func()
    except Exception as e:  # noqa: BLE001 (the caller looks at it)
        outcome = e
    return outcome, time.thread_time() - started


# --- item 3: `limit` regexes -------------------------------------------------------------------


def test_a_backtracking_limit_is_cut_short() -> None:
    outcome, spent = cpu(lambda: select([DESCRIPTION] * 5, EVIL_LIMIT))
    assert isinstance(outcome, InvalidArgument), outcome
    assert "took longer than the 0.1 s allowed" in outcome.message and "regex_timeout" in outcome.message
    assert spent < 0.5, spent  # with `re`: minutes


def test_the_timeout_bounds_the_whole_request_not_each_name() -> None:
    """A limit that costs a little under the bound on each name must not cost it on every name."""
    names = ["a" * 18 + "!" for _ in range(200)]
    each = cpu(lambda: select(names[:1], EVIL_LIMIT, timeout=10))[1]
    assert each > 0.001, each  # expensive enough for the sum over 200 names to pass the bound
    started = time.monotonic()
    outcome, spent = cpu(lambda: select(names, EVIL_LIMIT, timeout=min(0.1, each * 20)))
    assert isinstance(outcome, InvalidArgument), outcome
    assert spent < 0.5 and time.monotonic() - started < QUICK * 5


def test_the_timeout_is_a_setting_passed_by_the_caller() -> None:
    with pytest.raises(InvalidArgument, match="the 0.02 s allowed"):
        select([DESCRIPTION], EVIL_LIMIT, timeout=0.02)
    assert select_any([("x", DESCRIPTION)], "^x$", lambda i: i[0], lambda i: i[1], timeout=0.02) == [("x", DESCRIPTION)]


@pytest.mark.parametrize("limit", ["(?:a{1000}){1000}", "((a{100}){100}){100}", "(a{4294967294})", "a{99999}",
                                   "x" * (MAX_LIMIT + 1)])
def test_limits_too_large_to_compile_are_refused_before_compiling(limit: str) -> None:
    outcome, spent = cpu(lambda: fuzzy(limit))
    assert isinstance(outcome, InvalidArgument), outcome
    assert "too large" in outcome.message or "longer than" in outcome.message
    assert spent < 0.05, spent  # `regex` itself: 1 s and 280 MB, or all memory


@pytest.mark.parametrize("limit, expected", [
    ("hv1", ["hv1", "hv10", "xhv1"]),
    ("^hv", ["hv1", "hv10", "hv2"]),
    ("hv1$", ["hv1", "xhv1"]),
    ("^hv1$", ["hv1"]),
    ("(?i:HV)2", ["hv2"]),
    (r"^(h)v\d$", ["hv1", "hv2"]),
    (r"^(\w)\1", []),
    (r"^hv(?!1)", ["hv2"]),
    (r"(?<=x)hv", ["xhv1"]),
    ("^hv1.??$", ["hv1", "hv10"]),
    (r"^[a-z]{2}\d{1,2}$", ["hv1", "hv10", "hv2"]),
])
def test_limits_keep_the_original_python_syntax(limit: str, expected: list[str]) -> None:
    names = ["hv1", "hv10", "hv2", "xhv1"]
    assert sorted(select(names, limit)) == expected
    # the same as Python's re with the original's rule
    pattern = (limit if limit.startswith("^") else ".*" + limit) + ("" if "$" in limit else ".*")
    assert sorted(n for n in names if re.match(pattern, n)) == expected


def test_a_bad_limit_is_still_400(client: Client) -> None:
    assert_error(client.get(API + "/node", query={"limit": "("}), 400, "invalid_argument", "Invalid limit '('")


def test_a_backtracking_limit_is_400_over_http(client: Client, core: Cluster) -> None:
    add_network(core, 100, DESCRIPTION, "bridged", domain="x.example")
    started = time.monotonic()
    r = client.get(API + "/network", query={"limit": EVIL_LIMIT})
    assert time.monotonic() - started < QUICK
    assert_error(r, 400, "invalid_argument", "took longer than", "regex_timeout")
    assert [n["vni"] for n in client.get(API + "/network", query={"limit": "^a+!$"}).json()] == [100]


def test_a_long_match_does_not_stop_the_server(tmp_path: Any) -> None:
    """The regex engine releases the GIL while it matches: during a match of several seconds in
    one thread, a real server in the same process answers GET /api/v1 at once (with `re`, the
    answer waited for the match)."""
    with running(Settings(store_path=str(tmp_path / "pvc.sqlite"))) as live:
        started = threading.Event()
        outcome: list[Any] = []

        def long_match() -> None:
            started.set()
            outcome.append(cpu(lambda: select(["a" * 30 + "!"], EVIL_LIMIT, timeout=3.0)))

        worker = threading.Thread(target=long_match, daemon=True)
        worker.start()
        assert started.wait(10)
        latencies = []
        deadline = time.monotonic() + 10
        while worker.is_alive() and len(latencies) < 20 and time.monotonic() < deadline:
            answer = call(live.url, "GET", API)
            assert answer.status == 209
            latencies.append(answer.elapsed)
        worker.join(30)
        assert outcome and isinstance(outcome[0][0], InvalidArgument), outcome
        assert len(latencies) >= 5 and max(latencies) < 1.0, latencies


# --- item 6: JSON text that is not Unicode -----------------------------------------------------


def raw_json(client: Client, method: str, path: str, text: str) -> Any:
    return client.request(method, path, body=text.encode(), content_type="application/json")


@pytest.mark.parametrize("method, path", [("POST", API + "/vm"), ("PUT", API + "/vm/web1")])
def test_a_lone_surrogate_in_xml_is_an_invalid_argument(nodes: Cluster, client: Client, method: str,
                                                        path: str) -> None:
    core = nodes
    define_vm(core, vm_xml("web1", new_uuid()))
    before = snapshot(core)
    r = raw_json(client, method, path, '{"xml": "<domain><name>x\\ud800</name></domain>"}')
    assert_error(r, 510, "invalid_argument", "Value 'xml' is not valid Unicode text", "U+D800")
    r = raw_json(client, method, path, '{"\\udfff": "x"}')
    assert_error(r, 510, "invalid_argument", "not valid Unicode text")
    assert snapshot(core) == before


def test_a_lone_surrogate_on_a_get_is_400(client: Client) -> None:
    assert_error(raw_json(client, "GET", API + "/node", '{"limit": "\\ud83d"}'), 400, "invalid_argument",
                 "not valid Unicode text")


def test_the_library_refuses_a_lone_surrogate_in_xml(nodes: Cluster) -> None:
    core = nodes
    uuid = new_uuid()
    with pytest.raises(InvalidArgument, match="not valid Unicode text"):
        define_vm(core, vm_xml("web1", uuid, description="caf\udce9"))
    define_vm(core, vm_xml("web1", uuid))
    with pytest.raises(InvalidArgument, match="not valid Unicode text"):
        modify_vm(core, "web1", vm_xml("web1", uuid, description="\ud800"))


# --- item 10: loose values ---------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["\u0661\u0660", "1_0", "\uff11\uff10", "10\u00a0", "+10", "0x10", "1e1", "--5",
                                 "1" * 5000, "", "-"])
def test_integers_are_ascii_digits(raw: str) -> None:
    outcome, spent = cpu(lambda: convert(NUMBER, raw))
    assert isinstance(outcome, InvalidArgument), (raw, outcome)
    assert outcome.message.startswith("Invalid value for 'count': ") and outcome.message.endswith("is not an integer.")
    assert len(outcome.message) < 120 and spent < 0.01


@pytest.mark.parametrize("raw, value", [("10", 10), (" 10 ", 10), ("-3", -3), ("007", 7), (12, 12)])
def test_ascii_integers_still_read(raw: Any, value: int) -> None:
    assert convert(NUMBER, raw) == value


@pytest.mark.parametrize("raw", ["\u0661.5", "1_0.5", "nan", "inf", "-Infinity", "1e5000000x"])
def test_numbers_are_ascii_decimal(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a number"):
        convert(RATIO, raw)
    assert convert(RATIO, "1.5e2") == 150.0 and convert(RATIO, ".5") == 0.5


@pytest.mark.parametrize("raw", ["\u0661\u0660", "1_0", "--5", "1" * 5000, " ", "-"])
def test_vni_text_is_ascii_digits(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="it must be an integer"):
        vni_number(raw)
    assert vni_number(" 10 ") == 10 and vni_number("-5") == -5


def test_loose_vnis_write_nothing_over_http(client: Client, core: Cluster) -> None:
    before = snapshot(core)
    for vni in ("\u0661\u0660", "1_0"):
        r = client.post(API + "/network", data={"vni": vni, "description": "n", "nettype": "bridged"})
        assert_error(r, 510, "invalid_argument", "is not an integer")
    assert snapshot(core) == before and list_networks(core) == []


@pytest.mark.parametrize("domain", ["..", "$(id)", "a;b", "a b", "-a.b", "a-.b", "a..b", ".a", "a.", "a_b.c",
                                    "caf\u00e9.example", "a" * 64 + ".b", ("a" * 63 + ".") * 4, "", "a/b"])
def test_domains_are_dns_names(domain: str) -> None:
    with pytest.raises(InvalidArgument, match="DNS domain name|longer than 253"):
        check_domain(domain)


@pytest.mark.parametrize("domain", ["example.org", "a", "a-b.c1", "x" * 63 + ".b", "EXAMPLE.org",
                                    ".".join(["a" * 63] * 3 + ["b" * 61])])
def test_dns_names_are_domains(domain: str) -> None:
    assert check_domain(domain) == domain


def test_bad_domains_write_nothing(client: Client, core: Cluster) -> None:
    before = snapshot(core)
    for domain in ("..", "$(id)", "a;b"):
        r = client.post(API + "/network", data={"vni": "5", "description": "n", "nettype": "bridged",
                                                "domain": domain})
        assert_error(r, 510, "invalid_argument", f"Invalid domain '{domain}'")
    with pytest.raises(InvalidArgument, match="The default domain 'my_net.local'.*give a 'domain'"):
        add_network(core, 6, "my_net", "bridged")
    assert snapshot(core) == before
    add_network(core, 6, "my_net", "bridged", domain="my-net.local")
    assert list_networks(core)[0]["domain"] == "my-net.local"


def test_json_duplicate_names_are_refused_like_form_duplicates(client: Client, core: Cluster) -> None:
    before = snapshot(core)
    r = raw_json(client, "POST", API + "/network",
                 '{"vni": "5", "vni": "6", "description": "n", "nettype": "bridged"}')
    assert_error(r, 510, "invalid_argument", "Value 'vni' is given more than once with different contents.")
    r = client.post(API + "/network", body=b"vni=5&vni=6&description=n&nettype=bridged",
                    content_type="application/x-www-form-urlencoded")
    assert_error(r, 510, "invalid_argument", "Value 'vni' is given more than once with different contents.")
    assert_error(raw_json(client, "GET", API + "/node", '{"limit": "a", "limit": "b"}'), 400, "invalid_argument",
                 "more than once")
    assert snapshot(core) == before
    r = raw_json(client, "POST", API + "/network", '{"vni": "5", "vni": "5", "description": "n", "nettype": "bridged"}')
    assert r.status == 200, r.body  # the same contents twice: fine, as in a form


@pytest.mark.parametrize("memory, vcpu, fragment", [
    ("-1024", "2", "<memory> is -1024"),
    ("0", "2", "<memory> is 0"),
    ("1024", "-2", "<vcpu> is -2"),
    ("1024", "0", "<vcpu> is 0"),
])
def test_vm_resources_must_be_positive(nodes: Cluster, client: Client, memory: str, vcpu: str, fragment: str) -> None:
    core = nodes
    uuid = new_uuid()
    before = snapshot(core)
    with pytest.raises(InvalidArgument, match=re.escape(fragment)):
        define_vm(core, vm_xml("web1", uuid, memory=memory, vcpu=vcpu))
    assert_error(client.post(API + "/vm", data={"xml": vm_xml("web1", uuid, memory=memory, vcpu=vcpu)}), 510,
                 "invalid_argument", fragment)
    assert snapshot(core) == before
    define_vm(core, vm_xml("web1", uuid))
    before = snapshot(core)
    with pytest.raises(InvalidArgument, match=re.escape(fragment)):
        modify_vm(core, "web1", vm_xml("web1", uuid, memory=memory, vcpu=vcpu))
    assert snapshot(core) == before


def test_vm_figures_are_ascii_numbers(nodes: Cluster) -> None:
    core = nodes
    define_vm(core, vm_xml("web1", new_uuid(), memory="\u0661\u0660\u0662\u0664", vcpu="1_0"))
    (vm,) = list_vms(core)
    assert (vm["memory"], vm["vcpu"]) == (None, None)


def test_a_huge_name_is_refused_before_any_work() -> None:
    huge = "a" * (16 * 1024 * 1024) + "\u00e9"
    outcome, spent = cpu(lambda: schema.validate_name("VM", huge))
    assert isinstance(outcome, InvalidArgument) and "longer than 255 bytes" in outcome.message
    assert len(outcome.message) < 100
    assert spent < 0.05, spent  # before: 4 s


def test_a_huge_description_over_http_is_quick(client: Client, core: Cluster) -> None:
    body = json.dumps({"vni": "5", "description": "a" * (16 * 1024 * 1024 - 300) + "\u00e9", "nettype": "bridged"})
    started = time.monotonic()
    r = client.post(API + "/network", body=body.encode(), content_type="application/json")
    assert_error(r, 510, "invalid_argument", "longer than 255 bytes")
    assert time.monotonic() - started < QUICK and len(r.body) < 300
    assert list_networks(core) == []


# --- the replays of the issue's attacks, on a real server -------------------------------------


@pytest.mark.parametrize("measure", [measure_regex, measure_surrogate, measure_loose_values])
def test_the_issue_attacks_pass(tmp_path: Any, measure: Callable[..., dict[str, Any]]) -> None:
    with running(Settings(store_path=str(tmp_path / "pvc.sqlite"))) as live:
        figures = measure(live.url)
        assert figures["passed"], figures
