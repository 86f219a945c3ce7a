"""The key layout of the cluster tree: the original PVC's, so tools that read its tree read ours.

Nothing outside this module spells a key path. Every name that becomes a path component passes
:func:`validate_name` first, so a hostile name is a clear error and never a different key.
"""

from __future__ import annotations

import re
import unicodedata

from pvc.lib.errors import InvalidArgument, quote

MAX_NAME_BYTES = 255

NODES = "/nodes"
PRIMARY_NODE = "/primary_node"
DOMAINS = "/domains"
NETWORKS = "/networks"
CEPH = "/ceph"
#: pvc's own: commands addressed to node agents (DESIGN "Commands to agents"), beside the
#: original layout; each entry is one JSON value, /commands/<id>.
COMMANDS = "/commands"

#: The root tree `pvc init` creates (original §3.2), parents before children.
ROOT_TREE: tuple[tuple[str, str], ...] = (
    (NODES, ""),
    (PRIMARY_NODE, "none"),
    (DOMAINS, ""),
    (NETWORKS, ""),
    (CEPH, ""),
    (CEPH + "/osds", ""),
    (CEPH + "/pools", ""),
    (CEPH + "/volumes", ""),
    (CEPH + "/snapshots", ""),
    (COMMANDS, ""),
)

#: Keys that `pvc init --yes` removes before re-creating the root tree.
ROOTS = (NODES, PRIMARY_NODE, DOMAINS, NETWORKS, CEPH, COMMANDS)

#: Value of /primary_node when no node is primary.
NO_PRIMARY = "none"

#: The children of /nodes/<name> (original §3.4) that pvc writes and reads. The original also
#: stored IPMI credentials in clear text here (its bug S8); pvc does not.
NODE_FIELDS = (
    "daemonmode",
    "daemonstate",
    "routerstate",
    "domainstate",
    "staticdata",
    "memtotal",
    "memused",
    "memfree",
    "memalloc",
    "vcpualloc",
    "cpuload",
    "domainscount",
    "runningdomains",
    "networkscount",
    "keepalive",
    # pvc's own: why the agent cannot take VMs (an unreachable hypervisor, a failed fence), or "".
    "problem",
)


#: Printable ASCII without "/": the names almost every key has, accepted without looking at each
#: character's Unicode category (lists of thousands of VMs validate hundreds of thousands of names).
_PLAIN_NAME = re.compile(r"[\x20-\x2e\x30-\x7e]{1,255}")
_PLAIN_PATH = re.compile(r"(?:/[\x20-\x2e\x30-\x7e]{1,255})+")


def validate_name(kind: str, value: object) -> str:
    """Return ``value`` if it can be one path component, else raise InvalidArgument.

    A name must be a non-empty string of at most 255 UTF-8 bytes, without ``/``, not ``.`` or
    ``..``, without control characters, and without the characters ZooKeeper cannot store.
    """
    if isinstance(value, str) and _PLAIN_NAME.fullmatch(value) and value not in (".", ".."):
        return value
    if not isinstance(value, str) or value == "":
        raise InvalidArgument(f"Invalid {kind} name: it must not be empty.")
    # The length first: every check below looks at each character (a 16 MB name cost 4 s of CPU
    # before it was refused, issue 11). A character is at least one UTF-8 byte.
    if len(value) > MAX_NAME_BYTES:
        raise InvalidArgument(f"Invalid {kind} name: it is longer than {MAX_NAME_BYTES} bytes.")
    if "/" in value:
        raise InvalidArgument(f"Invalid {kind} name {quote(value)}: it must not contain '/'.")
    if value in (".", ".."):
        raise InvalidArgument(f"Invalid {kind} name {quote(value)}: '.' and '..' are not names.")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise InvalidArgument(f"Invalid {kind} name {quote(value)}: it must not contain control characters.")
    bad = next((c for c in value if _unstorable(c)), None)
    if bad is not None:
        raise InvalidArgument(
            f"Invalid {kind} name {quote(value)}: it must not contain U+{ord(bad):04X} (characters from"
            " U+D800 to U+F8FF and from U+FFF0 up, such as emoji, cannot be stored)."
        )
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:  # no surrogate is left to fail the encoding
        raise InvalidArgument(f"Invalid {kind} name: it is longer than {MAX_NAME_BYTES} bytes.")
    return value


def _unstorable(c: str) -> bool:
    """Characters ZooKeeper refuses in a path (surrogates, private use, U+FFF0 and above, which
    includes everything outside the BMP), so both engines accept exactly the same names."""
    return "\ud800" <= c <= "\uf8ff" or c >= "\ufff0"


def node(name: str) -> str:
    """/nodes/<name>: its value is the node's daemon mode."""
    return f"{NODES}/{validate_name('node', name)}"


def node_key(name: str, field: str) -> str:
    """/nodes/<name>/<field> for one of NODE_FIELDS."""
    if field not in NODE_FIELDS:
        raise ValueError(f"unknown node field {field!r}")  # a programming error, not user input
    return f"{node(name)}/{field}"


# --- VMs (original §3.5) ---------------------------------------------------------------------

#: The children of /domains/<uuid>; the key itself holds the VM's name.
DOMAIN_FIELDS = ("state", "node", "lastnode", "failedreason", "consolelog", "rbdlist", "xml")


def domain(uuid: str) -> str:
    """/domains/<uuid>: its value is the VM's name."""
    return f"{DOMAINS}/{validate_name('VM UUID', uuid)}"


def domain_key(uuid: str, field: str) -> str:
    """/domains/<uuid>/<field> for one of DOMAIN_FIELDS."""
    if field not in DOMAIN_FIELDS:
        raise ValueError(f"unknown VM field {field!r}")
    return f"{domain(uuid)}/{field}"


# --- networks (original §3.6) -----------------------------------------------------------------

#: The value children of /networks/<vni>; the key itself holds the description.
NETWORK_FIELDS = (
    "nettype",
    "domain",
    "ip4_network",
    "ip4_gateway",
    "ip6_network",
    "ip6_gateway",
    "dhcp4_flag",
    "dhcp6_flag",
    "dhcp4_start",
    "dhcp4_end",
)
#: The container children of /networks/<vni>, created empty with the network.
NETWORK_CONTAINERS = ("dhcp4_leases", "dhcp4_reservations", "firewall_rules")
ACL_DIRECTIONS = ("in", "out")
#: Children of a dynamic lease (written by the DHCP server's hook) and of a static reservation.
LEASE_FIELDS = ("expiry", "ipaddr", "hostname", "clientid")
RESERVATION_FIELDS = ("ipaddr", "hostname")
ACL_FIELDS = ("order", "rule")


def network(vni: str | int) -> str:
    """/networks/<vni>: its value is the network's description."""
    return f"{NETWORKS}/{validate_name('VNI', str(vni))}"


def network_key(vni: str | int, field: str) -> str:
    """/networks/<vni>/<field> for one of NETWORK_FIELDS or NETWORK_CONTAINERS."""
    if field not in NETWORK_FIELDS + NETWORK_CONTAINERS:
        raise ValueError(f"unknown network field {field!r}")
    return f"{network(vni)}/{field}"


def lease(vni: str | int, mac: str) -> str:
    """/networks/<vni>/dhcp4_leases/<mac>: a dynamic lease."""
    return f"{network_key(vni, 'dhcp4_leases')}/{validate_name('MAC address', mac)}"


def lease_key(vni: str | int, mac: str, field: str) -> str:
    if field not in LEASE_FIELDS:
        raise ValueError(f"unknown lease field {field!r}")
    return f"{lease(vni, mac)}/{field}"


def reservation(vni: str | int, mac: str) -> str:
    """/networks/<vni>/dhcp4_reservations/<mac>: a static reservation (value `static`)."""
    return f"{network_key(vni, 'dhcp4_reservations')}/{validate_name('MAC address', mac)}"


def reservation_key(vni: str | int, mac: str, field: str) -> str:
    if field not in RESERVATION_FIELDS:
        raise ValueError(f"unknown reservation field {field!r}")
    return f"{reservation(vni, mac)}/{field}"


def acl_direction(vni: str | int, direction: str) -> str:
    """/networks/<vni>/firewall_rules/<in|out>."""
    if direction not in ACL_DIRECTIONS:
        raise InvalidArgument(f"Invalid direction {quote(direction)}: it must be 'in' or 'out'.")
    return f"{network_key(vni, 'firewall_rules')}/{direction}"


def acl(vni: str | int, direction: str, description: str) -> str:
    """/networks/<vni>/firewall_rules/<direction>/<description>."""
    return f"{acl_direction(vni, direction)}/{validate_name('ACL description', description)}"


def acl_key(vni: str | int, direction: str, description: str, field: str) -> str:
    if field not in ACL_FIELDS:
        raise ValueError(f"unknown ACL field {field!r}")
    return f"{acl(vni, direction, description)}/{field}"


# --- Ceph (original §3.7) -------------------------------------------------------------------------

CEPH_OSDS = CEPH + "/osds"
CEPH_POOLS = CEPH + "/pools"
CEPH_VOLUMES = CEPH + "/volumes"
CEPH_SNAPSHOTS = CEPH + "/snapshots"
#: Text of `rados df`, written by the primary's agent (the text of `ceph status` is /ceph's value).
CEPH_RADOSDF = CEPH + "/radosdf"
#: The children of /ceph/osds/<id> and of /ceph/pools/<name>.
OSD_FIELDS = ("node", "device", "stats")
POOL_FIELDS = ("pgs", "stats")

#: Ceph's own cluster-wide OSD flags (16.2's `ceph osd set` grammar; its monitor refuses "full"
#: all the same, and says so); "pglog_hardlimit" cannot be unset.
OSD_SET_FLAGS = ("full", "pause", "noup", "nodown", "noout", "noin", "nobackfill", "norebalance",
                 "norecover", "noscrub", "nodeep-scrub", "notieragent", "nosnaptrim", "pglog_hardlimit")
OSD_UNSET_FLAGS = OSD_SET_FLAGS[:-1]

#: What Ceph accepts as a pool, image or snapshot name and what is safe as one argument of a
#: command line: no "/" or "@" (they separate pool, image and snapshot in rbd's spec), no space,
#: and no leading "-" (it would read as an option).
_CEPH_NAME = re.compile(r"[A-Za-z0-9_.+:=~][A-Za-z0-9_.+:=~-]{0,127}", re.ASCII)
_OSD_ID = re.compile(r"(?:0|[1-9][0-9]{0,8})", re.ASCII)


def validate_ceph_name(kind: str, value: object) -> str:
    """A Ceph pool, volume or snapshot name: 1-128 of A-Z a-z 0-9 _ . + : = ~ -, not starting with
    "-", and not "." or ".."; else InvalidArgument naming what is wrong."""
    if isinstance(value, str) and _CEPH_NAME.fullmatch(value) and value not in (".", ".."):
        return value
    if not isinstance(value, str) or value == "":
        raise InvalidArgument(f"Invalid {kind} name: it must not be empty.")
    if len(value) > 128:
        raise InvalidArgument(f"Invalid {kind} name: it is longer than 128 characters.")
    if value.startswith("-"):
        raise InvalidArgument(f"Invalid {kind} name {quote(value)}: it must not start with '-'.")
    bad = next((c for c in value if not _CEPH_NAME.fullmatch("a" + c)), None)
    if bad is not None:
        raise InvalidArgument(f"Invalid {kind} name {quote(value)}: it must not contain {quote(bad)}; use letters, "
                              "digits and _ . + : = ~ - only.")
    raise InvalidArgument(f"Invalid {kind} name {quote(value)}: '.' and '..' are not names.")


def validate_osd_id(value: object) -> str:
    """An OSD id as Ceph numbers them (0, 1, ...), as text; else InvalidArgument."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _OSD_ID.fullmatch(text):
        raise InvalidArgument(f"Invalid OSD id {quote(value)}: it must be a number such as 0 or 12.")
    return text


def osd(osd_id: str | int) -> str:
    """/ceph/osds/<id>: its value is empty."""
    return f"{CEPH_OSDS}/{validate_osd_id(osd_id)}"


def osd_key(osd_id: str | int, field: str) -> str:
    """/ceph/osds/<id>/<field> for one of OSD_FIELDS."""
    if field not in OSD_FIELDS:
        raise ValueError(f"unknown OSD field {field!r}")
    return f"{osd(osd_id)}/{field}"


def pool(name: str) -> str:
    """/ceph/pools/<name>: its value is empty."""
    return f"{CEPH_POOLS}/{validate_ceph_name('pool', name)}"


def pool_key(name: str, field: str) -> str:
    """/ceph/pools/<name>/<field> for one of POOL_FIELDS."""
    if field not in POOL_FIELDS:
        raise ValueError(f"unknown pool field {field!r}")
    return f"{pool(name)}/{field}"


def pool_volumes(name: str) -> str:
    """/ceph/volumes/<pool>: the pool's volumes are its children."""
    return f"{CEPH_VOLUMES}/{validate_ceph_name('pool', name)}"


def volume(pool_name: str, name: str) -> str:
    """/ceph/volumes/<pool>/<volume>: its value is empty."""
    return f"{pool_volumes(pool_name)}/{validate_ceph_name('volume', name)}"


def volume_stats(pool_name: str, name: str) -> str:
    """/ceph/volumes/<pool>/<volume>/stats: the text of `rbd info --format json`."""
    return f"{volume(pool_name, name)}/stats"


def pool_snapshots(name: str) -> str:
    """/ceph/snapshots/<pool>: a child per volume, whose children are its snapshots."""
    return f"{CEPH_SNAPSHOTS}/{validate_ceph_name('pool', name)}"


def volume_snapshots(pool_name: str, name: str) -> str:
    """/ceph/snapshots/<pool>/<volume>: the volume's snapshots are its children."""
    return f"{pool_snapshots(pool_name)}/{validate_ceph_name('volume', name)}"


def snapshot(pool_name: str, volume_name: str, name: str) -> str:
    """/ceph/snapshots/<pool>/<volume>/<snapshot>: its value is empty."""
    return f"{volume_snapshots(pool_name, volume_name)}/{validate_ceph_name('snapshot', name)}"


def snapshot_stats(pool_name: str, volume_name: str, name: str) -> str:
    """/ceph/snapshots/<pool>/<volume>/<snapshot>/stats: `{}` (the original writes nothing more)."""
    return f"{snapshot(pool_name, volume_name, name)}/stats"


# --- commands to node agents (pvc's own) --------------------------------------------------------

_COMMAND_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)


def command(command_id: str) -> str:
    """/commands/<id>: one command's JSON entry (see :mod:`pvc.lib.commands`)."""
    if not isinstance(command_id, str) or not _COMMAND_ID.fullmatch(command_id):
        raise InvalidArgument(f"Invalid command id {quote(command_id)}.")
    return f"{COMMANDS}/{command_id}"


def parent(path: str) -> str:
    """The parent key of ``path`` ('/' for a top-level key)."""
    head = path.rsplit("/", 1)[0]
    return head or "/"


def check_path(path: str) -> str:
    """Check a full key path built by this module (absolute, no empty or dot components)."""
    if path == "/":
        return path
    if _PLAIN_PATH.fullmatch(path) and "/." not in path:
        return path  # no dot components possible: "/." never occurs, so neither "." nor ".." does
    if not path.startswith("/") or path.endswith("/"):
        raise InvalidArgument(f"Invalid key path {quote(path)}.")
    for part in path[1:].split("/"):
        validate_name("key", part)
    return path
