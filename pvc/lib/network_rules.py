"""The rules a virtual network must follow, checked with :mod:`ipaddress` on the network as a whole:
on add, and again after a modify has merged its changes into the stored network.

Decisions where the manual is silent or loose:

- A bridged network takes no IP or DHCP values. As the manual says ("all additional optional
  values are ignored by this type"), they are accepted, not stored (the store keeps ``None`` and
  ``False``), and the success message names the values that were ignored; since they are not
  used, they are not checked either. Its VNI range, description and DNS ``domain`` are checked,
  and the domain is kept, as the original kept it.
- On add, an ``ip6_gateway`` that is missing, not an IPv6 address, outside ``ip6_network`` or its
  network address is the network address + 1 (``fd00:1::/64`` → ``fd00:1::1``), as the manual
  says; when one was given, the success message says it was replaced. On modify the default is
  for a missing gateway only (a new ``ip6_network`` without one, or ``ip6_gateway=``): an invalid
  ``ip6_gateway`` given there is refused, naming it, and nothing changes, so a mistyped gateway
  cannot silently replace a custom one. ``ip4_gateway`` has no default: missing or invalid is a
  failure, as the manual says.
- Networks are given in CIDR form and stored normalised (``fd00:1:0:0::/64`` → ``fd00:1::/64``);
  host bits set are an error. An IPv4 network must leave room for a gateway and hosts (/30 or
  larger), an IPv6 one for a gateway (/127 or larger).
- DHCPv4 needs an IPv4 network; ``dhcp4_start``/``dhcp4_end`` without DHCP switched on are
  refused; switching DHCP off clears the range.
- A description must also not be all digits: ``<network>`` arguments that are all digits are
  VNIs (as in the original), so such a description could never be named.
- On modify an empty value clears an optional value (``ip6_network=`` removes IPv6, ``domain=``
  restores the default domain); clearing a network clears its gateway too, and a new IPv6
  network without a gateway gets the default one. ``vni`` and ``nettype`` cannot change.
- A modify after which a static DHCP reservation would be outside the IPv4 network, on its new
  gateway or on its network or broadcast address, or which removes IPv4 while reservations
  exist, is refused, naming the reservations (:func:`stranded_reservations`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pvc.lib import schema
from pvc.lib.errors import InvalidArgument, quote

BRIDGED, MANAGED = "bridged", "managed"
NETTYPES = (BRIDGED, MANAGED)
#: Largest VNI of each type: a vLAN ID, a VXLAN ID.
VNI_MAX = {BRIDGED: 4094, MANAGED: 16777215}
#: The optional values a bridged network does not take.
IP_VALUES = ("ip4_network", "ip4_gateway", "ip6_network", "ip6_gateway", "dhcp4_start", "dhcp4_end")
#: The optional values in the manual's order, for messages.
MANUAL_ORDER = ("ip4_network", "ip4_gateway", "ip6_network", "ip6_gateway", "dhcp4", "dhcp4_start", "dhcp4_end")
#: The store's text for an unset value and for the flags (original §3.1).
UNSET, TRUE, FALSE = "None", "True", "False"


#: Longest VNI text read (the largest VNI has 8 digits); longer is refused before int() sees it.
MAX_VNI_CHARS = 20
#: One DNS label: ASCII letters, digits and hyphens, 1 to 63 of them, no hyphen first or last.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
MAX_DOMAIN = 253


def vni_number(vni: Any) -> int:
    """A VNI given as an integer or as ASCII digits (a leading '-' is read, and refused by the
    range check with the range); other scripts' digits and underscores are not digits here."""
    if isinstance(vni, bool) or not isinstance(vni, (int, str)):
        raise InvalidArgument(f"Invalid VNI {quote(vni)}: it must be an integer.")
    if isinstance(vni, str):
        text = vni.strip(" \t\r\n")
        digits = text[1:] if text.startswith("-") else text
        if len(text) > MAX_VNI_CHARS or not (digits.isascii() and digits.isdigit()):
            shown = vni if len(vni) <= 40 else vni[:40] + "…"
            raise InvalidArgument(f"Invalid VNI {quote(shown)}: it must be an integer.")
        return int(text)
    return vni


def check_description(description: Any) -> str:
    """A valid network description: a name without whitespace that is not all digits."""
    if not isinstance(description, str):
        raise InvalidArgument(f"Invalid network description {quote(description)}.")
    schema.validate_name("network description", description)  # first: it bounds the length
    if description and any(c.isspace() for c in description):
        raise InvalidArgument(f"Invalid network description {quote(description)}: it must not contain whitespace.")
    if description.isdigit():
        raise InvalidArgument(
            f"Invalid network description {quote(description)}: it must not be all digits (that names a VNI).")
    return description


def check_domain(domain: str, default: bool = False) -> str:
    """A DNS domain name: labels of ASCII letters, digits and hyphens (1 to 63 each, no hyphen
    first or last) joined by single dots, at most 253 characters in all. The domain goes into
    dnsmasq's configuration and DHCP answers, so nothing else is let through. ``default``: the
    domain was derived from the description (``<description>.local``), not given."""
    if not isinstance(domain, str):
        raise InvalidArgument(f"Invalid domain {quote(domain)}: it must be a DNS domain name.")
    if len(domain) > MAX_DOMAIN:  # before anything looks at each character
        raise InvalidArgument(f"Invalid domain {quote(domain[:40] + '…')}: it is longer than {MAX_DOMAIN} "
                              "characters.")
    bad = next((label for label in domain.split(".") if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        why = ("labels are letters, digits and hyphens, 1 to 63 of them, without a hyphen first or last, "
               "joined by single dots")
        if default:
            raise InvalidArgument(f"The default domain {quote(domain)} (the description followed by '.local') is "
                                  f"not a DNS domain name ({why}): give a 'domain'.")
        raise InvalidArgument(f"Invalid domain {quote(domain)}: it must be a DNS domain name ({why}).")
    return domain


def check_cidr(name: str, text: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    example = "10.0.0.0/24" if version == 4 else "fd00:1::/64"
    if "/" not in text:
        raise InvalidArgument(f"Invalid {quote(name)} {quote(text)}: give an IPv{version} network in CIDR form, "
                              f"such as {example}.")
    try:
        net = cls(text)
    except ValueError:
        try:
            loose = cls(text, strict=False)
        except ValueError:
            raise InvalidArgument(f"Invalid {quote(name)} {quote(text)}: it is not an IPv{version} network in CIDR "
                                  f"form, such as {example}.") from None
        raise InvalidArgument(f"Invalid {quote(name)} {quote(text)}: it has host bits set; the network is "
                              f"{loose}.") from None
    smallest = 30 if version == 4 else 127
    if net.prefixlen > smallest:
        raise InvalidArgument(f"Invalid {quote(name)} {quote(text)}: a /{net.prefixlen} network leaves no room for "
                              f"a gateway{' and hosts' if version == 4 else ''} (use /{smallest} or larger).")
    return net


def _host_problem(text: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network
                  ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, str | None]:
    """``text`` as an address of ``net`` and None, or None/the address and why it is not a host of ``net``."""
    cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
    try:
        address = cls(text)
    except ValueError:
        return None, f"it is not an IPv{net.version} address"
    if address not in net:
        return address, f"it is not inside the network {net}"
    if address == net.network_address:
        return address, f"it is the network address of {net}"
    if net.version == 4 and address == net.broadcast_address:
        return address, f"it is the broadcast address of {net}"
    return address, None


def host_address(name: str, text: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network
                 ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``text`` as an address of a host of ``net``: inside it, not its network (or broadcast) address."""
    address, problem = _host_problem(text, net)
    if problem is not None or address is None:
        raise InvalidArgument(f"Invalid {quote(name)} {quote(text)}: {problem}.")
    return address


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def stranded_reservations(values: dict[str, str], reservations: dict[str, str | None]) -> list[str]:
    """The static reservations (MAC → address) that a network with the stored ``values`` (those of
    :func:`check_network`) would strand, each as "MAC (address: why)"; none when all still fit."""
    if not reservations:
        return []
    if values["ip4_network"] == UNSET:
        return [f"{quote(mac)} ({ip}: the network would have no IPv4)" for mac, ip in sorted(reservations.items())]
    net = ipaddress.IPv4Network(values["ip4_network"])
    out = []
    for mac, ip in sorted(reservations.items()):
        address, problem = _host_problem(str(ip), net)
        if problem is None and str(address) == values["ip4_gateway"]:
            problem = "it would be the gateway"
        if problem is not None:
            out.append(f"{quote(mac)} ({ip}: {problem})")
    return out


def check_network(vni: int, state: dict[str, Any], default_ip6_gateway: bool = True
                  ) -> tuple[dict[str, str], list[str]]:
    """Validate a whole network; return its stored values (NETWORK_FIELDS plus ``""``, the
    description) and notes for the success message on what was ignored or replaced. ``state``
    holds description, nettype, domain, the IP values (None when unset) and dhcp4 (a bool).
    Without ``default_ip6_gateway`` an invalid ``ip6_gateway`` is refused instead of replaced by
    the default (a modify that gives one)."""
    nettype = state["nettype"]
    if nettype not in NETTYPES:
        raise InvalidArgument(f"Invalid network type {quote(nettype)}: it must be 'bridged' or 'managed'.")
    top = VNI_MAX[nettype]
    if not 1 <= vni <= top:
        what = "vLAN ID" if nettype == BRIDGED else "VXLAN ID"
        raise InvalidArgument(f"Invalid VNI {quote(vni)}: a {nettype} network's VNI is its {what}, from 1 to {top}.")
    description = check_description(state["description"])
    if state["domain"] is not None:
        domain = check_domain(state["domain"])
    else:
        domain = check_domain(f"{description}.local", default=True)
    values = {"": description, "nettype": nettype, "domain": domain, "dhcp4_flag": FALSE, "dhcp6_flag": FALSE,
              **{name: UNSET for name in IP_VALUES}}
    notes: list[str] = []
    if nettype == BRIDGED:  # the manual: "all additional optional values are ignored by this type"
        given = {**{name: state[name] is not None for name in IP_VALUES}, "dhcp4": bool(state["dhcp4"])}
        ignored = [name for name in MANUAL_ORDER if given[name]]
        if ignored:
            notes.append(f"a bridged network takes no IP or DHCP values, so {_names(ignored)} "
                         f"{'was' if len(ignored) == 1 else 'were'} ignored")
        return values, notes
    if state["ip4_network"] is None and state["ip6_network"] is None:
        raise InvalidArgument(f"A managed network needs 'ip4_network' or 'ip6_network' (network {quote(description)}, "
                              f"VNI {vni}).")
    for v in (4, 6):
        if state[f"ip{v}_gateway"] is not None and state[f"ip{v}_network"] is None:
            raise InvalidArgument(f"'ip{v}_gateway' {quote(state[f'ip{v}_gateway'])} is given without "
                                  f"'ip{v}_network'.")
    if state["ip4_network"] is not None:
        net4 = check_cidr("ip4_network", state["ip4_network"], 4)
        if state["ip4_gateway"] is None:
            raise InvalidArgument(f"'ip4_network' {quote(state['ip4_network'])} needs an 'ip4_gateway' inside it.")
        gateway4 = host_address("ip4_gateway", state["ip4_gateway"], net4)
        values.update(ip4_network=str(net4), ip4_gateway=str(gateway4))
    if state["ip6_network"] is not None:
        net6 = check_cidr("ip6_network", state["ip6_network"], 6)
        gateway6 = net6.network_address + 1  # the manual's default, for a missing or invalid gateway
        if state["ip6_gateway"] is not None:
            chosen, problem = _host_problem(state["ip6_gateway"], net6)
            if problem is None and chosen is not None:
                gateway6 = chosen
            elif not default_ip6_gateway:
                raise InvalidArgument(f"Invalid 'ip6_gateway' {quote(state['ip6_gateway'])}: {problem}.")
            else:
                if chosen is None:
                    what = "is not an IPv6 address"
                elif chosen == net6.network_address:
                    what = f"is the network address of {net6}"
                else:
                    what = f"is not inside {net6}"
                notes.append(f"ip6_gateway {quote(state['ip6_gateway'])} {what}; using {gateway6}")
        values.update(ip6_network=str(net6), ip6_gateway=str(gateway6), dhcp6_flag=TRUE)
    if not state["dhcp4"]:
        for name in ("dhcp4_start", "dhcp4_end"):
            if state[name] is not None:
                raise InvalidArgument(f"{quote(name)} {quote(state[name])} is given but DHCPv4 is not switched on "
                                      "('dhcp4').")
        return values, notes
    if state["ip4_network"] is None:
        raise InvalidArgument(f"DHCPv4 needs an IPv4 network: 'dhcp4' is switched on but 'ip4_network' is not given "
                              f"(network {quote(description)}, VNI {vni}).")
    for name in ("dhcp4_start", "dhcp4_end"):
        if state[name] is None:
            raise InvalidArgument(f"DHCPv4 needs {quote(name)}: it is not given (network {quote(description)}, "
                                  f"VNI {vni}).")
    start = host_address("dhcp4_start", state["dhcp4_start"], net4)
    end = host_address("dhcp4_end", state["dhcp4_end"], net4)
    if start > end:
        raise InvalidArgument(f"Invalid DHCPv4 range: 'dhcp4_start' {quote(start)} is after 'dhcp4_end' {quote(end)}.")
    if start <= gateway4 <= end:
        raise InvalidArgument(f"Invalid DHCPv4 range {start} to {end}: it contains the gateway {quote(gateway4)}.")
    values.update(dhcp4_flag=TRUE, dhcp4_start=str(start), dhcp4_end=str(end))
    return values, notes
