"""Storage operations: the manual's Ceph endpoints (`pvc storage ceph ...`).

Reads come from the tree (original §3.7), which the node agents keep: the primary publishes
`ceph status`, `rados df` and pool stats, each OSD's node its OSDs' stats. Changes are carried
out by a node agent through the command channel (:mod:`pvc.lib.commands`): the primary
coordinator for options, pools, volumes and snapshots, the OSD's node for its OSD. As the manual
says, an action waits until Ceph has done it, and the tree changes only after Ceph succeeded, in
one transaction with the command's result. Everything that can be checked here is checked first
(names, sizes, that the pool exists and the volume does not, that no VM uses a volume being
removed), so a bad request never reaches a node; what only Ceph can refuse (a pool Ceph already
has, a shrink) comes back as Ceph's own words.
"""

from __future__ import annotations

from typing import Any, Callable

from pvc.lib import commands, schema
from pvc.lib.ceph_records import (
    OSD_FLAGS,
    Snapshot,
    Volume,
    format_bytes_tohuman,
    osd_ids,
    osd_object,
    osd_state,
    parse_size,
    pool_names,
    pool_object,
    read_osds,
    read_pools,
    read_volume_stats,
    snapshot_list,
    validate_device,
    volume_list,
    volume_object,
    volume_users,
)
from pvc.lib.core import Cluster, not_initialised
from pvc.lib.errors import AlreadyExists, InvalidArgument, InvalidState, NotFound, quote
from pvc.lib.match import select, select_any
from pvc.lib.node_records import why_not_alive
from pvc.lib.registry import Param, Variant, completer, operation

#: The acknowledgement OSD and pool removal need, as the manual says (the CLI asks instead).
DANGER = ("This can have unintended consequences and should not be automated; if you are sure you know what you "
          "are doing, send it again with 'yes_i_really_mean_it'.")
#: Placement groups a new pool may have (Ceph's mon_max_pool_pg_num default).
MAX_PGS = 65536

OSD_ARG = Param("ID of the OSD (a number such as 0 or 12).", positional=True, complete="osd")
POOL_ARG = Param("Name of the pool.", positional=True, complete="pool")
VOLUME_ARG = Param("Name of the volume.", positional=True, complete="volume")
SNAPSHOT_ARG = Param("Name of the snapshot.", positional=True)
YES = Param("Required: acknowledge that this is dangerous (any value but 0, false, no, off).", kind="flag")


def _ceph_name(kind: str, name: str) -> str:
    return schema.validate_ceph_name(kind, name)


@completer("osd")
def complete_osds(core: Cluster, incomplete: str) -> list[str]:
    return [i for i in osd_ids(core) if i.startswith(incomplete)]


@completer("pool")
def complete_pools(core: Cluster, incomplete: str) -> list[str]:
    return [p for p in pool_names(core) if p.startswith(incomplete)]


@completer("volume")
def complete_volumes(core: Cluster, incomplete: str) -> list[str]:
    return sorted({v.name for v in volume_list(core) if v.name.startswith(incomplete)})


# --- the section's root, status and utilisation ---------------------------------------------------


@operation("storage", "info", "GET", "/storage", cli=False,
           cli_reason="`pvc storage` is the group of the storage commands; its help says the same.")
def storage_info(core: Cluster) -> str:
    """Say what the storage endpoints are for (the original's GET /api/v1/storage)."""
    return "Manage the storage of the PVC cluster."


def _figures(core: Cluster, key: str, kind: str, what: str) -> dict[str, Any]:
    entries = core.store.get_many([key, schema.PRIMARY_NODE])
    primary, data = entries[schema.PRIMARY_NODE], entries[key]
    if primary is None:
        raise not_initialised(core)
    name = primary.value if primary.value and primary.value != schema.NO_PRIMARY else None
    if data is None or not data.value.strip():
        who = f"primary coordinator {quote(name)}" if name else "primary coordinator (there is none now)"
        raise InvalidState(f"No Ceph {what} yet: the {who} has not published `{'ceph status' if kind == 'status' else 'rados df'}` "
                           "(its node agent does every pvc.ceph.figures_interval seconds once Ceph answers).")
    return {"ceph_data": data.value.rstrip(), "primary_node": name, "type": kind}


@operation("storage ceph", "status", "GET", "/storage/ceph", result="object", render="ceph_figures",
           extra_paths=("/storage/ceph/status",))
def ceph_status(core: Cluster) -> dict[str, Any]:
    """Show the Ceph cluster's status: the text of `ceph status`, as the primary published it."""
    return _figures(core, schema.CEPH, "status", "status")


@operation("storage ceph", "df", "GET", "/storage/ceph/df", result="object", render="ceph_figures")
def ceph_df(core: Cluster) -> dict[str, Any]:
    """Show the Ceph cluster's utilisation: the text of `rados df`, as the primary published it."""
    return _figures(core, schema.CEPH_RADOSDF, "utilization", "utilisation")


@operation(
    "storage ceph cluster-option", "change", "POST", "/storage/ceph/cluster-option",
    params={
        "action": Param("set or unset.", kind="choice", choices=("set", "unset")),
        "option": Param("The cluster-wide OSD flag (Ceph's list).", kind="choice", choices=OSD_FLAGS, positional=True),
    },
    variants=(
        Variant("set", {"action": "set"}, "Set a cluster-wide OSD flag (ceph osd set), e.g. noout."),
        Variant("unset", {"action": "unset"}, "Unset a cluster-wide OSD flag (ceph osd unset), e.g. noout."),
    ),
)
def cluster_option(core: Cluster, action: str, option: str) -> str:
    """Set or unset a cluster-wide OSD flag (`ceph osd set|unset OPTION`).

    OPTION is one of Ceph's flags: full, pause, noup, nodown, noout, noin, nobackfill,
    norebalance, norecover, noscrub, nodeep-scrub, notieragent, nosnaptrim. The primary
    coordinator's agent runs the command.
    """
    return commands.run_on_primary(core, f"osd_{action}", {"option": option}).message


# --- OSDs -----------------------------------------------------------------------------------------


def _osd(core: Cluster, osd: str) -> dict[str, str | None]:
    schema.validate_osd_id(osd)
    found = read_osds(core, [osd])
    if osd not in found:
        raise NotFound(f"OSD {quote(osd)} not found.")
    return found[osd]


@operation("storage ceph osd", "list", "GET", "/storage/ceph/osd", result="list", render="osd_list",
           params={"limit": Param("Show only OSDs whose ID matches this fuzzy regex.", positional=True)})
def list_osds(core: Cluster, limit: str | None = None) -> list[dict[str, Any]]:
    """List the OSDs of the storage cluster.

    LIMIT is the original's fuzzy regex, matched on the OSD's ID. OSDs are sorted numerically;
    their stats are those their node published last ({} before its first figures).
    """
    found = read_osds(core, select(osd_ids(core), limit, timeout=core.settings.regex_timeout))
    return [osd_object(i, values) for i, values in found.items()]


@operation("storage ceph osd", "info", "GET", "/storage/ceph/osd/<osd>", result="list", render="osd_list",
           params={"osd": OSD_ARG})
def get_osd(core: Cluster, osd: str) -> list[dict[str, Any]]:
    """Show one OSD (exactly this ID: 1 is not 10)."""
    return [osd_object(osd, _osd(core, osd))]


@operation("storage ceph osd", "state", "GET", "/storage/ceph/osd/<osd>/state", result="object", render="osd_state",
           params={"osd": OSD_ARG})
def get_osd_state(core: Cluster, osd: str) -> dict[str, Any]:
    """Show whether an OSD is in and up (1 or 0, null before its node's first figures)."""
    return osd_state(osd, _osd(core, osd))


@operation(
    "storage ceph osd", "add", "POST", "/storage/ceph/osd",
    params={
        "node": Param("The node the OSD's device is on.", positional=True, complete="node"),
        "device": Param("The device: a block device such as /dev/sdb, or a file path for a file-backed OSD.",
                        positional=True),
        "weight": Param("The OSD's CRUSH weight, usually 1.0 when all OSD disks are the same size "
                        "(on the command line: default 1.0).", kind="float", positional=True, cli_default=lambda: 1.0),
    },
    destructive=True,
)
def add_osd(core: Cluster, node: str, device: str, weight: float) -> str:
    """Add an OSD on a node's device to the storage cluster; the device's data is destroyed.

    The node must exist and its agent run; no OSD may use the device already. A block device is
    prepared with ceph-volume; a file path gives a BlueStore OSD on that file (created sparse
    when missing). The node's agent runs it, which may take a minute (pvc.system.commands.osd_timeout).
    """
    schema.validate_name("node", node)
    validate_device(device)
    if not 0 <= weight <= 1000:
        raise InvalidArgument(f"Invalid weight {weight:g}: a CRUSH weight is a number from 0 to 1000, usually 1.0.")
    why = why_not_alive(core, node)
    if why == "it does not exist":
        raise NotFound(f"Node {quote(node)} not found.")
    if why is not None:
        raise InvalidState(f"Node {quote(node)} cannot add an OSD: {why}.")
    for i, values in read_osds(core, osd_ids(core)).items():
        if values.get("node") == node and values.get("device") == device:
            raise AlreadyExists(f"Device {quote(device)} on node {quote(node)} is used by OSD {quote(i)} already.")
    return commands.run(core, node, "osd_add", {"node": node, "device": device, "weight": weight},
                        timeout=core.settings.osd_timeout).message


@operation(
    "storage ceph osd", "remove", "DELETE", "/storage/ceph/osd/<osd>",
    params={"osd": OSD_ARG, "yes_i_really_mean_it": YES},
    variants=(
        Variant("remove", {"yes_i_really_mean_it": True},
                "Remove an OSD from the storage cluster; its data moves to the other OSDs first.\n\nIts node's "
                "agent sets it out, waits (up to pvc.system.commands.osd_timeout) until it holds no placement "
                "group, stops it and purges it. To watch the data move first, run `osd out OSD --wait`.",
                destructive=True),
    ),
)
def remove_osd(core: Cluster, osd: str, yes_i_really_mean_it: bool = False) -> str:
    """Remove an OSD from the storage cluster (needs yes_i_really_mean_it).

    Its node's agent sets it out, waits until it holds no placement groups (up to
    pvc.system.commands.osd_timeout), stops it and purges it; then its keys go.
    """
    schema.validate_osd_id(osd)
    if not yes_i_really_mean_it:
        raise InvalidArgument(f"Not removing OSD {quote(osd)}: {DANGER}")
    values = _osd(core, osd)
    return commands.run(core, _owner(osd, values), "osd_remove", {"osd": osd},
                        timeout=core.settings.osd_timeout).message


def _owner(osd: str, values: dict[str, str | None]) -> str:
    node = values.get("node")
    if not node:
        raise InvalidState(f"OSD {quote(osd)} has no node in the tree, so no node agent can act on it.")
    return node


def osd_placement_groups(core: Cluster, osd: str) -> int | None:
    """How many placement groups the OSD holds, as its node last published (None: not yet)."""
    stats = osd_object(osd, _osd(core, osd))["stats"]
    pgs = stats.get("pgs")
    return pgs if isinstance(pgs, int) and not isinstance(pgs, bool) else None


def wait_osd_drained(core: Cluster, osd: str, state: str, timeout: float | None = None,
                     progress: Callable[[str], None] | None = None, before: Any = None) -> str:
    """Wait until an OSD set out holds no placement groups, as its node's figures say; a line
    for each change of the count."""
    seen: list[int | None] = []

    def drained() -> bool:
        pgs = osd_placement_groups(core, osd)
        if progress is not None and (not seen or seen[-1] != pgs):
            progress(f"OSD {osd} holds {'an unknown number of' if pgs is None else pgs} placement groups.")
        seen.append(pgs)
        return pgs == 0

    timeout = core.settings.wait_timeout if timeout is None else timeout
    core.store.wait_for([schema.osd_key(osd, "stats")], drained, timeout,
                        describe=lambda: f"OSD {quote(osd)} still holds {seen[-1] if seen else 'unknown'} placement "
                                         "groups (its node publishes figures every pvc.ceph.figures_interval s).")
    return f"OSD {osd} holds no placement groups; it can be removed."


@operation(
    "storage ceph osd", "set-state", "POST", "/storage/ceph/osd/<osd>/state",
    params={"osd": OSD_ARG, "state": Param("in or out.", kind="choice", choices=("in", "out"))},
    variants=(
        Variant("in", {"state": "in"}, "Set an OSD in: Ceph places data on it again (ceph osd in)."),
        Variant("out", {"state": "out"},
                "Set an OSD out: Ceph moves its data to the other OSDs (ceph osd out).\n\n--wait waits until it "
                "holds no placement groups, with a line each time the count changes (from its node's figures).",
                wait=wait_osd_drained),
    ),
)
def set_osd_state(core: Cluster, osd: str, state: str) -> str:
    """Set an OSD in or out of the storage cluster; its node's agent runs the command."""
    values = _osd(core, osd)
    return commands.run(core, _owner(osd, values), f"osd_{state}", {"osd": osd}).message


# --- pools ----------------------------------------------------------------------------------------


def _pool_exists(core: Cluster, pool: str) -> None:
    _ceph_name("pool", pool)
    if not core.store.exists(schema.pool(pool)):
        raise NotFound(f"Pool {quote(pool)} not found.")


@operation("storage ceph pool", "list", "GET", "/storage/ceph/pool", result="list", render="pool_list",
           params={"limit": Param("Show only pools whose name matches this fuzzy regex.", positional=True)})
def list_pools(core: Cluster, limit: str | None = None) -> list[dict[str, Any]]:
    """List the RBD pools of the storage cluster.

    LIMIT is the original's fuzzy regex, matched on the pool's name. Stats are those the primary
    published last ({} before its first figures).
    """
    found = read_pools(core, select(pool_names(core), limit, timeout=core.settings.regex_timeout))
    return [pool_object(p, values) for p, values in found.items()]


@operation("storage ceph pool", "info", "GET", "/storage/ceph/pool/<pool>", result="list", render="pool_list",
           params={"pool": POOL_ARG})
def get_pool(core: Cluster, pool: str) -> list[dict[str, Any]]:
    """Show one RBD pool (exact name)."""
    _ceph_name("pool", pool)
    found = read_pools(core, [pool])
    if pool not in found:
        raise NotFound(f"Pool {quote(pool)} not found.")
    return [pool_object(pool, found[pool])]


@operation(
    "storage ceph pool", "add", "POST", "/storage/ceph/pool",
    params={"pool": POOL_ARG,
            "pgs": Param("Placement groups of the pool (e.g. 256 for 3 nodes with 2 disks each; it can grow later).",
                         kind="int", positional=True)},
)
def add_pool(core: Cluster, pool: str, pgs: int) -> str:
    """Add an RBD pool to the storage cluster (replicated, with the RBD application enabled)."""
    _ceph_name("pool", pool)
    if not 1 <= pgs <= MAX_PGS:
        raise InvalidArgument(f"Invalid pgs {pgs}: a pool has from 1 to {MAX_PGS} placement groups (e.g. 128 or 256).")
    if core.store.exists(schema.pool(pool)):
        raise AlreadyExists(f"Pool {quote(pool)} already exists.")
    return commands.run_on_primary(core, "pool_add", {"pool": pool, "pgs": pgs}).message


def _in_use(core: Cluster, specs: list[str], what: str) -> None:
    """Refuse when a VM's disks include one of ``specs`` (pool/volume)."""
    users = volume_users(core)
    used = {s: users[s] for s in specs if s in users}
    if used:
        spec, vms = next(iter(sorted(used.items())))
        names = ", ".join(quote(v) for v in vms)
        more = f" (and {len(used) - 1} more volume(s) of it)" if len(used) > 1 else ""
        raise InvalidState(f"Cannot {what}: volume {quote(spec)}{more} is a disk of VM {names}. Remove the VM with "
                           "its disks (pvc vm remove), or change its disks, first.")


@operation(
    "storage ceph pool", "remove", "DELETE", "/storage/ceph/pool/<pool>",
    params={"pool": POOL_ARG, "yes_i_really_mean_it": YES},
    variants=(
        Variant("remove", {"yes_i_really_mean_it": True},
                "Remove an RBD pool with all its volumes and their data.\n\nRefused while a VM uses one of its "
                "volumes.", destructive=True),
    ),
)
def remove_pool(core: Cluster, pool: str, yes_i_really_mean_it: bool = False) -> str:
    """Remove an RBD pool and all its volumes and data (needs yes_i_really_mean_it).

    Refused while a VM's disks include one of its volumes.
    """
    _ceph_name("pool", pool)
    if not yes_i_really_mean_it:
        raise InvalidArgument(f"Not removing pool {quote(pool)}: {DANGER}")
    _pool_exists(core, pool)
    _in_use(core, [v.spec for v in volume_list(core, pool)], f"remove pool {quote(pool)}")
    return commands.run_on_primary(core, "pool_remove", {"pool": pool}).message


# --- volumes --------------------------------------------------------------------------------------


def _volume_exists(core: Cluster, pool: str, volume: str) -> None:
    _ceph_name("pool", pool)
    _ceph_name("volume", volume)
    if not core.store.exists(schema.volume(pool, volume)):
        raise NotFound(f"Volume {quote(volume)} not found in pool {quote(pool)}.")


@operation(
    "storage ceph volume", "list", "GET", "/storage/ceph/volume", result="list", render="volume_list",
    params={"limit": Param("Show only volumes whose name (or pool/name) matches this fuzzy regex.", positional=True),
            "pool": Param("Show only the volumes of this pool.", short="-p", complete="pool")},
)
def list_volumes(core: Cluster, limit: str | None = None, pool: str | None = None) -> list[dict[str, Any]]:
    """List the RBD volumes of the storage cluster.

    LIMIT is the original's fuzzy regex, matched on the volume's name and on pool/name; POOL
    narrows the list to one pool (both may be given).
    """
    if pool is not None:
        _ceph_name("pool", pool)
    chosen = select_any(volume_list(core, pool), limit, lambda v: v.name, lambda v: v.spec,
                        timeout=core.settings.regex_timeout)
    stats = read_volume_stats(core, chosen)
    return [volume_object(v, stats[v]) for v in chosen]


@operation("storage ceph volume", "info", "GET", "/storage/ceph/volume/<pool>/<volume>", result="list",
           render="volume_list", params={"pool": POOL_ARG, "volume": VOLUME_ARG})
def get_volume(core: Cluster, pool: str, volume: str) -> list[dict[str, Any]]:
    """Show one RBD volume (exact pool and name)."""
    _volume_exists(core, pool, volume)
    found = Volume(pool, volume)
    return [volume_object(found, read_volume_stats(core, [found])[found])]


SIZE_HELP = "bytes, or a whole number with a unit B, K, M, G, T, P (binary), e.g. 1073741824, 4096M or 20G"


@operation(
    "storage ceph volume", "add", "POST", "/storage/ceph/volume",
    params={"pool": POOL_ARG, "volume": VOLUME_ARG,
            "size": Param(f"Size of the volume: {SIZE_HELP}.", positional=True)},
)
def add_volume(core: Cluster, pool: str, volume: str, size: str) -> str:
    """Add an RBD volume to a pool (rbd create, with layering and exclusive-lock)."""
    _ceph_name("pool", pool)
    _ceph_name("volume", volume)
    size_bytes = parse_size(size)
    _pool_exists(core, pool)
    if core.store.exists(schema.volume(pool, volume)):
        raise AlreadyExists(f"Volume {quote(volume)} already exists in pool {quote(pool)}.")
    return commands.run_on_primary(core, "volume_add", {"pool": pool, "volume": volume, "size": size_bytes}).message


@operation(
    "storage ceph volume", "modify", "PUT", "/storage/ceph/volume/<pool>/<volume>",
    params={"pool": POOL_ARG, "volume": VOLUME_ARG,
            "name": Param("New name of the volume (rename).", positional=True),
            "size": Param(f"New size of the volume (resize): {SIZE_HELP}.", positional=True)},
    variants=(
        # The other value fixed empty, as the original's working requests sent it (size=30G&name=).
        Variant("resize", {"name": ""}, "Resize an RBD volume (rbd resize; Ceph refuses to shrink it)."),
        Variant("rename", {"size": ""}, "Rename an RBD volume (rbd rename; its snapshots follow).\n\nRefused while "
                "a VM uses it."),
    ),
)
def modify_volume(core: Cluster, pool: str, volume: str, name: str | None = None, size: str | None = None) -> str:
    """Rename or resize an RBD volume: exactly one of name and size.

    An empty value counts as not given (the original's clients sent `size=30G&name=`). A rename
    is refused while a VM's disks include the volume (its XML names it). Ceph refuses to shrink
    a volume.
    """
    _ceph_name("pool", pool)
    _ceph_name("volume", volume)
    name, size = name or None, size or None
    if (name is None) == (size is None):
        raise InvalidArgument("Give exactly one of 'name' (to rename the volume) and 'size' (to resize it); "
                              "nothing was changed.")
    if size is not None:
        size_bytes = parse_size(size)
        _volume_exists(core, pool, volume)
        return commands.run_on_primary(core, "volume_resize",
                                       {"pool": pool, "volume": volume, "size": size_bytes}).message
    assert name is not None
    _ceph_name("volume", name)
    _volume_exists(core, pool, volume)
    if name == volume:
        return f"Volume {quote(volume)} in pool {quote(pool)} is already named so; nothing changed."
    if core.store.exists(schema.volume(pool, name)):
        raise AlreadyExists(f"Volume {quote(name)} already exists in pool {quote(pool)}.")
    _in_use(core, [Volume(pool, volume).spec], f"rename volume {quote(volume)}")
    return commands.run_on_primary(core, "volume_rename", {"pool": pool, "volume": volume, "new": name}).message


@operation(
    "storage ceph volume", "remove", "DELETE", "/storage/ceph/volume/<pool>/<volume>",
    params={"pool": POOL_ARG, "volume": VOLUME_ARG}, destructive=True,
)
def remove_volume(core: Cluster, pool: str, volume: str) -> str:
    """Remove an RBD volume, its snapshots and its data.

    Refused while a VM's disks include it (remove the VM with its disks: pvc vm remove).
    """
    _volume_exists(core, pool, volume)
    _in_use(core, [Volume(pool, volume).spec], f"remove volume {quote(volume)}")
    return commands.run_on_primary(core, "volume_remove", {"pool": pool, "volume": volume}).message


# --- snapshots ------------------------------------------------------------------------------------


@operation(
    "storage ceph volume snapshot", "list", "GET", "/storage/ceph/volume/snapshot", result="list",
    render="snapshot_list",
    params={"limit": Param("Show only snapshots whose name (or pool/volume@name) matches this fuzzy regex.",
                           positional=True),
            "pool": Param("Show only the snapshots of this pool's volumes.", short="-p", complete="pool"),
            "volume": Param("Show only the snapshots of volumes of this name (in any pool unless --pool).",
                            complete="volume")},
)
def list_snapshots(core: Cluster, limit: str | None = None, pool: str | None = None,
                   volume: str | None = None) -> list[str]:
    """List the RBD snapshots, as the original: pool/volume@snapshot.

    POOL, VOLUME and LIMIT combine freely: VOLUME alone matches that volume name in every pool.
    LIMIT is the original's fuzzy regex, matched on the snapshot's name and on the whole
    pool/volume@snapshot.
    """
    if pool is not None:
        _ceph_name("pool", pool)
    if volume is not None:
        _ceph_name("volume", volume)
    found = [s for s in snapshot_list(core, pool) if volume is None or s.volume == volume]
    chosen = select_any(found, limit, lambda s: s.name, lambda s: s.spec, timeout=core.settings.regex_timeout)
    return [s.spec for s in chosen]


def _snapshot_exists(core: Cluster, pool: str, volume: str, snapshot: str) -> Snapshot:
    _ceph_name("pool", pool)
    _ceph_name("volume", volume)
    _ceph_name("snapshot", snapshot)
    if not core.store.exists(schema.snapshot(pool, volume, snapshot)):
        raise NotFound(f"Snapshot {quote(snapshot)} of volume {quote(pool + '/' + volume)} not found.")
    return Snapshot(pool, volume, snapshot)


@operation("storage ceph volume snapshot", "info", "GET", "/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>",
           result="list", render="snapshot_list", params={"pool": POOL_ARG, "volume": VOLUME_ARG, "snapshot": SNAPSHOT_ARG})
def get_snapshot(core: Cluster, pool: str, volume: str, snapshot: str) -> list[str]:
    """Show one RBD snapshot (exact pool, volume and name), as pool/volume@snapshot."""
    return [_snapshot_exists(core, pool, volume, snapshot).spec]


@operation(
    "storage ceph volume snapshot", "add", "POST", "/storage/ceph/volume/snapshot",
    params={"pool": POOL_ARG, "volume": VOLUME_ARG, "snapshot": SNAPSHOT_ARG},
)
def add_snapshot(core: Cluster, pool: str, volume: str, snapshot: str) -> str:
    """Take a snapshot of an RBD volume (rbd snap create)."""
    _ceph_name("snapshot", snapshot)
    _volume_exists(core, pool, volume)
    if core.store.exists(schema.snapshot(pool, volume, snapshot)):
        raise AlreadyExists(f"Snapshot {quote(snapshot)} of volume {quote(pool + '/' + volume)} already exists.")
    return commands.run_on_primary(core, "snapshot_add", {"pool": pool, "volume": volume, "snapshot": snapshot}).message


@operation(
    "storage ceph volume snapshot", "rename", "PUT", "/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>",
    params={"pool": POOL_ARG, "volume": VOLUME_ARG, "snapshot": SNAPSHOT_ARG,
            "name": Param("New name of the snapshot.", positional=True)},
)
def rename_snapshot(core: Cluster, pool: str, volume: str, snapshot: str, name: str) -> str:
    """Rename an RBD snapshot (rbd snap rename; the original's undocumented PUT)."""
    _ceph_name("snapshot", name)
    _snapshot_exists(core, pool, volume, snapshot)
    if name == snapshot:
        return f"Snapshot {quote(snapshot)} of volume {quote(pool + '/' + volume)} is already named so; nothing changed."
    if core.store.exists(schema.snapshot(pool, volume, name)):
        raise AlreadyExists(f"Snapshot {quote(name)} of volume {quote(pool + '/' + volume)} already exists.")
    return commands.run_on_primary(core, "snapshot_rename",
                                   {"pool": pool, "volume": volume, "snapshot": snapshot, "new": name}).message


@operation(
    "storage ceph volume snapshot", "remove", "DELETE", "/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>",
    params={"pool": POOL_ARG, "volume": VOLUME_ARG, "snapshot": SNAPSHOT_ARG}, destructive=True,
)
def remove_snapshot(core: Cluster, pool: str, volume: str, snapshot: str) -> str:
    """Remove an RBD snapshot (rbd snap rm)."""
    _snapshot_exists(core, pool, volume, snapshot)
    return commands.run_on_primary(core, "snapshot_remove",
                                   {"pool": pool, "volume": volume, "snapshot": snapshot}).message


__all__ = ["OSD_FLAGS", "format_bytes_tohuman", "parse_size"]
