"""Network operations: the manual's virtual network endpoints (bridged vLANs, managed VXLANs).

A network lives at /networks/<vni> (value: its description) with the original's value children
(its §3.6): unset values are the text ``None`` and flags ``True``/``False``, so tools reading an
original tree read ours. Answers use JSON types instead (numbers, booleans, null).

The manual's rules, and the decisions where it is silent, are in :mod:`pvc.lib.network_rules`.
"""

from __future__ import annotations

from typing import Any

from pvc.lib import schema
from pvc.lib.core import Cluster, not_initialised
from pvc.lib.errors import AlreadyExists, Conflict, InvalidState, NotFound, quote
from pvc.lib.match import select_any
from pvc.lib.network_rules import (
    IP_VALUES,
    NETTYPES,
    TRUE,
    UNSET,
    check_description,
    check_network,
    stranded_reservations,
    vni_number,
)
from pvc.lib.registry import Param, completer, operation
from pvc.lib.retry import ReadAgain, commit, retrying
from pvc.lib.store import Check, Create, Delete, Entry, Op, Set
from pvc.lib.store.base import delete_batches

NETWORK_ARG = Param("VNI or description of the network.", positional=True, complete="network")


# --- reading -------------------------------------------------------------------------------------


def network_vnis(core: Cluster) -> list[str]:
    """VNIs of all networks, in numeric order."""
    try:
        return sorted(core.store.children(schema.NETWORKS), key=lambda v: (len(v), v))
    except NotFound:
        raise not_initialised(core) from None


def descriptions(core: Cluster, vnis: list[str]) -> dict[str, str]:
    """The description of each existing network among ``vnis`` (one batch)."""
    entries = core.store.get_many([schema.network(v) for v in vnis])
    return {v: e.value for v in vnis if (e := entries[schema.network(v)]) is not None}


def resolve_vni(core: Cluster, network: str) -> str:
    """The VNI of ``network``, given as a VNI or as an exact description; NotFound otherwise."""
    text = str(network)
    if text.isdigit():
        if core.store.exists(schema.network(text)):
            return text
    else:
        schema.validate_name("network description", text)
        for vni, description in descriptions(core, network_vnis(core)).items():
            if description == text:
                return vni
    raise NotFound(f"Network {quote(text)} not found.")


def optional(text: str | None) -> str | None:
    """A stored optional value: the original's ``None`` text (and the daemon's empty text) are unset."""
    return None if text in (None, "", UNSET) else text


def flag(text: str | None) -> bool:
    return text == TRUE


def read_networks(core: Cluster, vnis: list[str]) -> dict[str, dict[str, Entry | None]]:
    """The key entry (under ``""``) and every field entry of each existing network, in one batch."""
    paths = [schema.network(v) for v in vnis] + [schema.network_key(v, f) for v in vnis for f in schema.NETWORK_FIELDS]
    entries = core.store.get_many(paths)
    found = {}
    for v in vnis:
        if entries[schema.network(v)] is None:
            continue
        found[v] = {"": entries[schema.network(v)],
                    **{f: entries[schema.network_key(v, f)] for f in schema.NETWORK_FIELDS}}
    return found


def _values(entries: dict[str, Entry | None]) -> dict[str, str | None]:
    return {f: (None if e is None else e.value) for f, e in entries.items()}


def network_object(vni: str, values: dict[str, str | None]) -> dict[str, Any]:
    """A network in the original's shape (its §2.7.3) with JSON types; ``values[""]`` is the description."""
    return {
        "vni": int(vni) if vni.isdigit() else vni,
        "description": values.get(""),
        "type": values.get("nettype"),
        "domain": optional(values.get("domain")),
        "ip4": {
            "network": optional(values.get("ip4_network")),
            "gateway": optional(values.get("ip4_gateway")),
            "dhcp_flag": flag(values.get("dhcp4_flag")),
            "dhcp_start": optional(values.get("dhcp4_start")),
            "dhcp_end": optional(values.get("dhcp4_end")),
        },
        "ip6": {
            "network": optional(values.get("ip6_network")),
            "gateway": optional(values.get("ip6_gateway")),
            "dhcp_flag": flag(values.get("dhcp6_flag")),
        },
    }


@completer("network")
def complete_networks(core: Cluster, incomplete: str) -> list[str]:
    vnis = network_vnis(core)
    names = vnis + sorted(descriptions(core, vnis).values())
    return [n for n in names if n.startswith(incomplete)]


@operation("network", "list", "GET", "/network", result="list", render="network_list",
           params={"limit": Param("Show only networks whose VNI or description matches this fuzzy regex.",
                                  positional=True)})
def list_networks(core: Cluster, limit: str | None = None) -> list[dict[str, Any]]:
    """List the virtual networks of the cluster, by VNI.

    LIMIT is the original's fuzzy regex, matched against the VNI and the description; a network
    matching both is listed once.
    """
    found = read_networks(core, network_vnis(core))
    chosen = select_any(list(found), limit, lambda v: v, lambda v: found[v][""].value,  # type: ignore[union-attr]
                        timeout=core.settings.regex_timeout)
    return [network_object(v, _values(found[v])) for v in chosen]


@operation("network", "info", "GET", "/network/<network>", result="list", render="network_info",
           params={"network": NETWORK_ARG})
def get_network(core: Cluster, network: str) -> list[dict[str, Any]]:
    """Show one virtual network, by exact VNI or description."""
    vni = resolve_vni(core, network)
    found = read_networks(core, [vni])
    if vni not in found:  # removed in between
        raise NotFound(f"Network {quote(network)} not found.")
    return [network_object(vni, _values(found[vni]))]


def _blank(value: str | None) -> str | None:
    return None if value == "" else value


def _parent(core: Cluster) -> Entry:
    entry = core.store.get_many([schema.NETWORKS])[schema.NETWORKS]
    if entry is None:
        raise not_initialised(core)
    return entry


def _description_taken(core: Cluster, description: str, vni: str) -> None:
    for other, text in descriptions(core, network_vnis(core)).items():
        if text == description and other != vni:
            raise AlreadyExists(f"A network with description {quote(description)} already exists (VNI {other}).")


def _with_notes(message: str, notes: list[str]) -> str:
    """A success message with what was ignored or replaced: "Network ... added; <note>; <note>." """
    return "; ".join([message, *notes]) + "."


# --- writing -------------------------------------------------------------------------------------

DESCRIPTION = Param("Description of the network: unique, without whitespace.", short="-d")
DOMAIN = Param("DNS domain of the network (default: <description>.local).", short="-n")
IP4_NETWORK = Param("IPv4 network in CIDR form, e.g. 10.1.0.0/24.", short="-i", cli_aliases=("--ipnet",))
IP4_GATEWAY = Param("IPv4 gateway address inside ip4_network (required with it).", short="-g",
                    cli_aliases=("--gateway",))
IP6_NETWORK = Param("IPv6 network in CIDR form, e.g. fd00:1::/64.", cli_aliases=("--ipnet6", "-i6"))
IP6_GATEWAY = Param("IPv6 gateway address inside ip6_network (missing, or invalid on add: the network's ::1 "
                    "address; invalid on modify: refused).",
                    cli_aliases=("--gateway6", "-g6"))
DHCP4 = Param("Serve DHCPv4 on the IPv4 network (needs dhcp4_start and dhcp4_end).", kind="flag",
              cli_aliases=("--dhcp",))
DHCP4_START = Param("First address of the DHCPv4 range.", cli_aliases=("--dhcp-start",))
DHCP4_END = Param("Last address of the DHCPv4 range.", cli_aliases=("--dhcp-end",))
#: The optional values of add and modify (the manual: "identical to the values for add").
OPTIONAL_PARAMS = {"domain": DOMAIN, "ip4_network": IP4_NETWORK, "ip4_gateway": IP4_GATEWAY,
                   "ip6_network": IP6_NETWORK, "ip6_gateway": IP6_GATEWAY, "dhcp4": DHCP4,
                   "dhcp4_start": DHCP4_START, "dhcp4_end": DHCP4_END}


@operation(
    "network", "add", "POST", "/network",
    params={
        "vni": Param("VNI: the vLAN ID (1-4094) of a bridged network, the VXLAN ID (1-16777215) of a managed one.",
                     kind="int", positional=True),
        "description": DESCRIPTION,
        "nettype": Param("Network type: bridged (a vLAN) or managed (a VXLAN with gateway, DHCP and DNS).",
                         kind="choice", choices=NETTYPES, short="-p", cli_aliases=("--type",)),
        **OPTIONAL_PARAMS,
    },
)
def add_network(core: Cluster, vni: int, description: str, nettype: str, domain: str | None = None,
                ip4_network: str | None = None, ip4_gateway: str | None = None, ip6_network: str | None = None,
                ip6_gateway: str | None = None, dhcp4: bool | None = None, dhcp4_start: str | None = None,
                dhcp4_end: str | None = None) -> str:
    """Add a virtual network.

    A bridged network is a vLAN: it takes no IP or DHCP values, and those given are ignored (the
    message names them). A managed network is a VXLAN and needs at least one of ip4_network and
    ip6_network; ip4_network needs ip4_gateway inside it; a missing or invalid ip6_gateway is the
    network's ::1 address; and DHCPv4 needs a range inside the IPv4 network that leaves out the
    gateway.
    """
    number = vni_number(vni)
    state = {"description": description, "nettype": nettype, "domain": _blank(domain),
             "ip4_network": _blank(ip4_network), "ip4_gateway": _blank(ip4_gateway),
             "ip6_network": _blank(ip6_network), "ip6_gateway": _blank(ip6_gateway), "dhcp4": bool(dhcp4),
             "dhcp4_start": _blank(dhcp4_start), "dhcp4_end": _blank(dhcp4_end)}
    values, notes = check_network(number, state)
    key = str(number)

    def attempt() -> str:
        parent = _parent(core)
        if core.store.exists(schema.network(key)):
            raise AlreadyExists(f"A network with VNI {key} already exists.")
        _description_taken(core, description, key)
        ops: list[Op] = [Set(schema.NETWORKS, parent.value, parent.version),  # concurrent adds conflict here
                         Create(schema.network(key), values[""])]
        ops += [Create(schema.network_key(key, f), values[f]) for f in schema.NETWORK_FIELDS]
        ops += [Create(schema.network_key(key, c), "") for c in schema.NETWORK_CONTAINERS]
        ops += [Create(schema.acl_direction(key, d), "") for d in schema.ACL_DIRECTIONS]
        commit(core.store, ops, Conflict, AlreadyExists)  # another writer got in between: read again
        return _with_notes(f"Network {quote(description)} (VNI {key}) added", notes)

    return retrying("The list of networks", attempt)


@operation(
    "network", "modify", "PUT", "/network/<network>",
    params={
        "network": NETWORK_ARG,
        "description": DESCRIPTION,
        **OPTIONAL_PARAMS,
    },
)
def modify_network(core: Cluster, network: str, description: str | None = None, domain: str | None = None,
                   ip4_network: str | None = None, ip4_gateway: str | None = None, ip6_network: str | None = None,
                   ip6_gateway: str | None = None, dhcp4: bool | None = None, dhcp4_start: str | None = None,
                   dhcp4_end: str | None = None) -> str:
    """Change the values of a virtual network.

    Only the values given change; the network is then checked as a whole by the rules of `add`
    (a bridged network ignores IP and DHCP values). An empty value clears an optional value
    (domain: back to the default). Switching DHCPv4 off clears its range. The VNI and the network
    type cannot change. An invalid ip6_gateway is refused (the ::1 default is for a new
    ip6_network given without a gateway). A change that would leave a static DHCP reservation
    outside the IPv4 network, or on its gateway, network or broadcast address, or that removes
    IPv4 while reservations exist, is refused.
    """
    changes = {"domain": domain, "ip4_network": ip4_network, "ip4_gateway": ip4_gateway, "ip6_network": ip6_network,
               "ip6_gateway": ip6_gateway, "dhcp4_start": dhcp4_start, "dhcp4_end": dhcp4_end}
    if description is not None:
        check_description(description)

    def attempt() -> str:
        vni = resolve_vni(core, network)
        parent = _parent(core)
        found = read_networks(core, [vni]).get(vni)
        if found is None:
            raise ReadAgain()  # removed in between: resolve again (and fail)
        stored = _values(found)
        state: dict[str, Any] = {"description": stored[""], "nettype": stored["nettype"],
                                 "domain": optional(stored["domain"]), "dhcp4": flag(stored["dhcp4_flag"]),
                                 **{name: optional(stored[name]) for name in IP_VALUES}}
        for name, given in changes.items():
            if given is not None:
                state[name] = _blank(given)
        for v in (4, 6):  # a changed network without a gateway: none (cleared) or the default (IPv6)
            if changes[f"ip{v}_network"] is not None and changes[f"ip{v}_gateway"] is None:
                if state[f"ip{v}_network"] is None or v == 6:
                    state[f"ip{v}_gateway"] = None
        if description is not None:
            state["description"] = description
        if dhcp4 is not None:
            state["dhcp4"] = dhcp4
        if not state["dhcp4"]:  # DHCP off: its range goes, unless given now (which check_network refuses)
            state["dhcp4_start"] = _blank(dhcp4_start)
            state["dhcp4_end"] = _blank(dhcp4_end)
        # The manual's default for an invalid ip6_gateway is add's; a modify naming one is refused.
        values, notes = check_network(int(vni), state, default_ip6_gateway=_blank(ip6_gateway) is None)
        ops: list[Op] = []
        for field, entry in found.items():
            path = schema.network(vni) if field == "" else schema.network_key(vni, field)
            if entry is None:
                ops.append(Create(path, values[field]))
            elif entry.value != values[field]:
                ops.append(Set(path, values[field], entry.version))
            else:  # unchanged, but what was checked must still hold when the changes land
                ops.append(Check(path, entry.version))
        label = f"Network {quote(values[''])} (VNI {vni})"
        if all(isinstance(op, Check) for op in ops):
            return _with_notes(f"{label} already has these values; nothing changed", notes)
        if any(values[f] != stored[f] for f in ("ip4_network", "ip4_gateway")):
            ops += _reservations_fit(core, vni, values, label)
        if values[""] != stored[""]:
            _description_taken(core, values[""], vni)
            ops.append(Set(schema.NETWORKS, parent.value, parent.version))  # concurrent renames conflict here
        commit(core.store, ops, Conflict, AlreadyExists, NotFound)
        return _with_notes(f"{label} modified", notes)

    return retrying(f"Network {quote(network)}", attempt)


def _reservations_fit(core: Cluster, vni: str, values: dict[str, str], label: str) -> list[Op]:
    """Refuse (InvalidState) a new IPv4 network or gateway that would strand a static reservation.

    Returns the guard for the commit: a check of the reservations container at the version read
    before the reservations. `network lease add` rewrites that container at the version it read,
    so a reservation added meanwhile fails the commit and the modify reads again. A tree without
    the container (written by an older version) can hold no reservations: no guard then.
    """
    from pvc.lib.dhcp_leases import read_reservations

    container = schema.network_key(vni, "dhcp4_reservations")
    entry = core.store.get_many([container])[container]
    if entry is None:
        return []
    reservations = {mac: r.get("ipaddr") for mac, r in read_reservations(core, vni).items()}
    stranded = stranded_reservations(values, reservations)
    if stranded:
        what = "removing IPv4" if values["ip4_network"] == UNSET else \
            f"IPv4 network {values['ip4_network']} with gateway {values['ip4_gateway']}"
        many = len(stranded) > 1  # reservations cannot be changed, only removed (and added again)
        raise InvalidState(f"{label}: {what} would strand the static DHCP reservation{'s' if many else ''} of "
                           f"MAC{'s' if many else ''} {', '.join(stranded)}; remove the "
                           f"reservation{'s' if many else ''} first.")
    return [Check(container, entry.version)]


def _fits(core: Cluster, keys: list[str]) -> bool:
    """Whether deleting ``keys`` fits in one commit (its batches leave ample room for the guard)."""
    return len(delete_batches(keys, core.store.path_prefix)) == 1


def _clear_large_containers(core: Cluster, vni: str, keys: list[str]) -> None:
    """Delete the contents of the network's containers that can outgrow one commit (dynamic
    leases first, then reservations, then ACLs), each in commits under the size limit, children
    first, until the rest of the network (``keys`` without them) fits in one commit. The
    containers themselves stay, so the network stays whole (and usable) until its final commit."""
    containers = [schema.network_key(vni, "dhcp4_leases"), schema.network_key(vni, "dhcp4_reservations"),
                  *(schema.acl_direction(vni, d) for d in schema.ACL_DIRECTIONS)]
    for container in containers:
        if _fits(core, keys):
            return
        inside = [k for k in keys if k.startswith(container + "/")]
        for batch in delete_batches(inside, core.store.path_prefix):
            core.store.commit(batch)
        keys = [k for k in keys if not k.startswith(container + "/")]


@operation("network", "remove", "DELETE", "/network/<network>", params={"network": NETWORK_ARG}, destructive=True)
def remove_network(core: Cluster, network: str) -> str:
    """Remove a virtual network with its leases, reservations and ACLs.

    Refused while a VM is attached to the network's bridge (vmbr<vni>). An interrupted removal
    may leave the network without some of its leases; running it again finishes it.
    """
    # One commit when the network fits in one. A larger one (thousands of dynamic leases) first
    # loses its leases (then reservations, ACLs) in batches, once the checks that can refuse the
    # removal have passed; the rest goes in one final commit with the same guard.
    #
    # The commit checks /domains as read before the VMs, so a `vm define` in between makes it read
    # again. A `vm modify` attaching a VM at the same moment is not seen; it ends as one landing just
    # after the removal would (a VM on the bridge of no network), which VM changes allow.
    from pvc.lib.vm_records import vms_using_bridge  # VM parsing loads only when needed

    def attempt() -> str:
        vni = resolve_vni(core, network)
        domains = core.store.get_many([schema.DOMAINS])[schema.DOMAINS]
        label = f"Network {quote(descriptions(core, [vni]).get(vni, network))} (VNI {vni})"
        users = vms_using_bridge(core, f"vmbr{vni}")
        if users:
            raise InvalidState(f"{label} is used by VM{'s' if len(users) > 1 else ''} {', '.join(map(quote, users))} "
                               f"(bridge vmbr{vni}); detach them first.")
        try:
            keys = core.store.subtree(schema.network(vni))
            large = not _fits(core, keys)
            if large:  # nothing above refused the removal: the large contents go first, in batches
                _clear_large_containers(core, vni, keys)
        except (Conflict, NotFound):
            raise ReadAgain() from None  # removed, or leases changing meanwhile: read again
        if large:
            raise ReadAgain()  # then read (and check) again, and the rest goes in one commit
        ops: list[Op] = [Delete(k) for k in reversed(keys)]
        if domains is not None:  # a VM defined meanwhile (which writes /domains) makes this fail and re-check
            ops.insert(0, Check(schema.DOMAINS, domains.version))
        commit(core.store, ops, Conflict, NotFound)
        return f"{label} removed."

    return retrying(f"Network {quote(network)}", attempt)
