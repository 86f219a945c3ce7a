"""DHCP lease operations: the manual's lease endpoints of a managed network.

Two kinds of entries are listed: dynamic leases, which the primary's DHCP server records (see
:mod:`pvc.lib.dhcp_leases`), and static reservations, which these operations add and remove. Each
listed entry says which it is (``static``); a MAC with both a reservation and an active lease is
listed once as each. The element routes are served at the original's ``/lease/<lease>`` and the
manual's ``/dhcp/<lease>``.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.dhcp_leases import UNSET, children, ipv4_address, normalise_mac, read_leases, read_reservations
from pvc.lib.errors import AlreadyExists, Conflict, InvalidArgument, InvalidState, NotFound, quote
from pvc.lib.match import select
from pvc.lib.network_rules import host_address
from pvc.lib.ops.network import NETWORK_ARG, descriptions, optional, resolve_vni
from pvc.lib.registry import Param, operation
from pvc.lib.retry import commit, retrying
from pvc.lib.store import Check, Create, Delete, Op, Set

HOSTNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")

LEASE_ARG = Param("MAC address of the lease or reservation.", positional=True)


def lease_object(mac: str, values: dict[str, str | None], static: bool) -> dict[str, Any]:
    """A lease in the original's shape (its §2.7.4) with JSON types: ``timestamp`` is the expiry
    (epoch seconds, 0 for an infinite lease) of a dynamic lease and null for a reservation."""
    expiry = (values.get("expiry") or "").strip()
    return {
        "mac_address": mac,
        "ip4_address": optional(values.get("ipaddr")),
        "hostname": optional(values.get("hostname")),
        "timestamp": None if static or not expiry.isdigit() else int(expiry),
        "static": static,
    }


def _label(core: Cluster, vni: str) -> str:
    return f"network {quote(descriptions(core, [vni]).get(vni, vni))} (VNI {vni})"


def _entries(core: Cluster, vni: str, macs: list[str] | None, static: bool) -> list[dict[str, Any]]:
    found = [lease_object(m, v, True) for m, v in read_reservations(core, vni, macs).items()]
    if not static:
        found += [lease_object(m, v, False) for m, v in read_leases(core, vni, macs).items()]
    return sorted(found, key=lambda e: (e["mac_address"], e["static"]))


@operation(
    "network lease", "list", "GET", "/network/<network>/lease", result="list", render="lease_list",
    params={
        "network": NETWORK_ARG,
        "limit": Param("Show only leases whose MAC address matches this fuzzy regex.", positional=True),
        "static": Param("Show only static reservations.", kind="flag", short="-s"),
    },
)
def list_leases(core: Cluster, network: str, limit: str | None = None, static: bool = False) -> list[dict[str, Any]]:
    """List the DHCP leases and static reservations of a network, by MAC address.

    LIMIT is the original's fuzzy regex, matched against the MAC address.
    """
    vni = resolve_vni(core, network)
    macs = set(children(core, schema.network_key(vni, "dhcp4_reservations")))
    if not static:
        macs |= set(children(core, schema.network_key(vni, "dhcp4_leases")))
    return _entries(core, vni, select(sorted(macs), limit, timeout=core.settings.regex_timeout), static)


@operation(
    "network lease", "info", "GET", "/network/<network>/lease/<lease>", result="list", render="lease_list",
    params={"network": NETWORK_ARG, "lease": LEASE_ARG},
    extra_paths=("/network/<network>/dhcp/<lease>",),
)
def get_lease(core: Cluster, network: str, lease: str) -> list[dict[str, Any]]:
    """Show the DHCP lease and/or static reservation of one MAC address in a network."""
    mac = normalise_mac(lease)
    vni = resolve_vni(core, network)
    found = _entries(core, vni, [mac], False)
    if not found:
        raise NotFound(f"Lease {quote(mac)} not found in {_label(core, vni)}.")
    return found


def _check_hostname(hostname: str | None) -> str | None:
    if hostname is None or hostname == "":
        return None
    if len(hostname) > 253 or not set(hostname) <= HOSTNAME_CHARS or hostname[0] in "-." or hostname == UNSET:
        raise InvalidArgument(f"Invalid hostname {quote(hostname)}: use letters, digits, '-' and '.' "
                              "(starting with a letter or digit).")
    return hostname


@operation(
    "network lease", "add", "POST", "/network/<network>/lease",
    params={
        "network": NETWORK_ARG,
        "macaddress": Param("MAC address of the host.", positional=True),
        "ipaddress": Param("IPv4 address to reserve: inside the network's IPv4 network, not its gateway.",
                           positional=True),
        "hostname": Param("Host name to hand out with the address.", short="-n"),
    },
)
def add_lease(core: Cluster, network: str, macaddress: str, ipaddress: str, hostname: str | None = None) -> str:
    """Add a static DHCP reservation: a fixed IPv4 address for a MAC address.

    The address must be inside the network's IPv4 network and not its gateway (ideally outside
    the DHCPv4 range). A MAC address and an address can each be reserved once per network.
    """
    mac = normalise_mac(macaddress)
    address = ipv4_address("ipaddress", ipaddress)
    name = _check_hostname(hostname)

    def attempt() -> str:
        vni = resolve_vni(core, network)
        container = schema.network_key(vni, "dhcp4_reservations")
        net_key, gw_key = schema.network_key(vni, "ip4_network"), schema.network_key(vni, "ip4_gateway")
        entries = core.store.get_many([container, net_key, gw_key])
        parent, net_entry, gw_entry = entries[container], entries[net_key], entries[gw_key]
        label = _label(core, vni)
        if net_entry is None or optional(net_entry.value) is None or gw_entry is None or parent is None:
            raise InvalidState(f"The {label} has no IPv4 network; static DHCP reservations need one.")
        try:
            net = IPv4Network(net_entry.value)
        except ValueError:
            raise InvalidState(f"The {label} has an invalid IPv4 network {quote(net_entry.value)}.") from None
        host_address("ipaddress", str(address), net)
        if optional(gw_entry.value) == str(address):
            raise InvalidArgument(f"Invalid 'ipaddress' {quote(address)}: it is the gateway of the {label}.")
        reserved = read_reservations(core, vni)
        if mac in reserved:
            raise AlreadyExists(f"A reservation for MAC {quote(mac)} already exists in {label} "
                                f"({reserved[mac].get('ipaddr')}).")
        owner = next((m for m, v in reserved.items() if v.get("ipaddr") == str(address)), None)
        if owner is not None:
            raise AlreadyExists(f"IP address {quote(address)} is already reserved for MAC {quote(owner)} in {label}.")
        ops: list[Op] = [
            Set(container, parent.value, parent.version),  # concurrent adds conflict here
            Check(net_key, net_entry.version), Check(gw_key, gw_entry.version),
            Create(schema.reservation(vni, mac), "static"),
            Create(schema.reservation_key(vni, mac, "ipaddr"), str(address)),
            Create(schema.reservation_key(vni, mac, "hostname"), name or UNSET),
        ]
        # Lost a race: read again, and the other writer's reservation (or a removed network) decides.
        commit(core.store, ops, Conflict, AlreadyExists, NotFound)
        return f"Static DHCP reservation of {address} for {quote(mac)} added to {label}."

    return retrying(f"The reservations of network {quote(network)}", attempt)


@operation(
    "network lease", "remove", "DELETE", "/network/<network>/lease/<lease>",
    params={"network": NETWORK_ARG, "lease": LEASE_ARG},
    extra_paths=("/network/<network>/dhcp/<lease>",),
)
def remove_lease(core: Cluster, network: str, lease: str) -> str:
    """Remove the static DHCP reservation of a MAC address from a network.

    Dynamic leases belong to the DHCP server and cannot be removed.
    """
    mac = normalise_mac(lease)

    def attempt() -> str:
        vni = resolve_vni(core, network)
        try:
            keys = core.store.subtree(schema.reservation(vni, mac))
        except NotFound:
            label = _label(core, vni)
            if read_leases(core, vni, [mac]):
                raise NotFound(f"MAC {quote(mac)} has a dynamic lease but no static reservation in {label}; "
                               "dynamic leases are managed by the DHCP server.") from None
            raise NotFound(f"No static reservation for MAC {quote(mac)} in {label}.") from None
        commit(core.store, [Delete(k) for k in reversed(keys)], Conflict, NotFound)
        return f"Static DHCP reservation {quote(mac)} removed from {_label(core, vni)}."

    return retrying(f"The reservation {quote(mac)} in network {quote(network)}", attempt)
