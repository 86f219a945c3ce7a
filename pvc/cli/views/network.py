"""Network views: `pvc network list|info` and `pvc network lease list|info`, in the original's
columns (its §5.3)."""

from __future__ import annotations

from typing import Any

from pvc.cli.render import Paint, fields, renderer, table
from pvc.cli.views.acl import acl_list


def _flag(value: bool, paint: Paint) -> str:
    return paint("True", "green") if value else paint("False", "blue")


def _text(value: Any) -> str:
    return "None" if value is None else str(value)


@renderer("network_list")
def network_list(networks: list[dict[str, Any]], paint: Paint, long: bool) -> str:
    headers = ["VNI", "Description", "Type", "Domain", "IPv6", "DHCPv6", "IPv4", "DHCPv4"]
    rows = [[n["vni"], n["description"], n["type"], _text(n["domain"]),
             _flag(n["ip6"]["network"] is not None, paint), _flag(n["ip6"]["dhcp_flag"], paint),
             _flag(n["ip4"]["network"] is not None, paint), _flag(n["ip4"]["dhcp_flag"], paint)]
            for n in networks]
    return table(headers, rows, paint)


def leases_and_acls(core: Any, networks: list[dict[str, Any]], long: bool) -> dict[int, tuple[list, list]]:
    """For `info -l`: each network's leases and reservations and its firewall rules."""
    if not long:
        return {}
    from pvc.lib.ops.acl import list_acls
    from pvc.lib.ops.lease import list_leases

    return {n["vni"]: (list_leases(core, str(n["vni"])) if n["type"] == "managed" else [],
                       list_acls(core, str(n["vni"]))) for n in networks}


@renderer("network_info", long=True, context=leases_and_acls)
def network_info(networks: list[dict[str, Any]], paint: Paint, long: bool,
                 context: dict[int, tuple[list, list]]) -> str:
    blocks = []
    for n in networks:
        pairs: list[tuple[str, Any]] = [("VNI", n["vni"]), ("Type", n["type"]), ("Description", n["description"]),
                                        ("Domain", _text(n["domain"]))]
        if n["type"] == "managed":
            ip6, ip4 = n["ip6"], n["ip4"]
            pairs += [("IPv6 network", _text(ip6["network"])), ("IPv6 gateway", _text(ip6["gateway"])),
                      ("DHCPv6 enabled", _flag(ip6["dhcp_flag"], paint)),
                      ("IPv4 network", _text(ip4["network"])), ("IPv4 gateway", _text(ip4["gateway"])),
                      ("DHCPv4 enabled", _flag(ip4["dhcp_flag"], paint))]
            if ip4["dhcp_flag"]:
                pairs.append(("DHCPv4 range", f"{ip4['dhcp_start']} - {ip4['dhcp_end']}"))
        text = fields(pairs, paint)
        if long:
            leases, acls = context[n["vni"]]
            if n["type"] == "managed":
                text += "\n\n" + paint("DHCP leases and reservations:", "purple") + "\n" + lease_list(leases, paint, long)
            text += "\n\n" + paint("Firewall rules:", "purple") + "\n" + acl_list(acls, paint, long)
        blocks.append(text)
    return "\n\n".join(blocks)


@renderer("lease_list")
def lease_list(leases: list[dict[str, Any]], paint: Paint, long: bool) -> str:
    """Dynamic leases show their expiry (epoch seconds), reservations `static`, as in the original."""
    rows = [[_text(lease["hostname"]), _text(lease["ip4_address"]), lease["mac_address"],
             paint("static", "cyan") if lease["static"] else _text(lease["timestamp"])]
            for lease in leases]
    return table(["Hostname", "IP Address", "MAC Address", "Timestamp"], rows, paint)
