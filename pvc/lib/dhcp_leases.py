"""DHCP leases in the tree: the writer behind dnsmasq's ``--dhcp-script`` and the readers.

The primary coordinator runs one dnsmasq per managed network, on the bridge ``vmbr<vni>``. Its
lease events (``add``, ``old``, ``del``) are recorded under
``/networks/<vni>/dhcp4_leases/<mac>`` with the children ``expiry`` (epoch seconds, ``0`` for an
infinite lease), ``ipaddr``, ``hostname`` and ``clientid`` (empty when unknown), the original's
layout (its §3.6, §4.7); on ``init`` dnsmasq reads them back in its lease-file format, so leases
survive a move of the primary role. Static reservations live beside them under
``dhcp4_reservations`` (the key the original's daemon misspelt, its bug D1); :func:`dhcp_host_lines`
gives them to dnsmasq. Only DHCPv4 leases are recorded: events of DHCPv6 leases are ignored.

The ``pvc network lease hook`` command reads dnsmasq's arguments and environment and calls these
functions; nothing here reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, quote
from pvc.lib.retry import commit, retrying
from pvc.lib.store import Create, Delete, Entry, Op, Set

MAC_PATTERN = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
BRIDGE_PATTERN = re.compile(r"^vmbr([0-9]+)$")
#: Reservations store an absent hostname as the original's ``None`` text.
UNSET = "None"


def normalise_mac(text: Any) -> str:
    """A MAC address in the stored form (lower case, ``:``-separated); InvalidArgument otherwise."""
    mac = str(text).lower()
    if not MAC_PATTERN.match(mac) or mac != mac.strip():
        raise InvalidArgument(f"Invalid MAC address {quote(text)}: give six two-digit hexadecimal bytes separated "
                              "by ':', e.g. 52:54:00:12:34:56.")
    return mac


def ipv4_address(name: str, text: Any) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(text))
    except ValueError:
        raise InvalidArgument(f"Invalid {quote(name)} {quote(text)}: it is not an IPv4 address.") from None


def vni_of_bridge(interface: str) -> str:
    """The VNI of a network's bridge name ``vmbr<vni>``."""
    found = BRIDGE_PATTERN.match(interface)
    if not found:
        raise InvalidArgument(f"Invalid bridge {quote(interface)}: a network's bridge is named vmbr<vni>.")
    return str(int(found.group(1)))


def lease_expiry(expires: str | None, length: str | None, now: float) -> int:
    """The expiry time of a lease from dnsmasq's ``DNSMASQ_LEASE_EXPIRES`` (epoch seconds) or,
    when dnsmasq was built to count lease lengths, ``DNSMASQ_LEASE_LENGTH`` (seconds from
    ``now``). Neither: an infinite lease, written as 0 as in dnsmasq's own lease file."""
    for name, text in (("DNSMASQ_LEASE_EXPIRES", expires), ("DNSMASQ_LEASE_LENGTH", length)):
        if text in (None, ""):
            continue
        try:
            seconds = int(str(text).strip())
        except ValueError:
            raise InvalidArgument(f"Invalid {name} {quote(text)}: it is not a number of seconds.") from None
        if seconds < 0:
            raise InvalidArgument(f"Invalid {name} {quote(text)}: it is negative.")
        if name == "DNSMASQ_LEASE_LENGTH" and seconds:  # 0 stays infinite
            return int(now) + seconds
        return seconds
    return 0


def is_ipv6(text: str | None) -> bool:
    """Whether ``text`` is an IPv6 address: the address of a DHCPv6 lease, whose MAC is a DUID."""
    try:
        return ipaddress.ip_address(text or "").version == 6
    except ValueError:
        return False


def _text(value: str | None) -> str:
    """Optional lease values (hostname, client id) are stored as empty text when unknown."""
    if value is None:
        return ""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidArgument(f"Invalid lease value {quote(value)}: it must not contain whitespace.")
    return value


def _network_entries(core: Cluster, vni: str, paths: list[str]) -> dict[str, Entry | None]:
    container = schema.network_key(vni, "dhcp4_leases")
    entries = core.store.get_many([schema.network(vni), container, *paths])
    if entries[schema.network(vni)] is None or entries[container] is None:
        raise NotFound(f"Network with VNI {quote(vni)} not found.")
    return entries


def record_lease(core: Cluster, vni: str, mac: str, ip: str, hostname: str | None = None, expiry: int = 0,
                 clientid: str | None = None, keep_clientid: bool = False) -> str:
    """Record a lease that dnsmasq handed out (``add``) or renewed or re-read (``old``).

    A lease without ``hostname`` has none: dnsmasq passes the lease's hostname with every event
    while it has one, and sends ``old`` without it when the name was removed. A lease without
    ``clientid`` has none either, unless ``keep_clientid``: dnsmasq re-reading its leases at
    start-up (``DNSMASQ_DATA_MISSING``) may not pass what it did not keep, and the recorded
    client ID then stays.

    A DHCPv6 lease (an IPv6 ``ip``) is ignored: nothing is read or written.

    :raises NotFound: no network with this VNI.
    :raises InvalidArgument: a malformed MAC, address or value.
    """
    if is_ipv6(ip):
        return f"DHCPv6 lease {ip} ignored; only DHCPv4 leases are recorded."
    mac = normalise_mac(mac)
    address = ipv4_address("IP address", ip)
    values = {"expiry": str(int(expiry)), "ipaddr": str(address), "hostname": _text(hostname),
              "clientid": _text(clientid)}
    key = schema.lease(vni, mac)

    def attempt() -> str:
        fields = {f: schema.lease_key(vni, mac, f) for f in schema.LEASE_FIELDS}
        entries = _network_entries(core, vni, [key, *fields.values()])
        ops: list[Op] = [] if entries[key] is not None else [Create(key, "")]
        for f, path in fields.items():
            entry = entries[path]
            if f == "clientid" and clientid is None and keep_clientid and entry is not None:
                continue  # re-read at start-up without it: the client ID recorded stays
            if entry is None:
                ops.append(Create(path, values[f]))
            elif entry.value != values[f]:
                ops.append(Set(path, values[f], entry.version))
        if not ops:
            return f"Lease {mac} ({address}) in network {vni} is unchanged."
        # A concurrent event for the same MAC, or the network went: read again.
        commit(core.store, ops, Conflict, AlreadyExists, NotFound)
        return f"Lease {mac} ({address}) recorded in network {vni}."

    return retrying(f"The lease of {mac} in network {vni}", attempt)


def forget_lease(core: Cluster, vni: str, mac: str, ip: str | None = None) -> str:
    """Remove a lease that dnsmasq released or expired (``del``); one that is not there is fine.

    A DHCPv6 lease (an IPv6 ``ip``) is ignored: nothing is read or written.
    """
    if is_ipv6(ip):
        return f"DHCPv6 lease {ip} ignored; only DHCPv4 leases are recorded."
    mac = normalise_mac(mac)
    _network_entries(core, vni, [])

    def attempt() -> str:
        try:
            keys = core.store.subtree(schema.lease(vni, mac))
        except NotFound:
            return f"Lease {mac} in network {vni} is not recorded; nothing to remove."
        commit(core.store, [Delete(k) for k in reversed(keys)], Conflict, NotFound)
        return f"Lease {mac} removed from network {vni}."

    return retrying(f"The lease of {mac} in network {vni}", attempt)


def children(core: Cluster, path: str) -> list[str]:
    """The children of ``path``, none when it is missing (a tree written by an older version)."""
    try:
        return core.store.children(path)
    except NotFound:
        return []


def read_leases(core: Cluster, vni: str, macs: list[str] | None = None) -> dict[str, dict[str, str | None]]:
    """The dynamic leases of a network (all, or those of ``macs``), MAC → fields, in one batch."""
    if macs is None:
        macs = children(core, schema.network_key(vni, "dhcp4_leases"))
    return _read(core, macs, schema.lease, schema.lease_key, schema.LEASE_FIELDS, vni)


def read_reservations(core: Cluster, vni: str, macs: list[str] | None = None) -> dict[str, dict[str, str | None]]:
    """The static reservations of a network (all, or those of ``macs``), MAC → fields, in one batch."""
    if macs is None:
        macs = children(core, schema.network_key(vni, "dhcp4_reservations"))
    return _read(core, macs, schema.reservation, schema.reservation_key, schema.RESERVATION_FIELDS, vni)


def _read(core: Cluster, macs: list[str], node: Any, key: Any, fields: tuple[str, ...], vni: str
          ) -> dict[str, dict[str, str | None]]:
    paths = [node(vni, m) for m in macs] + [key(vni, m, f) for m in macs for f in fields]
    entries = core.store.get_many(paths)
    found = {}
    for m in sorted(macs):
        if entries[node(vni, m)] is None:
            continue
        found[m] = {f: (None if (e := entries[key(vni, m, f)]) is None else e.value) for f in fields}
    return found


def _or_star(value: str | None) -> str:
    return "*" if value in (None, "", UNSET) else value


def lease_file_lines(core: Cluster, vni: str) -> list[str]:
    """The network's dynamic leases as lines of dnsmasq's lease file, for its ``init`` call:
    ``<expiry> <mac> <ip> <hostname or *> <client id or *>``. Records without a valid expiry
    or address are left out (dnsmasq would refuse the whole file)."""
    _network_entries(core, vni, [])
    lines = []
    for mac, lease in read_leases(core, vni).items():
        expiry, ip = (lease.get("expiry") or "").strip(), lease.get("ipaddr") or ""
        if not expiry.isdigit() or not MAC_PATTERN.match(mac):
            continue
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            continue
        lines.append(f"{int(expiry)} {mac} {ip} {_or_star(lease.get('hostname'))} {_or_star(lease.get('clientid'))}")
    return lines


def dhcp_host_lines(core: Cluster, vni: str) -> list[str]:
    """The network's static reservations as dnsmasq ``--dhcp-hostsfile`` lines
    (``<mac>,<ip>[,<hostname>]``), read from ``dhcp4_reservations``."""
    # For the node agent, which writes them to its dnsmasq's --dhcp-hostsfile: the original's
    # daemon read the misspelt ``dhcp_reservations`` (its bug D1), so reservations never reached
    # dnsmasq. Nothing in this package calls it; tests/test_ops_lease.py pins its output.
    _network_entries(core, vni, [])
    lines = []
    for mac, reservation in read_reservations(core, vni).items():
        ip, hostname = reservation.get("ipaddr"), reservation.get("hostname")
        if not ip:
            continue
        lines.append(f"{mac},{ip}" + ("" if hostname in (None, "", UNSET) else f",{hostname}"))
    return lines
