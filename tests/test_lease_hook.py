"""The DHCP lease writer behind dnsmasq's --dhcp-script, on both store engines: the library
functions, `pvc network lease hook` through Click's runner with dnsmasq's arguments and
environment, and real `python -m pvc` runs as dnsmasq would start them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from click.testing import CliRunner

from pvc.cli import cli as root
from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.dhcp_leases import forget_lease, lease_expiry, lease_file_lines, record_lease, vni_of_bridge
from pvc.lib.errors import InvalidArgument, NotFound
from pvc.lib.ops.lease import list_leases
from pvc.lib.ops.network import add_network
from pvc.lib.store import Create
from tests.test_cli import config_for
from tests.test_ops_node import changed_keys, snapshot

MAC1, MAC2 = "52:54:00:00:00:01", "52:54:00:00:00:02"
#: dnsmasq's variables, all unset unless a test sets them (the test process's own never leak in).
DNSMASQ_ENV = ("DNSMASQ_INTERFACE", "DNSMASQ_BRIDGE_INTERFACE", "DNSMASQ_LEASE_EXPIRES", "DNSMASQ_LEASE_LENGTH",
               "DNSMASQ_CLIENT_ID", "DNSMASQ_OLD_HOSTNAME", "DNSMASQ_DATA_MISSING")


@pytest.fixture
def net(core: Cluster) -> Cluster:
    add_network(core, 100, "lan", "managed", ip4_network="10.1.0.0/24", ip4_gateway="10.1.0.1", dhcp4=True,
                dhcp4_start="10.1.0.100", dhcp4_end="10.1.0.199")
    add_network(core, 1001, "other", "managed", ip4_network="10.2.0.0/24", ip4_gateway="10.2.0.1")
    return core


def hook(core: Cluster, *args: str, **env: str) -> Any:
    """`pvc network lease hook ARGS` as dnsmasq runs it, with ``env`` as its DNSMASQ_* variables."""
    environment: dict[str, str | None] = {name: None for name in DNSMASQ_ENV}
    environment.update(env)
    return CliRunner().invoke(root, ["network", "lease", "hook", *args], obj=core, env=environment,
                              catch_exceptions=False)


def lease(core: Cluster, vni: str, mac: str) -> dict[str, str]:
    return {"": core.store.get(schema.lease(vni, mac)).value,
            **{f: core.store.get(schema.lease_key(vni, mac, f)).value for f in schema.LEASE_FIELDS}}


# --- the library ------------------------------------------------------------------------------------


def test_record_update_and_forget(net: Cluster) -> None:
    before = snapshot(net)
    record_lease(net, "100", "52:54:00:AA:BB:CC", "10.1.0.150", "web1", 1700000000, "01:52:54:00:aa:bb:cc")
    mac = "52:54:00:aa:bb:cc"
    path = schema.lease("100", mac)
    assert changed_keys(before, snapshot(net)) == {path, *(f"{path}/{f}" for f in schema.LEASE_FIELDS)}
    assert lease(net, "100", mac) == {"": "", "expiry": "1700000000", "ipaddr": "10.1.0.150", "hostname": "web1",
                                      "clientid": "01:52:54:00:aa:bb:cc"}
    before = snapshot(net)
    record_lease(net, "100", mac, "10.1.0.150", None, 1700003600)  # renewed, hostname and client id gone
    assert changed_keys(before, snapshot(net)) == {f"{path}/expiry", f"{path}/hostname", f"{path}/clientid"}
    assert lease(net, "100", mac)["hostname"] == ""
    before = snapshot(net)
    assert record_lease(net, "100", mac, "10.1.0.150", None, 1700003600).endswith("is unchanged.")
    assert snapshot(net) == before
    assert forget_lease(net, "100", mac.upper()) == f"Lease {mac} removed from network 100."
    assert not net.store.exists(path)
    assert forget_lease(net, "100", mac).endswith("nothing to remove.")


@pytest.mark.parametrize("args, error, fragment", [
    (("999", MAC1, "10.1.0.5"), NotFound, "'999'"),
    (("100", "52:54:00", "10.1.0.5"), InvalidArgument, "'52:54:00'"),
    (("100", MAC1, "10.1.0"), InvalidArgument, "'10.1.0'"),
    (("100", MAC1, "10.1.0.5", "two words"), InvalidArgument, "'two words'"),
])
def test_record_refused(net: Cluster, args: tuple[str, ...], error: type, fragment: str) -> None:
    before = snapshot(net)
    with pytest.raises(error, match=fragment):
        record_lease(net, *args)
    assert snapshot(net) == before


def test_lease_file_lines(net: Cluster) -> None:
    assert lease_file_lines(net, "100") == []
    record_lease(net, "100", MAC2, "10.1.0.102", None, 1700000200)
    record_lease(net, "100", MAC1, "10.1.0.101", "web1", 1700000100, "ff:00")
    record_lease(net, "100", "52:54:00:00:00:03", "10.1.0.103", "inf", 0)
    record_lease(net, "1001", "52:54:00:00:00:09", "10.2.0.9", "elsewhere", 1700000900)
    # a record broken by hand (no expiry) is left out rather than breaking dnsmasq's start
    net.store.commit([Create(schema.lease("100", "52:54:00:00:00:04"), ""),
                      Create(schema.lease_key("100", "52:54:00:00:00:04", "ipaddr"), "10.1.0.104")])
    assert lease_file_lines(net, "100") == [
        f"1700000100 {MAC1} 10.1.0.101 web1 ff:00",
        f"1700000200 {MAC2} 10.1.0.102 * *",
        "0 52:54:00:00:00:03 10.1.0.103 inf *",
    ]
    with pytest.raises(NotFound):
        lease_file_lines(net, "5")


@pytest.mark.parametrize("expires, length, now, expiry", [
    ("1700000000", None, 5.0, 1700000000),
    ("0", None, 5.0, 0),
    (None, "3600", 1000.7, 4600),
    ("", "3600", 1000.0, 4600),
    (None, "0", 1000.0, 0),
    (None, None, 1000.0, 0),
])
def test_lease_expiry(expires: str | None, length: str | None, now: float, expiry: int) -> None:
    assert lease_expiry(expires, length, now) == expiry


@pytest.mark.parametrize("expires, length", [("soon", None), (None, "-5"), ("1.5", None)])
def test_lease_expiry_refused(expires: str | None, length: str | None) -> None:
    with pytest.raises(InvalidArgument, match="DNSMASQ_LEASE_"):
        lease_expiry(expires, length, 0)


@pytest.mark.parametrize("name, vni", [("vmbr100", "100"), ("vmbr0100", "100"), ("vmbr16777215", "16777215")])
def test_vni_of_bridge(name: str, vni: str) -> None:
    assert vni_of_bridge(name) == vni


@pytest.mark.parametrize("name", ["vmbr", "eth0", "vxlan100", "vmbr100x", "brcluster", "vmbr-1"])
def test_vni_of_bridge_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match=f"'{name}'"):
        vni_of_bridge(name)


# --- the command, as dnsmasq runs it ---------------------------------------------------------------------


def test_hook_add_old_del_init(net: Cluster) -> None:
    env = {"DNSMASQ_INTERFACE": "vmbr100", "DNSMASQ_LEASE_EXPIRES": "1700000000",
           "DNSMASQ_CLIENT_ID": "01:52:54:00:00:00:01"}
    result = hook(net, "add", MAC1.upper(), "10.1.0.150", "web1", **env)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", ""), result.output
    assert lease(net, "100", MAC1) == {"": "", "expiry": "1700000000", "ipaddr": "10.1.0.150", "hostname": "web1",
                                       "clientid": "01:52:54:00:00:00:01"}
    result = hook(net, "add", MAC2, "10.1.0.151", DNSMASQ_BRIDGE_INTERFACE="vmbr100",
                  DNSMASQ_LEASE_EXPIRES="1700000001")
    assert result.exit_code == 0, result.output
    assert list_leases(net, "lan") == [
        {"mac_address": MAC1, "ip4_address": "10.1.0.150", "hostname": "web1", "timestamp": 1700000000,
         "static": False},
        {"mac_address": MAC2, "ip4_address": "10.1.0.151", "hostname": None, "timestamp": 1700000001,
         "static": False}]
    # a renewal
    result = hook(net, "old", MAC1, "10.1.0.150", "web1", **{**env, "DNSMASQ_LEASE_EXPIRES": "1700086400"})
    assert result.exit_code == 0, result.output
    assert lease(net, "100", MAC1)["expiry"] == "1700086400"
    # dnsmasq restarts: init prints the leases in its lease-file format
    result = hook(net, "init", DNSMASQ_BRIDGE_INTERFACE="vmbr100")
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"1700086400 {MAC1} 10.1.0.150 web1 01:52:54:00:00:00:01\n"
                             f"1700000001 {MAC2} 10.1.0.151 * *\n")
    # a release
    result = hook(net, "del", MAC1, "10.1.0.150", "web1", DNSMASQ_INTERFACE="vmbr100")
    assert result.exit_code == 0, result.output
    assert [e["mac_address"] for e in list_leases(net, "lan")] == [MAC2]
    assert hook(net, "del", MAC1, "10.1.0.150", DNSMASQ_INTERFACE="vmbr100").exit_code == 0  # twice is fine
    assert hook(net, "init", "--network", "other").stdout == ""


def test_hook_old_without_hostname_clears_it(net: Cluster) -> None:
    """dnsmasq 2.90's man page: "If a lease used to have a hostname, which is removed, an 'old'
    event is generated with all the usual parameters but no hostname, and the former name is
    provided in DNSMASQ_OLD_HOSTNAME": the name is gone, from the tree, the list and `init`."""
    env = {"DNSMASQ_INTERFACE": "vmbr100", "DNSMASQ_LEASE_EXPIRES": "1700000000", "DNSMASQ_CLIENT_ID": "01:aa"}
    assert hook(net, "add", MAC1, "10.1.0.150", "web1", **env).exit_code == 0
    assert list_leases(net, "lan")[0]["hostname"] == "web1"
    path = schema.lease("100", MAC1)
    before = snapshot(net)
    result = hook(net, "old", MAC1, "10.1.0.150", **env, DNSMASQ_OLD_HOSTNAME="web1")
    assert (result.exit_code, result.output) == (0, "")
    assert changed_keys(before, snapshot(net)) == {f"{path}/hostname"}
    assert lease(net, "100", MAC1)["hostname"] == ""
    assert list_leases(net, "lan")[0]["hostname"] is None
    assert hook(net, "init", DNSMASQ_INTERFACE="vmbr100").stdout == f"1700000000 {MAC1} 10.1.0.150 * 01:aa\n"
    # a renewal passes the name whenever the lease has one: a new one is taken
    assert hook(net, "old", MAC1, "10.1.0.150", "web1-new", **env).exit_code == 0
    assert lease(net, "100", MAC1)["hostname"] == "web1-new"
    assert hook(net, "add", MAC1, "10.1.0.150", **env).exit_code == 0  # a new lease without a name: none
    assert lease(net, "100", MAC1)["hostname"] == ""
    # `old` for a lease not recorded yet records it as given
    assert hook(net, "old", MAC2, "10.1.0.151", DNSMASQ_INTERFACE="vmbr100").exit_code == 0
    assert lease(net, "100", MAC2) == {"": "", "expiry": "0", "ipaddr": "10.1.0.151", "hostname": "", "clientid": ""}


def test_hook_old_at_start_up_keeps_the_client_id(net: Cluster) -> None:
    """The `old` events of dnsmasq's start-up (DNSMASQ_DATA_MISSING=1, after `init`) may lack
    what the lease file did not hold: without DNSMASQ_CLIENT_ID the recorded client ID stays.
    Without DNSMASQ_DATA_MISSING, an event without a client ID records none."""
    env = {"DNSMASQ_INTERFACE": "vmbr100", "DNSMASQ_LEASE_EXPIRES": "1700000000"}
    assert hook(net, "add", MAC1, "10.1.0.150", "web1", **env, DNSMASQ_CLIENT_ID="01:aa").exit_code == 0
    path = schema.lease("100", MAC1)
    before = snapshot(net)
    result = hook(net, "old", MAC1, "10.1.0.150", "web1", **{**env, "DNSMASQ_LEASE_EXPIRES": "1700000500"},
                  DNSMASQ_DATA_MISSING="1")
    assert (result.exit_code, result.output) == (0, "")
    assert changed_keys(before, snapshot(net)) == {f"{path}/expiry"}
    assert lease(net, "100", MAC1) == {"": "", "expiry": "1700000500", "ipaddr": "10.1.0.150", "hostname": "web1",
                                       "clientid": "01:aa"}
    assert hook(net, "init", DNSMASQ_INTERFACE="vmbr100").stdout == f"1700000500 {MAC1} 10.1.0.150 web1 01:aa\n"
    # a client ID given at start-up is taken
    assert hook(net, "old", MAC1, "10.1.0.150", "web1", **env, DNSMASQ_DATA_MISSING="1",
                DNSMASQ_CLIENT_ID="01:bb").exit_code == 0
    assert lease(net, "100", MAC1)["clientid"] == "01:bb"
    # a renewal (no DNSMASQ_DATA_MISSING) without one: none
    assert hook(net, "old", MAC1, "10.1.0.150", "web1", **env).exit_code == 0
    assert lease(net, "100", MAC1)["clientid"] == ""
    # DNSMASQ_DATA_MISSING does not make `add` keep anything
    assert hook(net, "old", MAC1, "10.1.0.150", "web1", **env, DNSMASQ_CLIENT_ID="01:cc").exit_code == 0
    assert hook(net, "add", MAC1, "10.1.0.150", "web1", **env, DNSMASQ_DATA_MISSING="1").exit_code == 0
    assert lease(net, "100", MAC1)["clientid"] == ""


def test_record_keep_clientid(net: Cluster) -> None:
    record_lease(net, "100", MAC1, "10.1.0.150", "web1", 1700000000, "01:aa")
    before = snapshot(net)
    assert record_lease(net, "100", MAC1, "10.1.0.150", "web1", 1700000000, keep_clientid=True).endswith("unchanged.")
    assert snapshot(net) == before
    record_lease(net, "100", MAC1, "10.1.0.151", None, 1700000001, keep_clientid=True)
    assert lease(net, "100", MAC1) == {"": "", "expiry": "1700000001", "ipaddr": "10.1.0.151", "hostname": "",
                                       "clientid": "01:aa"}
    record_lease(net, "100", MAC1, "10.1.0.151", None, 1700000001, "01:bb", keep_clientid=True)
    assert lease(net, "100", MAC1)["clientid"] == "01:bb"
    record_lease(net, "100", MAC1, "10.1.0.151", None, 1700000001)
    assert lease(net, "100", MAC1)["clientid"] == ""
    record_lease(net, "100", MAC2, "10.1.0.152", None, 5, keep_clientid=True)  # nothing recorded yet: empty
    assert lease(net, "100", MAC2)["clientid"] == ""


def test_hook_lease_length_and_network_option(net: Cluster) -> None:
    start = int(time.time())
    result = hook(net, "--network", "other", "add", MAC1, "10.2.0.50", DNSMASQ_LEASE_LENGTH="3600",
                  DNSMASQ_INTERFACE="vmbr100")  # --network wins over the environment
    assert result.exit_code == 0, result.output
    assert not net.store.exists(schema.lease("100", MAC1))
    expiry = int(lease(net, "1001", MAC1)["expiry"])
    assert start + 3600 <= expiry <= int(time.time()) + 3600
    result = hook(net, "add", MAC2, "10.2.0.51", "--network", "1001")  # no expiry: an infinite lease
    assert result.exit_code == 0 and lease(net, "1001", MAC2)["expiry"] == "0"


def test_hook_ignores_what_is_not_a_dhcpv4_lease(net: Cluster) -> None:
    before = snapshot(net)
    for args in (("add", "00:01:00:01:2a:bb:cc:dd", "fd00::50", "web1"), ("tftp", "1234", "10.1.0.9", "/file"),
                 ("arp-add", MAC1, "10.1.0.9")):
        result = hook(net, *args, DNSMASQ_INTERFACE="vmbr100")
        assert (result.exit_code, result.output) == (0, ""), args
    # DHCPv6 events are ignored even where no network could be found for them (dnsmasq may serve
    # IPv6 on an interface that is no pvc bridge)
    for env in ({}, {"DNSMASQ_INTERFACE": "eth0"}, {"DNSMASQ_INTERFACE": "vmbr999"}):
        result = hook(net, "old", "00:01:00:01:2a:bb:cc:dd", "fd00::50", **env)
        assert (result.exit_code, result.output) == (0, ""), env
    assert snapshot(net) == before


@pytest.mark.parametrize("args, env, code, fragment", [
    (("add", MAC1, "10.1.0.5"), {}, 2, "No network"),
    (("init",), {}, 2, "No network"),
    (("add", MAC1, "10.1.0.5"), {"DNSMASQ_INTERFACE": "eth0"}, 2, "'eth0'"),
    (("add", MAC1, "10.1.0.5"), {"DNSMASQ_INTERFACE": "vmbr999"}, 3, "'999'"),
    (("add", MAC1, "10.1.0.5", "--network", "nope"), {}, 3, "'nope'"),
    (("add", "zz:54:00:00:00:01", "10.1.0.5"), {"DNSMASQ_INTERFACE": "vmbr100"}, 2, "'zz:54:00:00:00:01'"),
    (("add", MAC1, "10.1.0.500"), {"DNSMASQ_INTERFACE": "vmbr100"}, 2, "'10.1.0.500'"),
    (("add", MAC1, "10.1.0.5"), {"DNSMASQ_INTERFACE": "vmbr100", "DNSMASQ_LEASE_EXPIRES": "soon"}, 2, "'soon'"),
    (("add", MAC1), {"DNSMASQ_INTERFACE": "vmbr100"}, 2, "MAC and IP"),
    (("init", MAC1), {"DNSMASQ_INTERFACE": "vmbr100"}, 2, "no further arguments"),
    (("renew", MAC1, "10.1.0.5"), {"DNSMASQ_INTERFACE": "vmbr100"}, 2, "'renew'"),
])
def test_hook_errors(net: Cluster, args: tuple[str, ...], env: dict[str, str], code: int, fragment: str) -> None:
    before = snapshot(net)
    result = hook(net, *args, **env)
    assert result.exit_code == code, result.output
    assert result.stdout == "" and fragment in result.stderr, result.stderr
    assert snapshot(net) == before


def test_hook_as_a_real_process(net: Cluster, tmp_path: Any) -> None:
    """`python -m pvc --config FILE network lease hook ...`, as dnsmasq's script wrapper runs it."""
    config = config_for(net.settings, tmp_path / "pvc.yaml")
    base = {k: v for k, v in os.environ.items() if k not in DNSMASQ_ENV and k != "PVC_CONFIG_FILE"}

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pvc", "--config", config, "network", "lease", "hook", *args],
                              capture_output=True, text=True, env={**base, **env}, timeout=60)

    added = run("add", MAC1, "10.1.0.160", "vm1", DNSMASQ_BRIDGE_INTERFACE="vmbr100",
                DNSMASQ_LEASE_EXPIRES="1700000000", DNSMASQ_CLIENT_ID="01:aa")
    assert (added.returncode, added.stdout, added.stderr) == (0, "", "")
    assert lease(net, "100", MAC1)["hostname"] == "vm1"
    init = run("init", DNSMASQ_BRIDGE_INTERFACE="vmbr100")
    assert (init.returncode, init.stdout) == (0, f"1700000000 {MAC1} 10.1.0.160 vm1 01:aa\n"), init.stderr
    released = run("del", MAC1, "10.1.0.160", DNSMASQ_INTERFACE="vmbr100")
    assert released.returncode == 0, released.stderr
    assert not net.store.exists(schema.lease("100", MAC1))
    refused = run("add", MAC1, "10.1.0.160", DNSMASQ_INTERFACE="vmbr7")
    assert refused.returncode == 3 and refused.stderr == "Error: Network '7' not found.\n"
