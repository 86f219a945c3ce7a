"""Virtual networks, on both store engines: through the library, the HTTP client and the CLI
runner. Every refused value is checked on all three, each time with the whole tree (values and
versions) unchanged; concurrent writers are threads with their own store session."""

from __future__ import annotations

import ipaddress
import re
import threading
import uuid
from typing import Any, Callable

import pytest

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, InvalidArgument, InvalidState, NotFound
from pvc.lib.ops.network import (
    add_network,
    complete_networks,
    get_network,
    list_networks,
    modify_network,
    remove_network,
    resolve_vni,
)
from pvc.lib.store import Create
from tests.test_ops_node import changed_keys, snapshot
from tests.wsgi import Client

API = "/api/v1"
IP4 = {"ip4_network": "10.1.0.0/24", "ip4_gateway": "10.1.0.1", "dhcp4": True, "dhcp4_start": "10.1.0.100",
       "dhcp4_end": "10.1.0.199"}
VALID = {"vni": 100, "description": "net1", "nettype": "managed", **IP4}
#: The CLI's long option of each value (the original's spelling where it had one).
OPTIONS = {"description": "--description", "nettype": "--type", "domain": "--domain", "ip4_network": "--ipnet",
           "ip4_gateway": "--gateway", "ip6_network": "--ipnet6", "ip6_gateway": "--gateway6",
           "dhcp4_start": "--dhcp-start", "dhcp4_end": "--dhcp-end"}


def network_keys(vni: str) -> set[str]:
    """Every key `network add` writes for ``vni``."""
    return ({schema.network(vni)} | {schema.network_key(vni, f) for f in schema.NETWORK_FIELDS}
            | {schema.network_key(vni, c) for c in schema.NETWORK_CONTAINERS}
            | {schema.acl_direction(vni, d) for d in schema.ACL_DIRECTIONS})


def stored(core: Cluster, vni: str) -> dict[str, str]:
    """The network's values as the tree holds them ('' for its description)."""
    entries = core.store.get_many([schema.network(vni)] + [schema.network_key(vni, f) for f in schema.NETWORK_FIELDS])
    return {"": entries[schema.network(vni)].value,
            **{f: entries[schema.network_key(vni, f)].value for f in schema.NETWORK_FIELDS}}


def with_values(**changes: Any) -> dict[str, Any]:
    """VALID with ``changes``; a value of None leaves the value out."""
    return {k: v for k, v in {**VALID, **changes}.items() if v is not None}


def http_values(values: dict[str, Any]) -> dict[str, str]:
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in values.items()}


def cli_args(values: dict[str, Any], element: str | None = None) -> list[str]:
    args = [element if element is not None else str(values["vni"])]
    for name, value in values.items():
        if name == "vni":
            continue
        if name == "dhcp4":
            args.append("--dhcp" if value else "--no-dhcp")
        else:
            args += [OPTIONS[name], str(value)]
    return args


def assert_failed(r: Any, status: int, *fragments: str) -> None:
    assert r.status == status, r.text
    message = r.json()["message"]
    for fragment in fragments:
        assert fragment in message, message


def assert_cli_failed(result: Any, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture
def existing(core: Cluster) -> Cluster:
    """Two networks to collide with: 200 'taken' (bridged) and 300 'other' (managed, IPv6 only)."""
    add_network(core, 200, "taken", "bridged")
    add_network(core, 300, "other", "managed", ip6_network="fd00:3::/64")
    return core


# --- add ------------------------------------------------------------------------------------------


def test_add_managed_writes_the_original_layout_in_one_commit(core: Cluster) -> None:
    before = snapshot(core)
    trips = core.store.round_trips
    message = add_network(core, 100, "net1", "managed", ip6_network="fd00:1:2:3:0:0:0:0/64", **IP4)
    assert message == "Network 'net1' (VNI 100) added."
    # One batch each: the networks key, the VNI's key, the VNI list, their descriptions; then one
    # commit. Writing the keys in more than one commit would take more round trips.
    assert core.store.round_trips - trips == 5
    assert changed_keys(before, snapshot(core)) == network_keys("100") | {schema.NETWORKS}
    assert stored(core, "100") == {
        "": "net1", "nettype": "managed", "domain": "net1.local", "ip4_network": "10.1.0.0/24",
        "ip4_gateway": "10.1.0.1", "ip6_network": "fd00:1:2:3::/64", "ip6_gateway": "fd00:1:2:3::1",
        "dhcp4_flag": "True", "dhcp6_flag": "True", "dhcp4_start": "10.1.0.100", "dhcp4_end": "10.1.0.199"}
    for container in ("dhcp4_leases", "dhcp4_reservations", "firewall_rules"):
        assert core.store.get(schema.network_key("100", container)).value == ""
    assert core.store.children(schema.network_key("100", "firewall_rules")) == ["in", "out"]
    assert core.store.children(schema.network_key("100", "dhcp4_leases")) == []


def test_add_bridged_stores_unset_values_as_the_original(core: Cluster) -> None:
    assert add_network(core, 4094, "uplink", "bridged") == "Network 'uplink' (VNI 4094) added."
    assert stored(core, "4094") == {
        "": "uplink", "nettype": "bridged", "domain": "uplink.local", "ip4_network": "None", "ip4_gateway": "None",
        "ip6_network": "None", "ip6_gateway": "None", "dhcp4_flag": "False", "dhcp6_flag": "False",
        "dhcp4_start": "None", "dhcp4_end": "None"}
    assert get_network(core, "4094") == [{
        "vni": 4094, "description": "uplink", "type": "bridged", "domain": "uplink.local",
        "ip4": {"network": None, "gateway": None, "dhcp_flag": False, "dhcp_start": None, "dhcp_end": None},
        "ip6": {"network": None, "gateway": None, "dhcp_flag": False}}]


@pytest.mark.parametrize("net, gateway, stored_net, stored_gateway", [
    ("fd00:1::/64", None, "fd00:1::/64", "fd00:1::1"),
    ("fd00:1:2:3:0:0:0:0/64", None, "fd00:1:2:3::/64", "fd00:1:2:3::1"),  # the original made ...:0:01 (L18)
    ("FD00:0001::/48", None, "fd00:1::/48", "fd00:1::1"),
    ("fd00:1::/127", None, "fd00:1::/127", "fd00:1::1"),
    ("fd00:1::/64", "fd00:1::fe", "fd00:1::/64", "fd00:1::fe"),
    ("fd00:1::/64", "fd00:1:0::00fe", "fd00:1::/64", "fd00:1::fe"),
])
def test_ip6_gateway_default_and_normal_form(core: Cluster, net: str, gateway: str | None, stored_net: str,
                                             stored_gateway: str) -> None:
    add_network(core, 16777215, "v6", "managed", ip6_network=net, ip6_gateway=gateway)
    values = stored(core, "16777215")
    assert (values["ip6_network"], values["ip6_gateway"], values["dhcp6_flag"]) == (stored_net, stored_gateway, "True")
    assert (values["ip4_network"], values["dhcp4_flag"]) == ("None", "False")


def test_add_with_domain_and_without_dhcp(core: Cluster) -> None:
    add_network(core, 1, "n", "managed", domain="example.org", ip4_network="192.168.0.0/30", ip4_gateway="192.168.0.1")
    assert get_network(core, "n")[0] == {
        "vni": 1, "description": "n", "type": "managed", "domain": "example.org",
        "ip4": {"network": "192.168.0.0/30", "gateway": "192.168.0.1", "dhcp_flag": False, "dhcp_start": None,
                "dhcp_end": None},
        "ip6": {"network": None, "gateway": None, "dhcp_flag": False}}


def test_empty_optional_values_are_not_given(core: Cluster, client: Client) -> None:
    r = client.request("POST", f"{API}/network", data={"vni": "7", "description": "e", "nettype": "bridged",
                                                       "domain": "", "ip4_network": "", "dhcp4_start": ""})
    assert r.status == 200, r.text
    assert stored(core, "7")["domain"] == "e.local" and stored(core, "7")["ip4_network"] == "None"


BRIDGED_UNSET = {"nettype": "bridged", "ip4_network": "None", "ip4_gateway": "None", "ip6_network": "None",
                 "ip6_gateway": "None", "dhcp4_flag": "False", "dhcp6_flag": "False", "dhcp4_start": "None",
                 "dhcp4_end": "None"}


@pytest.mark.parametrize("given, ignored", [
    ({"ip4_network": "10.1.0.0/24", "dhcp4": True}, "ip4_network and dhcp4 were ignored"),
    (IP4, "ip4_network, ip4_gateway, dhcp4, dhcp4_start and dhcp4_end were ignored"),
    ({"ip6_network": "fd00::/64"}, "ip6_network was ignored"),
    # not used, so not checked either
    ({"ip4_network": "junk", "ip6_gateway": "fd00::1", "dhcp4_end": "x"},
     "ip4_network, ip6_gateway and dhcp4_end were ignored"),
    ({"ip4_gateway": "10.1.0.1", "ip6_gateway": "fd00::1"}, "ip4_gateway and ip6_gateway were ignored"),
    ({"dhcp4": False}, None),
])
def test_add_bridged_ignores_ip_and_dhcp_values(core: Cluster, client: Client, cli: Callable[..., Any],
                                                given: dict[str, Any], ignored: str | None) -> None:
    """The manual: "All additional optional values are ignored by this type"; none is stored, and
    the message names what was ignored."""
    def expected(name: str, vni: int) -> str:
        note = f"; a bridged network takes no IP or DHCP values, so {ignored}" if ignored else ""
        return f"Network '{name}' (VNI {vni}) added{note}."

    assert add_network(core, 10, "lib", "bridged", domain="lib.example", **given) == expected("lib", 10)
    r = client.request("POST", f"{API}/network", data=http_values({"vni": 11, "description": "http",
                                                                   "nettype": "bridged", **given}))
    assert (r.status, r.json()) == (200, {"message": expected("http", 11)})
    result = cli("network", "add", *cli_args({"vni": 12, "description": "cli", "nettype": "bridged", **given}))
    assert (result.exit_code, result.stdout) == (0, expected("cli", 12) + "\n"), result.output
    assert stored(core, "10") == {"": "lib", "domain": "lib.example", **BRIDGED_UNSET}
    assert stored(core, "11") == {"": "http", "domain": "http.local", **BRIDGED_UNSET}
    assert stored(core, "12") == {"": "cli", "domain": "cli.local", **BRIDGED_UNSET}
    assert [n["ip4"]["network"] for n in list_networks(core)] == [None, None, None]


@pytest.mark.parametrize("gateway, note", [
    ("fd00:2::1", "ip6_gateway 'fd00:2::1' is not inside fd00:1::/64; using fd00:1::1"),
    ("junk", "ip6_gateway 'junk' is not an IPv6 address; using fd00:1::1"),
    ("10.1.0.1", "ip6_gateway '10.1.0.1' is not an IPv6 address; using fd00:1::1"),
    ("fd00:1::", "ip6_gateway 'fd00:1::' is the network address of fd00:1::/64; using fd00:1::1"),
])
def test_add_invalid_ip6_gateway_falls_back_to_the_default(core: Cluster, client: Client, cli: Callable[..., Any],
                                                           gateway: str, note: str) -> None:
    """The manual: "If ip6_network is specified but ip6_gateway is not specified or is invalid,
    default to <ip6_network>::1"; the message says so."""
    assert add_network(core, 10, "lib", "managed", ip6_network="fd00:1::/64", ip6_gateway=gateway) == \
        f"Network 'lib' (VNI 10) added; {note}."
    r = client.request("POST", f"{API}/network", data={"vni": "11", "description": "http", "nettype": "managed",
                                                       "ip6_network": "fd00:1::/64", "ip6_gateway": gateway})
    assert (r.status, r.json()) == (200, {"message": f"Network 'http' (VNI 11) added; {note}."})
    result = cli("network", "add", "12", "-d", "cli", "-p", "managed", "--ipnet6", "fd00:1::/64",
                 f"--gateway6={gateway}")
    assert (result.exit_code, result.stdout) == (0, f"Network 'cli' (VNI 12) added; {note}.\n"), result.output
    for vni in ("10", "11", "12"):
        values = stored(core, vni)
        assert (values["ip6_network"], values["ip6_gateway"], values["dhcp6_flag"]) == ("fd00:1::/64", "fd00:1::1",
                                                                                        "True")


@pytest.mark.parametrize("changes, fragments", [
    ({"ip6_gateway": "fd00:9::1"}, ["'fd00:9::1'", "not inside the network fd00:1::/64"]),
    ({"ip6_gateway": "junk"}, ["'junk'", "not an IPv6 address"]),
    ({"ip6_gateway": "10.1.0.1"}, ["'10.1.0.1'", "not an IPv6 address"]),
    ({"ip6_gateway": "fd00:1::"}, ["'fd00:1::'", "network address of fd00:1::/64"]),
    ({"ip6_network": "fd00:2::/64", "ip6_gateway": "bad"}, ["'bad'", "not an IPv6 address"]),
    ({"ip6_network": "fd00:2::/64", "ip6_gateway": "fd00:1::fe"}, ["'fd00:1::fe'", "fd00:2::/64"]),
    ({"domain": "x.example", "ip6_gateway": "fd00:1::zz"}, ["'fd00:1::zz'"]),
])
def test_modify_invalid_ip6_gateway_is_refused(core: Cluster, client: Client, cli: Callable[..., Any],
                                               changes: dict[str, str], fragments: list[str]) -> None:
    """The manual's default for an invalid ip6_gateway is add's: on modify it would replace a
    custom gateway with ::1 because of a typo, so the modify is refused, naming the value, and
    nothing changes."""
    add_network(core, 10, "v6", "managed", ip6_network="fd00:1::/64", ip6_gateway="fd00:1::fe")
    before = snapshot(core)
    with pytest.raises(InvalidArgument) as caught:
        modify_network(core, "v6", **changes)
    assert caught.value.message.startswith("Invalid 'ip6_gateway' "), caught.value.message
    assert all(f in caught.value.message for f in fragments), caught.value.message
    assert snapshot(core) == before
    assert_failed(client.request("PUT", f"{API}/network/v6", data=changes), 510, *fragments)
    assert snapshot(core) == before
    args = [f"{OPTIONS[k]}={v}" for k, v in changes.items()]
    assert_cli_failed(cli("network", "modify", "v6", *args), 2, *fragments)
    assert snapshot(core) == before
    assert stored(core, "10")["ip6_gateway"] == "fd00:1::fe"


def test_modify_ip6_gateway_default_only_when_missing(core: Cluster, client: Client, cli: Callable[..., Any]) -> None:
    """A new ip6_network without a gateway, or an empty ip6_gateway, gets the ::1 default; a
    valid gateway given on modify is taken."""
    add_network(core, 10, "v6", "managed", ip6_network="fd00:1::/64", ip6_gateway="fd00:1::fe")
    assert modify_network(core, "v6", ip6_gateway="fd00:1::fd") == "Network 'v6' (VNI 10) modified."
    assert stored(core, "10")["ip6_gateway"] == "fd00:1::fd"
    r = client.request("PUT", f"{API}/network/v6", data={"ip6_network": "fd00:2::/64"})
    assert (r.status, r.json()) == (200, {"message": "Network 'v6' (VNI 10) modified."})
    assert (stored(core, "10")["ip6_network"], stored(core, "10")["ip6_gateway"]) == ("fd00:2::/64", "fd00:2::1")
    result = cli("network", "modify", "v6", "--gateway6", "fd00:2::fe")
    assert (result.exit_code, result.stdout) == (0, "Network 'v6' (VNI 10) modified.\n"), result.output
    assert stored(core, "10")["ip6_gateway"] == "fd00:2::fe"
    result = cli("network", "modify", "v6", "--gateway6=")  # empty: not given, so the default
    assert (result.exit_code, result.stdout) == (0, "Network 'v6' (VNI 10) modified.\n"), result.output
    assert stored(core, "10")["ip6_gateway"] == "fd00:2::1"
    r = client.request("PUT", f"{API}/network/v6", data={"ip6_network": "fd00:3::/64", "ip6_gateway": "fd00:3::7"})
    assert r.status == 200, r.text
    assert (stored(core, "10")["ip6_network"], stored(core, "10")["ip6_gateway"]) == ("fd00:3::/64", "fd00:3::7")


#: (values changed from VALID, fragments the message must contain)
REFUSED = [
    ({"vni": 0}, ["'0'", "1 to 16777215"]),
    ({"vni": 16777216}, ["'16777216'"]),
    ({"vni": -1}, ["'-1'"]),
    ({"vni": 4095, "nettype": "bridged", **dict.fromkeys(IP4)}, ["'4095'", "1 to 4094"]),
    ({"description": "has space"}, ["'has space'", "whitespace"]),
    ({"description": "tab\there"}, ["'tab\\there'"]),
    ({"description": "a/b"}, ["'a/b'"]),
    ({"description": ".."}, ["'..'"]),
    ({"description": "123"}, ["'123'", "digits"]),
    ({"description": ""}, ["must not be empty"]),
    ({"nettype": "unmanagedX"}, ["'unmanagedX'"]),
    ({"nettype": "Managed"}, ["'Managed'"]),
    # a bridged network ignores IP values, but not a bad VNI, description or domain
    ({"nettype": "bridged", "vni": 4095}, ["'4095'", "1 to 4094"]),
    ({"nettype": "bridged", "vni": 5, "description": "a b", "ip4_network": "junk"}, ["'a b'", "whitespace"]),
    ({"nettype": "bridged", "vni": 5, "domain": "x y", "ip6_gateway": "junk"}, ["'x y'"]),
    ({**dict.fromkeys(IP4)}, ["'ip4_network' or 'ip6_network'"]),
    ({"ip4_network": "10.1.0.0"}, ["'10.1.0.0'", "CIDR"]),
    ({"ip4_network": "10.1.0.5/24"}, ["'10.1.0.5/24'", "host bits", "10.1.0.0/24"]),
    ({"ip4_network": "300.1.0.0/24"}, ["'300.1.0.0/24'"]),
    ({"ip4_network": "fd00::/64"}, ["'fd00::/64'"]),
    ({"ip4_network": "10.1.0.0/31"}, ["'10.1.0.0/31'"]),
    ({"ip4_network": "10.1.0.0/24 "}, ["'10.1.0.0/24 '"]),
    ({"ip4_gateway": None}, ["'ip4_gateway'", "'10.1.0.0/24'"]),
    ({"ip4_gateway": "10.2.0.1"}, ["'10.2.0.1'", "not inside"]),
    ({"ip4_gateway": "10.1.0.0"}, ["'10.1.0.0'", "network address"]),
    ({"ip4_gateway": "10.1.0.255"}, ["'10.1.0.255'", "broadcast"]),
    ({"ip4_gateway": "junk"}, ["'junk'"]),
    ({"ip4_network": None, "ip4_gateway": "10.1.0.1", "dhcp4": None, "dhcp4_start": None, "dhcp4_end": None,
      "ip6_network": "fd00::/64"}, ["'ip4_gateway'", "'10.1.0.1'", "without"]),
    ({"ip6_network": "fd00:1::1/64"}, ["'fd00:1::1/64'", "host bits"]),
    ({"ip6_network": "fd00:1::/128"}, ["'fd00:1::/128'"]),
    ({"ip6_network": "10.0.0.0/8"}, ["'10.0.0.0/8'"]),
    ({"ip6_network": "fd00:1::1/64", "ip6_gateway": "junk"}, ["'fd00:1::1/64'", "host bits"]),  # no default then
    ({"dhcp4_start": None}, ["'dhcp4_start'"]),
    ({"dhcp4_end": None}, ["'dhcp4_end'"]),
    ({"dhcp4_start": "10.2.0.100"}, ["'10.2.0.100'", "not inside"]),
    ({"dhcp4_end": "10.1.0.255"}, ["'10.1.0.255'", "broadcast"]),
    ({"dhcp4_start": "bogus"}, ["'bogus'"]),
    ({"dhcp4_start": "10.1.0.200", "dhcp4_end": "10.1.0.100"}, ["'10.1.0.200'", "'10.1.0.100'"]),
    ({"ip4_gateway": "10.1.0.150"}, ["'10.1.0.150'", "gateway"]),
    ({"ip4_network": None, "ip4_gateway": None, "ip6_network": "fd00::/64"}, ["'dhcp4'", "'ip4_network'"]),
    ({"dhcp4": None}, ["'dhcp4_start'", "'10.1.0.100'", "not switched on"]),
    ({"dhcp4": False, "dhcp4_start": None}, ["'dhcp4_end'", "'10.1.0.199'"]),
    ({"domain": "has space"}, ["'has space'"]),
]


@pytest.mark.parametrize("changes, fragments", REFUSED)
def test_add_refused_everywhere_and_nothing_written(existing: Cluster, client: Client, cli: Callable[..., Any],
                                                    changes: dict[str, Any], fragments: list[str]) -> None:
    core = existing
    values = with_values(**changes)
    before = snapshot(core)
    with pytest.raises(InvalidArgument) as caught:
        add_network(core, **values)
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    assert snapshot(core) == before
    assert_failed(client.request("POST", f"{API}/network", data=http_values(values)), 510, *fragments)
    assert snapshot(core) == before
    assert_cli_failed(cli("network", "add", *cli_args(values)), 2, *fragments)
    assert snapshot(core) == before


@pytest.mark.parametrize("raw", ["abc", "1.5", "", "0x10"])
def test_add_vni_not_an_integer(existing: Cluster, client: Client, cli: Callable[..., Any], raw: str) -> None:
    before = snapshot(existing)
    with pytest.raises(InvalidArgument, match=f"'{raw}'"):
        add_network(existing, raw, "n", "bridged")  # type: ignore[arg-type]
    assert_failed(client.request("POST", f"{API}/network", data={"vni": raw, "description": "n", "nettype": "bridged"}),
                  510, f"'{raw}'", "integer")
    assert_cli_failed(cli("network", "add", raw, "-d", "n", "-p", "bridged"), 2, f"'{raw}'")
    assert snapshot(existing) == before


@pytest.mark.parametrize("missing", ["vni", "description", "nettype"])
def test_add_missing_mandatory_value(existing: Cluster, client: Client, missing: str) -> None:
    before = snapshot(existing)
    values = {k: v for k, v in http_values(VALID).items() if k != missing}
    assert_failed(client.request("POST", f"{API}/network", data=values), 510, f"'{missing}'")
    assert snapshot(existing) == before


@pytest.mark.parametrize("changes, error, fragments", [
    ({"vni": 200}, "exists", ["VNI 200"]),
    ({"vni": 300, "nettype": "bridged", **dict.fromkeys(IP4)}, "exists", ["VNI 300"]),
    ({"description": "taken"}, "exists", ["'taken'", "VNI 200"]),
    ({"description": "other", "vni": 301}, "exists", ["'other'"]),
])
def test_add_vni_and_description_are_unique(existing: Cluster, client: Client, cli: Callable[..., Any],
                                            changes: dict[str, Any], error: str, fragments: list[str]) -> None:
    core = existing
    values = with_values(**changes)
    before = snapshot(core)
    with pytest.raises(AlreadyExists) as caught:
        add_network(core, **values)
    assert all(f in caught.value.message for f in fragments), caught.value.message
    assert_failed(client.request("POST", f"{API}/network", data=http_values(values)), 510, *fragments)
    assert_cli_failed(cli("network", "add", *cli_args(values)), 4, *fragments)
    assert snapshot(core) == before


def test_add_through_http_and_cli(core: Cluster, client: Client, cli: Callable[..., Any]) -> None:
    r = client.request("POST", f"{API}/network", json={**VALID, "dhcp4": True})
    assert r.status == 200 and r.json() == {"message": "Network 'net1' (VNI 100) added."}
    result = cli("network", "add", "101", "-d", "net2", "-p", "managed", "-i", "10.2.0.0/24", "-g", "10.2.0.1",
                 "-i6", "fd00:2::/64", "-g6", "fd00:2::2", "--dhcp", "--dhcp-start", "10.2.0.10", "--dhcp-end",
                 "10.2.0.20", "-n", "two.example")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Network 'net2' (VNI 101) added.\n"
    assert stored(core, "101") == {
        "": "net2", "nettype": "managed", "domain": "two.example", "ip4_network": "10.2.0.0/24",
        "ip4_gateway": "10.2.0.1", "ip6_network": "fd00:2::/64", "ip6_gateway": "fd00:2::2", "dhcp4_flag": "True",
        "dhcp6_flag": "True", "dhcp4_start": "10.2.0.10", "dhcp4_end": "10.2.0.20"}
    assert stored(core, "100")["dhcp4_flag"] == "True"


def test_concurrent_adds_of_one_description_land_once(core: Cluster) -> None:
    """Writers with their own sessions add the same description under different VNIs (and the same
    VNI under different descriptions): exactly one of each lands."""
    results: dict[str, list[str]] = {"description": [], "vni": []}
    barrier = threading.Barrier(8)

    def job(kind: str, vni: int, description: str) -> None:
        with Cluster(core.settings) as own:
            own.store.exists(schema.NETWORKS)
            barrier.wait(30)
            try:
                add_network(own, vni, description, "bridged")
                results[kind].append("added")
            except AlreadyExists:
                results[kind].append("exists")

    threads = [threading.Thread(target=job, args=("description", 10 + i, "same")) for i in range(4)]
    threads += [threading.Thread(target=job, args=("vni", 20, f"d{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results["description"]) == ["added", "exists", "exists", "exists"]
    assert sorted(results["vni"]) == ["added", "exists", "exists", "exists"]
    listed = list_networks(core)
    assert [n["description"] for n in listed].count("same") == 1
    assert [n["vni"] for n in listed].count(20) == 1
    assert len(listed) == 2


# --- list and get ---------------------------------------------------------------------------------


@pytest.fixture
def several(core: Cluster) -> Cluster:
    for vni, description in ((1000, "office"), (2, "uplink"), (100, "net100"), (10, "lab"), (4000, "dmz-10")):
        add_network(core, vni, description, "bridged")
    return core


def test_list_is_sorted_by_vni_numerically(several: Cluster, client: Client) -> None:
    assert [n["vni"] for n in list_networks(several)] == [2, 10, 100, 1000, 4000]
    r = client.request("GET", f"{API}/network")
    assert r.status == 200 and [n["vni"] for n in r.json()] == [2, 10, 100, 1000, 4000]
    assert r.json() == list_networks(several)


def test_list_empty(core: Cluster, client: Client) -> None:
    assert list_networks(core) == []
    r = client.request("GET", f"{API}/network", query={"limit": "x"})
    assert (r.status, r.json()) == (200, [])


@pytest.mark.parametrize("limit, vnis", [
    ("10", [10, 100, 1000, 4000]),  # VNI 10, 100, 1000 and description dmz-10; net100 only once
    ("100", [100, 1000]),
    ("^10", [10, 100, 1000]),
    ("0$", [10, 100, 1000, 4000]),
    ("^100$", [100]),
    ("net", [100]),
    ("^(lab|office)$", [10, 1000]),
    ("nothing", []),
])
def test_list_fuzzy_limit_on_vni_and_description(several: Cluster, client: Client, limit: str, vnis: list[int]) -> None:
    assert [n["vni"] for n in list_networks(several, limit)] == vnis
    r = client.request("GET", f"{API}/network", query={"limit": limit})
    assert r.status == 200 and [n["vni"] for n in r.json()] == vnis


def test_list_bad_regex(several: Cluster, client: Client, cli: Callable[..., Any]) -> None:
    with pytest.raises(InvalidArgument, match=r"^Invalid limit '\('"):
        list_networks(several, "(")
    assert_failed(client.request("GET", f"{API}/network", query={"limit": "("}), 400, "'('")
    assert_cli_failed(cli("network", "list", "("), 2, "'('")


@pytest.mark.parametrize("name, vni", [("100", 100), ("net100", 100), ("10", 10), ("lab", 10), ("dmz-10", 4000)])
def test_get_is_exact(several: Cluster, client: Client, name: str, vni: int) -> None:
    (found,) = get_network(several, name)
    assert found["vni"] == vni
    r = client.request("GET", f"{API}/network/{name}")
    assert r.status == 200 and r.json() == [found]
    assert resolve_vni(several, name) == str(vni)


@pytest.mark.parametrize("name", ["1", "net", "100$", "^lab$", "LAB", "0100", "99999"])
def test_get_unknown_is_404(several: Cluster, client: Client, cli: Callable[..., Any], name: str) -> None:
    with pytest.raises(NotFound, match=re.escape(f"Network '{name}' not found.")):
        get_network(several, name)
    assert_failed(client.request("GET", f"{API}/network/{name}"), 404, f"'{name}'")
    assert_cli_failed(cli("network", "info", name), 3, f"'{name}'")


def test_cli_list_and_info_tables(core: Cluster, cli: Callable[..., Any]) -> None:
    add_network(core, 100, "net1", "managed", ip6_network="fd00:1::/64", **IP4)
    add_network(core, 20, "up", "bridged")
    result = cli("network", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["VNI", "Description", "Type", "Domain", "IPv6", "DHCPv6", "IPv4", "DHCPv4"]
    assert lines[1].split() == ["20", "up", "bridged", "up.local", "False", "False", "False", "False"]
    assert lines[2].split() == ["100", "net1", "managed", "net1.local", "True", "True", "True", "True"]
    info = cli("network", "info", "net1").stdout
    for label, value in (("VNI", "100"), ("Type", "managed"), ("IPv6 gateway", "fd00:1::1"),
                         ("IPv4 network", "10.1.0.0/24"), ("DHCPv4 range", "10.1.0.100 - 10.1.0.199")):
        assert any(line.startswith(f"{label}:") and line.endswith(value) for line in info.splitlines()), info
    assert "IPv4" not in cli("network", "info", "20").stdout
    assert cli("network", "list", "--format", "json").stdout.strip().startswith('[{"description": "up"')


def test_completion_offers_vnis_and_descriptions(several: Cluster) -> None:
    assert complete_networks(several, "") == ["2", "10", "100", "1000", "4000", "dmz-10", "lab", "net100", "office",
                                              "uplink"]
    assert complete_networks(several, "10") == ["10", "100", "1000"]
    assert complete_networks(several, "n") == ["net100"]


# --- modify ---------------------------------------------------------------------------------------


@pytest.fixture
def net1(core: Cluster) -> Cluster:
    add_network(core, 100, "net1", "managed", **IP4)
    add_network(core, 200, "taken", "bridged")
    return core


def test_modify_switches_dhcp_off(net1: Cluster, client: Client) -> None:
    before = snapshot(net1)
    r = client.request("PUT", f"{API}/network/net1", data={"dhcp4": "false"})
    assert r.status == 200 and r.json() == {"message": "Network 'net1' (VNI 100) modified."}
    keys = {schema.network_key("100", f) for f in ("dhcp4_flag", "dhcp4_start", "dhcp4_end")}
    assert changed_keys(before, snapshot(net1)) == keys
    values = stored(net1, "100")
    assert (values["dhcp4_flag"], values["dhcp4_start"], values["dhcp4_end"]) == ("False", "None", "None")
    assert get_network(net1, "100")[0]["ip4"] == {"network": "10.1.0.0/24", "gateway": "10.1.0.1",
                                                  "dhcp_flag": False, "dhcp_start": None, "dhcp_end": None}
    # and on again, with a new range
    assert modify_network(net1, "100", dhcp4=True, dhcp4_start="10.1.0.2", dhcp4_end="10.1.0.9") \
        == "Network 'net1' (VNI 100) modified."
    assert stored(net1, "100")["dhcp4_start"] == "10.1.0.2"


def test_modify_through_cli(net1: Cluster, cli: Callable[..., Any]) -> None:
    result = cli("network", "modify", "net1", "--no-dhcp", "-n", "lab.example")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Network 'net1' (VNI 100) modified.\n"
    values = stored(net1, "100")
    assert (values["dhcp4_flag"], values["domain"]) == ("False", "lab.example")


def test_modify_renames(net1: Cluster, client: Client) -> None:
    before = snapshot(net1)
    r = client.request("PUT", f"{API}/network/100", data={"description": "renamed"})
    assert r.status == 200, r.text
    assert changed_keys(before, snapshot(net1)) == {schema.network("100"), schema.NETWORKS}
    assert get_network(net1, "renamed")[0]["vni"] == 100
    assert client.request("GET", f"{API}/network/net1").status == 404
    assert stored(net1, "100")["domain"] == "net1.local"  # only the values given change


def test_modify_changes_only_what_is_given(net1: Cluster) -> None:
    before = snapshot(net1)
    modify_network(net1, "net1", domain="x.example")
    assert changed_keys(before, snapshot(net1)) == {schema.network_key("100", "domain")}
    before = snapshot(net1)
    assert modify_network(net1, "net1", domain="x.example", ip4_gateway="10.1.0.1") == \
        "Network 'net1' (VNI 100) already has these values; nothing changed."
    assert snapshot(net1) == before
    modify_network(net1, "net1", domain="")  # back to the default
    assert stored(net1, "100")["domain"] == "net1.local"


def test_modify_ip6_and_clearing(net1: Cluster) -> None:
    modify_network(net1, "net1", ip6_network="fd00:5::/64")
    values = stored(net1, "100")
    assert (values["ip6_network"], values["ip6_gateway"], values["dhcp6_flag"]) == ("fd00:5::/64", "fd00:5::1", "True")
    modify_network(net1, "net1", ip6_network="fd00:6::/64")  # a new network gets its own default gateway
    assert stored(net1, "100")["ip6_gateway"] == "fd00:6::1"
    modify_network(net1, "net1", ip6_network="")
    values = stored(net1, "100")
    assert (values["ip6_network"], values["ip6_gateway"], values["dhcp6_flag"]) == ("None", "None", "False")
    modify_network(net1, "net1", ip4_network="10.7.0.0/16", ip4_gateway="10.7.0.1", dhcp4_start="10.7.1.0",
                   dhcp4_end="10.7.1.255")
    assert get_network(net1, "100")[0]["ip4"]["dhcp_end"] == "10.7.1.255"


@pytest.mark.parametrize("changes, fragments", [
    ({"description": "taken"}, ["'taken'", "VNI 200"]),
    ({"description": "has space"}, ["'has space'"]),
    ({"description": "42"}, ["'42'"]),
    ({"dhcp4_start": "10.9.0.1"}, ["'10.9.0.1'"]),
    ({"dhcp4_end": "10.1.0.50"}, ["'10.1.0.100'", "'10.1.0.50'"]),
    ({"ip4_network": "10.2.0.0/24"}, ["'10.1.0.1'", "10.2.0.0/24"]),  # the kept gateway is outside the new network
    ({"ip4_network": ""}, ["'ip4_network' or 'ip6_network'"]),  # no network left
    ({"ip4_gateway": ""}, ["'ip4_gateway'"]),
    ({"ip4_gateway": "10.1.0.120"}, ["'10.1.0.120'"]),
    ({"dhcp4": False, "dhcp4_start": "10.1.0.100"}, ["'dhcp4_start'", "not switched on"]),
    ({"ip6_gateway": "fd00::1"}, ["'ip6_gateway'", "'fd00::1'"]),
    ({"ip6_network": "fd00::1/64"}, ["'fd00::1/64'"]),
    ({"domain": "a b"}, ["'a b'"]),
])
def test_modify_refused_and_nothing_written(net1: Cluster, client: Client, cli: Callable[..., Any],
                                           changes: dict[str, Any], fragments: list[str]) -> None:
    before = snapshot(net1)
    with pytest.raises((InvalidArgument, AlreadyExists)) as caught:
        modify_network(net1, "net1", **changes)
    assert all(f in caught.value.message for f in fragments), caught.value.message
    assert_failed(client.request("PUT", f"{API}/network/net1", data=http_values(changes)), 510, *fragments)
    code = 4 if isinstance(caught.value, AlreadyExists) else 2
    args = ["--no-dhcp" if k == "dhcp4" else f"{OPTIONS[k]}={v}" for k, v in changes.items()]
    assert_cli_failed(cli("network", "modify", "net1", *args), code, *fragments)
    assert snapshot(net1) == before


def test_modify_bridged_ignores_ip_values(net1: Cluster, client: Client, cli: Callable[..., Any]) -> None:
    before = snapshot(net1)
    assert modify_network(net1, "taken", ip4_network="10.5.0.0/24", ip4_gateway="10.5.0.1") == (
        "Network 'taken' (VNI 200) already has these values; nothing changed; a bridged network takes no IP or DHCP "
        "values, so ip4_network and ip4_gateway were ignored.")
    assert snapshot(net1) == before
    assert modify_network(net1, "taken", dhcp4=False) == \
        "Network 'taken' (VNI 200) already has these values; nothing changed."
    r = client.request("PUT", f"{API}/network/taken", data={"domain": "t.example", "dhcp4": "true",
                                                            "dhcp4_start": "junk"})
    assert (r.status, r.json()) == (200, {"message": "Network 'taken' (VNI 200) modified; a bridged network takes no "
                                                     "IP or DHCP values, so dhcp4 and dhcp4_start were ignored."})
    assert changed_keys(before, snapshot(net1)) == {schema.network_key("200", "domain")}
    result = cli("network", "modify", "200", "--ipnet6", "fd00::/64", "-d", "renamed")
    assert (result.exit_code, result.stdout) == (
        0, "Network 'renamed' (VNI 200) modified; a bridged network takes no IP or DHCP values, so ip6_network was "
           "ignored.\n"), result.output
    assert stored(net1, "200") == {"": "renamed", "domain": "t.example", **BRIDGED_UNSET}
    before = snapshot(net1)
    with pytest.raises(InvalidArgument, match="'a b'"):  # what is checked still is
        modify_network(net1, "200", description="a b", ip4_network="10.5.0.0/24")
    assert_failed(client.request("PUT", f"{API}/network/200", data={"domain": "a b", "ip4_network": "x"}), 510,
                  "'a b'")
    assert snapshot(net1) == before


@pytest.mark.parametrize("values, fragment", [({"nettype": "managed"}, "'nettype'"), ({"vni": "5"}, "'vni'")])
def test_modify_cannot_change_type_or_vni(net1: Cluster, client: Client, values: dict[str, str], fragment: str) -> None:
    before = snapshot(net1)
    assert_failed(client.request("PUT", f"{API}/network/net1", data=values), 510, fragment)
    assert snapshot(net1) == before


def test_modify_unknown_network(net1: Cluster, client: Client, cli: Callable[..., Any]) -> None:
    before = snapshot(net1)
    with pytest.raises(NotFound, match="^Network 'nope' not found.$"):
        modify_network(net1, "nope", domain="x")
    assert_failed(client.request("PUT", f"{API}/network/nope", data={"domain": "x"}), 510, "'nope'")
    assert_cli_failed(cli("network", "modify", "999", "-n", "x"), 3, "'999'")
    assert snapshot(net1) == before


def test_concurrent_renames_to_one_description_land_once(net1: Cluster) -> None:
    add_network(net1, 300, "third", "bridged")
    results: list[str] = []
    barrier = threading.Barrier(3)

    def job(network: str) -> None:
        with Cluster(net1.settings) as own:
            own.store.exists(schema.NETWORKS)
            barrier.wait(30)
            try:
                modify_network(own, network, description="same")
                results.append("renamed")
            except AlreadyExists:
                results.append("exists")

    threads = [threading.Thread(target=job, args=(n,)) for n in ("net1", "taken", "third")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["exists", "exists", "renamed"]
    assert [n["description"] for n in list_networks(net1)].count("same") == 1


# --- modify and static reservations -----------------------------------------------------------------

MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


@pytest.fixture
def reserved(net1: Cluster) -> Cluster:
    """net1 (10.1.0.0/24, gateway .1, DHCP .100-.199) with reservations at .10, .64 and .127."""
    from pvc.lib.ops.lease import add_lease

    for mac, ip in ((MAC1, "10.1.0.10"), (MAC2, "10.1.0.64"), (MAC3, "10.1.0.127")):
        add_lease(net1, "net1", mac, ip)
    return net1


#: (changes, MACs named with their address and why, MACs not named)
STRANDING = [
    ({"ip4_network": "10.2.0.0/24", "ip4_gateway": "10.2.0.1", "dhcp4": False},
     [(MAC1, "10.1.0.10", "not inside"), (MAC2, "10.1.0.64", "not inside"), (MAC3, "10.1.0.127", "not inside")], []),
    ({"ip4_network": "10.1.0.0/26", "dhcp4": False}, [(MAC2, "10.1.0.64", "not inside"),
                                                      (MAC3, "10.1.0.127", "not inside")], [MAC1]),
    ({"ip4_network": "10.1.0.0/25", "dhcp4": False}, [(MAC3, "10.1.0.127", "broadcast")], [MAC1, MAC2]),
    ({"ip4_network": "10.1.0.64/26", "ip4_gateway": "10.1.0.65", "dhcp4": False},
     [(MAC1, "10.1.0.10", "not inside"), (MAC2, "10.1.0.64", "network address"), (MAC3, "10.1.0.127", "broadcast")],
     []),
    ({"ip4_gateway": "10.1.0.10"}, [(MAC1, "10.1.0.10", "gateway")], [MAC2, MAC3]),
    ({"ip4_network": "", "ip6_network": "fd00:1::/64", "dhcp4": False},
     [(MAC1, "10.1.0.10", "no IPv4"), (MAC2, "10.1.0.64", "no IPv4"), (MAC3, "10.1.0.127", "no IPv4")], []),
]


@pytest.mark.parametrize("changes, named, spared", STRANDING)
def test_modify_refuses_to_strand_reservations(reserved: Cluster, client: Client, cli: Callable[..., Any],
                                               changes: dict[str, Any], named: list[tuple[str, str, str]],
                                               spared: list[str]) -> None:
    before = snapshot(reserved)
    with pytest.raises(InvalidState) as caught:
        modify_network(reserved, "net1", **changes)
    message = caught.value.message
    assert message.startswith("Network 'net1' (VNI 100): ") and "would strand" in message, message
    plural = "s" if len(named) > 1 else ""  # reservations cannot be changed: what can be done is named
    assert f" the static DHCP reservation{plural} of MAC{plural} '" in message, message
    assert message.endswith(f"; remove the reservation{plural} first."), message
    for mac, ip, why in named:
        assert re.search(f"'{mac}' \\({re.escape(ip)}: [^)]*{why}", message), message
    for mac in spared:
        assert mac not in message, message
    assert snapshot(reserved) == before
    assert_failed(client.request("PUT", f"{API}/network/net1", data=http_values(changes)), 510,
                  *(f"'{mac}' ({ip}" for mac, ip, _ in named))
    assert snapshot(reserved) == before
    args = ["--no-dhcp" if k == "dhcp4" else f"{OPTIONS[k]}={v}" for k, v in changes.items()]
    assert_cli_failed(cli("network", "modify", "net1", *args), 4, *(f"'{mac}' ({ip}" for mac, ip, _ in named))
    assert snapshot(reserved) == before


def test_modify_keeping_reservations_inside_is_fine(reserved: Cluster, client: Client, cli: Callable[..., Any]) -> None:
    assert modify_network(reserved, "net1", ip4_network="10.1.0.0/16", dhcp4_start="10.1.1.0",
                          dhcp4_end="10.1.1.255") == "Network 'net1' (VNI 100) modified."
    r = client.request("PUT", f"{API}/network/net1", data={"ip4_gateway": "10.1.0.2"})
    assert r.status == 200, r.text
    assert cli("network", "modify", "net1", "--domain", "x.example").exit_code == 0
    assert (stored(reserved, "100")["ip4_network"], stored(reserved, "100")["ip4_gateway"]) == ("10.1.0.0/16",
                                                                                                "10.1.0.2")


def test_modify_races_a_reservation_add(net1: Cluster) -> None:
    """A reservation added while the network shrinks: either the reservation lands and the modify
    is refused, or the modify lands and the reservation is refused; never both (the modify checks
    the reservations' container at the version it read). Threads with their own sessions; without
    that check, both land within a few rounds."""
    from pvc.lib.dhcp_leases import read_reservations
    from pvc.lib.ops.lease import add_lease, remove_lease

    modify_network(net1, "net1", dhcp4=False)
    with Cluster(net1.settings) as adder, Cluster(net1.settings) as modifier:
        for i in range(25):
            results: dict[str, str] = {}
            barrier = threading.Barrier(2)

            def add(own: Cluster = adder) -> None:
                barrier.wait(30)
                try:
                    add_lease(own, "net1", MAC1, "10.1.0.200")
                    results["add"] = "done"
                except InvalidArgument as e:
                    results["add"] = "refused" if "not inside" in e.message else e.message

            def shrink(own: Cluster = modifier) -> None:
                barrier.wait(30)
                try:
                    modify_network(own, "net1", ip4_network="10.1.0.0/25")
                    results["modify"] = "done"
                except InvalidState as e:
                    results["modify"] = "refused" if "'52:54:00:00:00:01' (10.1.0.200" in e.message else e.message

            threads = [threading.Thread(target=add), threading.Thread(target=shrink)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert sorted(results.values()) == ["done", "refused"], (i, results)
            values = stored(net1, "100")
            for mac, reservation in read_reservations(net1, "100").items():
                assert ipaddress.IPv4Address(reservation["ipaddr"]) in ipaddress.IPv4Network(values["ip4_network"]), \
                    (i, values)
            if results["add"] == "done":
                remove_lease(net1, "net1", MAC1)
            else:
                modify_network(net1, "net1", ip4_network="10.1.0.0/24")


# --- remove ---------------------------------------------------------------------------------------


def vm_xml(name: str, bridge: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory unit='MiB'>512</memory>"
            f"<vcpu>1</vcpu><devices><interface type='bridge'><source bridge='{bridge}'/></interface></devices>"
            "</domain>")


def test_remove_deletes_the_whole_subtree(net1: Cluster, client: Client) -> None:
    net1.store.commit([Create(schema.reservation("100", "52:54:00:00:00:01"), "static"),
                       Create(schema.acl("100", "in", "ssh"), "")])
    before = snapshot(net1)
    r = client.request("DELETE", f"{API}/network/net1")
    assert r.status == 200 and r.json() == {"message": "Network 'net1' (VNI 100) removed."}
    gone = {k for k in before if k == schema.network("100") or k.startswith(schema.network("100") + "/")}
    assert changed_keys(before, snapshot(net1)) == gone
    assert len(gone) == len(network_keys("100")) + 2
    assert [n["vni"] for n in list_networks(net1)] == [200]
    assert_failed(client.request("DELETE", f"{API}/network/net1"), 510, "'net1'")


def test_remove_refused_while_a_vm_uses_the_bridge(net1: Cluster, add_node: Callable[..., str], client: Client,
                                                   cli: Callable[..., Any]) -> None:
    from pvc.lib.ops.vm import define_vm

    add_node("hv1")
    define_vm(net1, vm_xml("web2", "vmbr100"))
    define_vm(net1, vm_xml("web1", "vmbr100"))
    define_vm(net1, vm_xml("other", "vmbr1000"))  # a different bridge does not count
    before = snapshot(net1)
    with pytest.raises(InvalidState) as caught:
        remove_network(net1, "100")
    assert caught.value.message == ("Network 'net1' (VNI 100) is used by VMs 'web1', 'web2' (bridge vmbr100); "
                                    "detach them first.")
    assert_failed(client.request("DELETE", f"{API}/network/net1"), 510, "'web1', 'web2'", "vmbr100")
    assert_cli_failed(cli("network", "remove", "net1", "--yes"), 4, "'web1', 'web2'")
    assert snapshot(net1) == before
    assert remove_network(net1, "taken") == "Network 'taken' (VNI 200) removed."  # unused: fine


def test_cli_remove_asks_first(net1: Cluster, cli: Callable[..., Any]) -> None:
    before = snapshot(net1)
    result = cli("network", "remove", "net1", input="n\n")
    assert result.exit_code == 1 and "Really remove net1?" in result.output
    assert snapshot(net1) == before
    result = cli("network", "remove", "net1", input="y\n")
    assert result.exit_code == 0 and "Network 'net1' (VNI 100) removed." in result.stdout
    result = cli("network", "remove", "taken", "--yes")
    assert result.exit_code == 0 and result.stdout == "Network 'taken' (VNI 200) removed.\n"
    assert list_networks(net1) == []


# --- remove: networks too large for one commit ----------------------------------------------------

#: Dynamic leases of the large network: their deletes alone are about twice what one commit takes.
MANY_LEASES = 4000


def fill_leases(core: Cluster, vni: str, count: int, batch: int = 400) -> list[str]:
    """``count`` dynamic leases as the DHCP hook records them, written in commits of ``batch``;
    returns the keys written, parents before children."""
    written = []
    for first in range(0, count, batch):
        ops: list[Any] = []
        for i in range(first, min(count, first + batch)):
            mac = f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
            values = {"expiry": "1700000000", "ipaddr": f"10.1.{(i >> 8) + 1}.{i & 255}", "hostname": f"host-{i}",
                      "clientid": f"01:{mac}"}
            ops.append(Create(schema.lease(vni, mac), ""))
            ops += [Create(schema.lease_key(vni, mac, f), values[f]) for f in schema.LEASE_FIELDS]
        core.store.commit(ops)
        written += [op.path for op in ops]
    return written


@pytest.fixture
def large(core: Cluster) -> tuple[Cluster, dict[str, tuple[str, int]]]:
    """'big' (VNI 100, 10.1.0.0/16) with MANY_LEASES dynamic leases, two reservations and an ACL,
    too large to delete in one commit; 'small' (VNI 200), which must stay. With the snapshot of
    the tree taken before the leases of 'big' were written (reading all of them takes a while)."""
    from pvc.lib.ops.lease import add_lease
    from pvc.lib.store.base import Delete

    add_network(core, 100, "big", "managed", ip4_network="10.1.0.0/16", ip4_gateway="10.1.0.1")
    add_network(core, 200, "small", "managed", ip4_network="10.2.0.0/24", ip4_gateway="10.2.0.1")
    fill_leases(core, "200", 3)
    add_lease(core, "big", MAC1, "10.1.0.10", "fixed1")
    add_lease(core, "big", MAC2, "10.1.0.11")
    core.store.commit([Create(schema.acl("100", "in", "ssh"), ""),
                       Create(schema.acl_key("100", "in", "ssh", "order"), "1"),
                       Create(schema.acl_key("100", "in", "ssh", "rule"), "tcp dport 22 accept")])
    base = snapshot(core)
    leases = fill_leases(core, "100", MANY_LEASES)
    with pytest.raises(InvalidArgument, match="too large to store"):  # the one commit it used to try
        core.store.commit([Delete(k) for k in reversed(leases)])
    return core, base


def inside(vni: str, key: str) -> bool:
    return key == schema.network(vni) or key.startswith(schema.network(vni) + "/")


@pytest.mark.parametrize("frontend", ["library", "http", "cli"])
def test_remove_a_network_with_thousands_of_leases(large: tuple[Cluster, dict[str, tuple[str, int]]],
                                                   client: Client, cli: Callable[..., Any], frontend: str) -> None:
    core, base = large
    if frontend == "library":
        assert remove_network(core, "big") == "Network 'big' (VNI 100) removed."
    elif frontend == "http":
        r = client.request("DELETE", f"{API}/network/big")
        assert (r.status, r.json()) == (200, {"message": "Network 'big' (VNI 100) removed."})
    else:
        result = cli("network", "remove", "100", "--yes")
        assert (result.exit_code, result.stdout) == (0, "Network 'big' (VNI 100) removed.\n"), result.output
    # nothing of it remains, and nothing else changed
    assert snapshot(core) == {k: v for k, v in base.items() if not inside("100", k)}
    assert [n["vni"] for n in list_networks(core)] == [200]
    assert len(core.store.children(schema.network_key("200", "dhcp4_leases"))) == 3
    assert_failed(client.request("DELETE", f"{API}/network/big"), 510, "'big'")


def test_remove_a_large_network_refused_changes_nothing(large: tuple[Cluster, dict[str, tuple[str, int]]],
                                                        add_node: Callable[..., str], client: Client,
                                                        cli: Callable[..., Any]) -> None:
    """The checks that can refuse the removal come before any batch of deletes."""
    from pvc.lib.ops.vm import define_vm

    core, _ = large
    add_node("hv1")
    define_vm(core, vm_xml("web1", "vmbr100"))
    before = snapshot(core)
    with pytest.raises(InvalidState, match="'web1'"):
        remove_network(core, "big")
    assert_failed(client.request("DELETE", f"{API}/network/big"), 510, "'web1'", "vmbr100")
    assert_cli_failed(cli("network", "remove", "big", "--yes"), 4, "'web1'")
    assert snapshot(core) == before  # deletes are never undone: one look at the end sees any of them
    assert len(core.store.children(schema.network_key("100", "dhcp4_leases"))) == MANY_LEASES


def test_remove_finishes_a_removal_interrupted_after_the_leases(large: tuple[Cluster, dict[str, tuple[str, int]]]
                                                                ) -> None:
    """An interrupted removal leaves the network without (some of) its leases; it is still a
    whole network, and removing it again finishes the job."""
    from pvc.lib.ops.lease import list_leases
    from pvc.lib.store.base import delete_batches

    core, base = large
    leases = core.store.subtree(schema.network_key("100", "dhcp4_leases"))[1:]
    core.store.commit(delete_batches(leases)[0])  # the removal's first commit, then it stopped
    left = core.store.children(schema.network_key("100", "dhcp4_leases"))
    assert 0 < len(left) < MANY_LEASES
    assert all(lease["ip4_address"] for lease in list_leases(core, "big")[:-1])  # whole leases (one maybe not)
    assert get_network(core, "big")[0]["vni"] == 100
    assert remove_network(core, "big") == "Network 'big' (VNI 100) removed."
    assert snapshot(core) == {k: v for k, v in base.items() if not inside("100", k)}
