"""DHCP leases and static reservations of a network, on both store engines: through the library,
the HTTP client (at both element paths) and the CLI runner. Refusals leave the whole tree
unchanged; concurrent reservations are threads with their own store session."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.dhcp_leases import dhcp_host_lines, record_lease
from pvc.lib.errors import AlreadyExists, InvalidArgument, InvalidState, NotFound
from pvc.lib.ops.lease import add_lease, get_lease, list_leases, remove_lease
from pvc.lib.ops.network import add_network
from tests.test_ops_network import assert_cli_failed, assert_failed
from tests.test_ops_node import changed_keys, snapshot
from tests.wsgi import Client

API = "/api/v1"
MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


@pytest.fixture
def net(core: Cluster) -> Cluster:
    """'lan' (VNI 100): 10.1.0.0/24, gateway .1, DHCP .100-.199; 'up' (VNI 200): bridged; 'v6' (300)."""
    add_network(core, 100, "lan", "managed", ip4_network="10.1.0.0/24", ip4_gateway="10.1.0.1", dhcp4=True,
                dhcp4_start="10.1.0.100", dhcp4_end="10.1.0.199")
    add_network(core, 200, "up", "bridged")
    add_network(core, 300, "v6", "managed", ip6_network="fd00::/64")
    return core


def reservation(core: Cluster, mac: str) -> dict[str, str]:
    return {"": core.store.get(schema.reservation("100", mac)).value,
            **{f: core.store.get(schema.reservation_key("100", mac, f)).value for f in schema.RESERVATION_FIELDS}}


# --- add ------------------------------------------------------------------------------------------


def test_add_writes_the_original_layout(net: Cluster) -> None:
    before = snapshot(net)
    assert add_lease(net, "lan", "52:54:00:AB:cd:EF", "10.1.0.10", "web1") == \
        "Static DHCP reservation of 10.1.0.10 for '52:54:00:ab:cd:ef' added to network 'lan' (VNI 100)."
    mac = "52:54:00:ab:cd:ef"
    assert reservation(net, mac) == {"": "static", "ipaddr": "10.1.0.10", "hostname": "web1"}
    container = schema.network_key("100", "dhcp4_reservations")
    assert changed_keys(before, snapshot(net)) == {
        container, schema.reservation("100", mac),
        *(schema.reservation_key("100", mac, f) for f in ("ipaddr", "hostname"))}
    add_lease(net, "100", MAC2, "10.1.0.150")  # inside the DHCP range is allowed ("ideally outside")
    assert reservation(net, MAC2)["hostname"] == "None"


def test_add_through_http_and_cli(net: Cluster, client: Client, cli: Callable[..., Any]) -> None:
    r = client.request("POST", f"{API}/network/lan/lease",
                       data={"macaddress": MAC1, "ipaddress": "10.1.0.11", "hostname": "a"})
    assert r.status == 200 and "'52:54:00:00:00:01'" in r.json()["message"]
    result = cli("network", "lease", "add", "100", MAC2, "10.1.0.12", "--hostname", "b")
    assert result.exit_code == 0, result.output
    result = cli("network", "dhcp", "add", "lan", MAC3, "10.1.0.13")  # the original's group name
    assert result.exit_code == 0, result.output
    assert [(e["mac_address"], e["ip4_address"], e["hostname"]) for e in list_leases(net, "lan")] == [
        (MAC1, "10.1.0.11", "a"), (MAC2, "10.1.0.12", "b"), (MAC3, "10.1.0.13", None)]


REFUSED = [
    ("lan", "52:54:00:00:00", "10.1.0.10", None, InvalidArgument, ["'52:54:00:00:00'"]),
    ("lan", "52-54-00-00-00-01", "10.1.0.10", None, InvalidArgument, ["'52-54-00-00-00-01'", "':'"]),
    ("lan", "52:54:00:00:00:0g", "10.1.0.10", None, InvalidArgument, ["'52:54:00:00:00:0g'"]),
    ("lan", " 52:54:00:00:00:01", "10.1.0.10", None, InvalidArgument, ["' 52:54:00:00:00:01'"]),
    ("lan", "525400000001", "10.1.0.10", None, InvalidArgument, ["'525400000001'"]),
    ("lan", MAC2, "999.300.1.1", None, InvalidArgument, ["'999.300.1.1'"]),  # the original accepted it (L12)
    ("lan", MAC2, "10.1.0", None, InvalidArgument, ["'10.1.0'"]),
    ("lan", MAC2, "fd00::5", None, InvalidArgument, ["'fd00::5'"]),
    ("lan", MAC2, "10.2.0.10", None, InvalidArgument, ["'10.2.0.10'", "not inside", "10.1.0.0/24"]),
    ("lan", MAC2, "10.1.0.1", None, InvalidArgument, ["'10.1.0.1'", "gateway"]),
    ("lan", MAC2, "10.1.0.0", None, InvalidArgument, ["'10.1.0.0'", "network address"]),
    ("lan", MAC2, "10.1.0.255", None, InvalidArgument, ["'10.1.0.255'", "broadcast"]),
    ("lan", MAC2, "10.1.0.20", "bad host", InvalidArgument, ["'bad host'"]),
    ("lan", MAC2, "10.1.0.20", "-x", InvalidArgument, ["'-x'"]),
    ("lan", MAC1, "10.1.0.20", None, AlreadyExists, ["'52:54:00:00:00:01'", "10.1.0.10"]),
    ("lan", MAC1.upper(), "10.1.0.20", None, AlreadyExists, ["'52:54:00:00:00:01'"]),
    ("lan", MAC2, "10.1.0.10", None, AlreadyExists, ["'10.1.0.10'", "'52:54:00:00:00:01'"]),
    ("up", MAC2, "10.1.0.20", None, InvalidState, ["'up'", "no IPv4 network"]),
    ("v6", MAC2, "10.1.0.20", None, InvalidState, ["'v6'", "no IPv4 network"]),
    ("nope", MAC2, "10.1.0.20", None, NotFound, ["'nope'"]),
    ("999", MAC2, "10.1.0.20", None, NotFound, ["'999'"]),
]


@pytest.mark.parametrize("network, mac, ip, hostname, error, fragments", REFUSED)
def test_add_refused_everywhere_and_nothing_written(net: Cluster, client: Client, cli: Callable[..., Any],
                                                    network: str, mac: str, ip: str, hostname: str | None,
                                                    error: type, fragments: list[str]) -> None:
    add_lease(net, "lan", MAC1, "10.1.0.10")
    before = snapshot(net)
    with pytest.raises(error) as caught:
        add_lease(net, network, mac, ip, hostname)
    assert all(f in caught.value.message for f in fragments), caught.value.message
    values = {"macaddress": mac, "ipaddress": ip, **({"hostname": hostname} if hostname else {})}
    assert_failed(client.request("POST", f"{API}/network/{network}/lease", data=values), 510, *fragments)
    code = {InvalidArgument: 2, NotFound: 3, AlreadyExists: 4, InvalidState: 4}[error]
    args = ["network", "lease", "add", network, mac, ip] + (["--hostname", hostname] if hostname else [])
    assert_cli_failed(cli(*args), code, *fragments)
    assert snapshot(net) == before


@pytest.mark.parametrize("missing", ["macaddress", "ipaddress"])
def test_add_missing_value(net: Cluster, client: Client, missing: str) -> None:
    before = snapshot(net)
    values = {k: v for k, v in {"macaddress": MAC1, "ipaddress": "10.1.0.10"}.items() if k != missing}
    assert_failed(client.request("POST", f"{API}/network/lan/lease", data=values), 510, f"'{missing}'")
    assert snapshot(net) == before


def race(settings: Any, jobs: list[tuple[str, str]]) -> list[str]:
    """Each (mac, ip) reservation added by its own thread and store session, all at once."""
    results: list[str] = []
    barrier = threading.Barrier(len(jobs))

    def job(mac: str, ip: str) -> None:
        with Cluster(settings) as own:
            own.store.exists(schema.NETWORKS)
            barrier.wait(30)
            try:
                add_lease(own, "lan", mac, ip)
                results.append(f"added {mac} {ip}")
            except AlreadyExists:
                results.append("exists")

    threads = [threading.Thread(target=job, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(jobs)
    return results


def test_concurrent_adds_of_one_mac_land_once(net: Cluster) -> None:
    results = race(net.settings, [(MAC1, f"10.1.0.{10 + i}") for i in range(5)])
    assert sorted(results).count("exists") == 4
    (won,) = [r for r in results if r.startswith("added")]
    assert [(e["mac_address"], e["ip4_address"]) for e in list_leases(net, "lan")] == [(MAC1, won.split()[-1])]


def test_concurrent_adds_of_one_address_land_once(net: Cluster) -> None:
    results = race(net.settings, [(f"52:54:00:00:01:0{i}", "10.1.0.50") for i in range(5)])
    assert sorted(results).count("exists") == 4
    assert [e["ip4_address"] for e in list_leases(net, "lan")] == ["10.1.0.50"]


# --- list and get ---------------------------------------------------------------------------------


@pytest.fixture
def leases(net: Cluster) -> Cluster:
    """Reservations for MAC1 and MAC3, dynamic leases for MAC2 and MAC3."""
    add_lease(net, "lan", MAC3, "10.1.0.13", "three")
    add_lease(net, "lan", MAC1, "10.1.0.11", "one")
    record_lease(net, "100", MAC2, "10.1.0.120", "two", 1700000000, "01:52:54")
    record_lease(net, "100", MAC3, "10.1.0.13", None, 1700000500)
    return net


EVERYTHING = [
    {"mac_address": MAC1, "ip4_address": "10.1.0.11", "hostname": "one", "timestamp": None, "static": True},
    {"mac_address": MAC2, "ip4_address": "10.1.0.120", "hostname": "two", "timestamp": 1700000000, "static": False},
    {"mac_address": MAC3, "ip4_address": "10.1.0.13", "hostname": None, "timestamp": 1700000500, "static": False},
    {"mac_address": MAC3, "ip4_address": "10.1.0.13", "hostname": "three", "timestamp": None, "static": True},
]


def test_list_marks_dynamic_and_static(leases: Cluster, client: Client) -> None:
    assert list_leases(leases, "lan") == EVERYTHING
    r = client.request("GET", f"{API}/network/lan/lease")
    assert r.status == 200 and r.json() == EVERYTHING
    static = [e for e in EVERYTHING if e["static"]]
    assert list_leases(leases, "100", static=True) == static
    r = client.request("GET", f"{API}/network/100/lease", query={"static": "true"})
    assert r.status == 200 and r.json() == static
    assert list_leases(leases, "up") == []


@pytest.mark.parametrize("limit, static, macs", [
    ("03", False, [MAC3, MAC3]),
    ("03", True, [MAC3]),
    (":02$", False, [MAC2]),
    ("^52:54", True, [MAC1, MAC3]),
    ("ff", False, []),
])
def test_list_fuzzy_limit_on_mac(leases: Cluster, client: Client, limit: str, static: bool, macs: list[str]) -> None:
    assert [e["mac_address"] for e in list_leases(leases, "lan", limit, static)] == macs
    query = {"limit": limit, **({"static": "1"} if static else {})}
    r = client.request("GET", f"{API}/network/lan/lease", query=query)
    assert r.status == 200 and [e["mac_address"] for e in r.json()] == macs


def test_list_errors(leases: Cluster, client: Client, cli: Callable[..., Any]) -> None:
    assert_failed(client.request("GET", f"{API}/network/lan/lease", query={"limit": "("}), 400, "'('")
    assert_failed(client.request("GET", f"{API}/network/nope/lease"), 404, "'nope'")
    assert_cli_failed(cli("network", "lease", "list", "nope"), 3, "'nope'")


@pytest.mark.parametrize("path", ["lease", "dhcp"])
def test_get_is_exact_at_both_paths(leases: Cluster, client: Client, path: str) -> None:
    assert get_lease(leases, "lan", MAC1.upper()) == [EVERYTHING[0]]
    r = client.request("GET", f"{API}/network/lan/{path}/{MAC2}")
    assert r.status == 200 and r.json() == [EVERYTHING[1]]
    r = client.request("GET", f"{API}/network/100/{path}/{MAC3}")
    assert r.status == 200 and r.json() == EVERYTHING[2:]
    assert_failed(client.request("GET", f"{API}/network/lan/{path}/52:54:00:00:00:09"), 404,
                  "'52:54:00:00:00:09'")
    assert_failed(client.request("GET", f"{API}/network/lan/{path}/52:54:00"), 400, "'52:54:00'")
    assert_failed(client.request("GET", f"{API}/network/nope/{path}/{MAC1}"), 404, "'nope'")


def test_cli_list_and_info(leases: Cluster, cli: Callable[..., Any]) -> None:
    result = cli("network", "lease", "list", "lan")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines == [["Hostname", "IP", "Address", "MAC", "Address", "Timestamp"],
                     ["one", "10.1.0.11", MAC1, "static"], ["two", "10.1.0.120", MAC2, "1700000000"],
                     ["None", "10.1.0.13", MAC3, "1700000500"], ["three", "10.1.0.13", MAC3, "static"]]
    result = cli("network", "dhcp", "list", "lan", "--static", "--format", "json")
    assert result.exit_code == 0 and '"static": true' in result.stdout and '"static": false' not in result.stdout
    result = cli("network", "lease", "info", "lan", MAC2)
    assert result.exit_code == 0 and result.stdout.splitlines()[1].split() == ["two", "10.1.0.120", MAC2,
                                                                               "1700000000"]
    assert_cli_failed(cli("network", "lease", "info", "lan", "52:54:00:00:00:09"), 3, "'52:54:00:00:00:09'")


def test_reservations_reach_dnsmasq(leases: Cluster) -> None:
    """The hosts file is read from dhcp4_reservations (the original's daemon watched another key, D1)."""
    assert dhcp_host_lines(leases, "100") == [f"{MAC1},10.1.0.11,one", f"{MAC3},10.1.0.13,three"]
    add_lease(leases, "lan", MAC2, "10.1.0.12")
    assert dhcp_host_lines(leases, "100")[1] == f"{MAC2},10.1.0.12"


# --- remove ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["lease", "dhcp"])
def test_remove_by_mac_at_both_paths(leases: Cluster, client: Client, path: str) -> None:
    before = snapshot(leases)
    r = client.request("DELETE", f"{API}/network/lan/{path}/{MAC1.upper()}")
    assert r.status == 200 and r.json() == {
        "message": "Static DHCP reservation '52:54:00:00:00:01' removed from network 'lan' (VNI 100)."}
    gone = schema.reservation("100", MAC1)
    assert changed_keys(before, snapshot(leases)) == {gone, gone + "/ipaddr", gone + "/hostname"}
    # MAC3's reservation goes, its dynamic lease stays
    assert remove_lease(leases, "100", MAC3).startswith("Static DHCP reservation '52:54:00:00:00:03' removed")
    assert list_leases(leases, "lan") == EVERYTHING[1:3]


@pytest.mark.parametrize("lease, error, fragments", [
    (MAC2, NotFound, ["'52:54:00:00:00:02'", "dynamic lease"]),
    ("52:54:00:00:00:09", NotFound, ["'52:54:00:00:00:09'"]),
    ("10.1.0.11", InvalidArgument, ["'10.1.0.11'"]),  # not by IP or hostname any more: a MAC
    ("one", InvalidArgument, ["'one'"]),
])
def test_remove_refused(leases: Cluster, client: Client, cli: Callable[..., Any], lease: str, error: type,
                        fragments: list[str]) -> None:
    before = snapshot(leases)
    with pytest.raises(error) as caught:
        remove_lease(leases, "lan", lease)
    assert all(f in caught.value.message for f in fragments), caught.value.message
    assert_failed(client.request("DELETE", f"{API}/network/lan/dhcp/{lease}"), 510, *fragments)
    assert_cli_failed(cli("network", "lease", "remove", "lan", lease), 3 if error is NotFound else 2, *fragments)
    assert_failed(client.request("DELETE", f"{API}/network/nope/lease/{MAC1}"), 510, "'nope'")
    assert snapshot(leases) == before


def test_cli_remove(leases: Cluster, cli: Callable[..., Any]) -> None:
    result = cli("network", "lease", "remove", "lan", MAC1)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Static DHCP reservation '52:54:00:00:00:01' removed from network 'lan' (VNI 100).\n"
    assert not leases.store.exists(schema.reservation("100", MAC1))
