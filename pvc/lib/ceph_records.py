"""Reading the Ceph part of the tree (original §3.7) and the objects of its §2.7.5-2.7.8, with
JSON types; sizes as the original wrote and read them (its §4.9.4).

Lists read whole subtrees: :meth:`Store.subtree` is one pipelined batch per depth level and the
values are one :meth:`Store.get_many`, so a list costs a handful of round trips however many
pools, volumes and snapshots there are, never one per key.

The tree is written by the node agents once Ceph has done a change (:mod:`pvc.agent.ceph`); the
values are the original's: ``stats`` keys hold JSON text (``{}`` until the agent's figures),
a volume's ``stats`` the text of ``rbd info --format json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from pvc.lib import schema
from pvc.lib.core import Cluster, not_initialised
from pvc.lib.errors import InvalidArgument, NotFound, quote
from pvc.lib.registry import MAX_NUMBER_CHARS

#: The options of `ceph osd set|unset`: Ceph's own list of cluster-wide OSD flags, the one the
#: agent checks too (Ceph itself refuses to unset pglog_hardlimit, and says so).
OSD_FLAGS = schema.OSD_SET_FLAGS

#: The original's size units: binary, upper case, one letter (its §4.9.4).
SIZE_UNITS = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
#: Largest size accepted: what rbd's 64-bit image size can hold.
MAX_SIZE = 2**63 - 1
_SIZE = re.compile(r"([0-9]+)([BKMGTP]?)", re.ASCII)


def parse_size(value: object) -> int:
    """Bytes from a size such as ``1073741824``, ``4096M`` or ``20G`` (units B K M G T P, binary,
    upper case, after a whole number); InvalidArgument saying what is wrong otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument(f"Invalid size {quote(value)}: give a number of bytes or a whole number with one of "
                              "the units B, K, M, G, T, P (e.g. 1073741824, 4096M, 20G).")
    text = str(value).strip(" \t")
    match = _SIZE.fullmatch(text) if len(text) <= MAX_NUMBER_CHARS else None
    if match is None:
        hint = ""
        if re.fullmatch(r"[0-9]+[bkmgtp]", text, re.ASCII):
            hint = f" (units are upper case: {text[:-1]}{text[-1].upper()})"
        elif re.fullmatch(r"[0-9]*[.,][0-9]+[BKMGTP]?", text, re.ASCII):
            hint = " (a whole number is needed: use a smaller unit, e.g. 1536M for 1.5G)"
        elif (long := re.fullmatch(r"([0-9]+)\s*([KMGTPkmgtp])i?[Bb]", text, re.ASCII)) is not None:
            hint = f" (one letter only: {long.group(1)}{long.group(2).upper()})"
        raise InvalidArgument(f"Invalid size {quote(value)}{hint}: give a number of bytes or a whole number with "
                              "one of the units B, K, M, G, T, P (binary: 1K = 1024 bytes), e.g. 1073741824, "
                              "4096M or 20G.")
    number, unit = match.groups()
    size = int(number) * SIZE_UNITS[unit or "B"]
    if size <= 0:
        raise InvalidArgument(f"Invalid size {quote(value)}: it must be more than 0 bytes.")
    if size > MAX_SIZE:
        raise InvalidArgument(f"Invalid size {quote(value)}: it is larger than Ceph can hold ({MAX_SIZE} bytes).")
    return size


def format_bytes_tohuman(size: int) -> str:
    """The original's short size: the smallest unit that keeps the number (rounded up) at four
    digits or fewer; 0 → ``0B``, 1 GiB → ``1024M``, 10 GiB → ``10G``."""
    text = f"{size}B"
    for unit in ("P", "T", "G", "M", "K", "B"):
        rounded = -(-size // SIZE_UNITS[unit])
        if rounded <= 9999:
            text = f"{rounded}{unit}"
    return text


def validate_device(device: object) -> str:
    """An OSD's device: an absolute path (a block device such as /dev/sdb, or a file for a
    file-backed OSD), one plain argument on a command line."""
    if not isinstance(device, str) or not device:
        raise InvalidArgument("Invalid device: it must not be empty.")
    if (not device.startswith("/") or len(device) > 4096 or not device.isprintable() or any(c.isspace() for c in device)
            or any(part in (".", "..") for part in device.split("/")) or "," in device):
        raise InvalidArgument(f"Invalid device {quote(device)}: give an absolute path such as /dev/sdb, without "
                              "spaces, commas or '.'/'..' components.")
    return device


def _json(text: str | None) -> dict[str, Any]:
    """A stats value as an object: ``{}`` when missing, empty or not a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def _children(core: Cluster, path: str) -> list[str]:
    try:
        return core.store.children(path)
    except NotFound:
        if not core.store.exists(schema.NODES):
            raise not_initialised(core) from None
        return []  # a tree written before /ceph/... existed: nothing of that kind yet


def _tree(core: Cluster, path: str) -> list[str]:
    """Every key under ``path`` (which may be missing: then none), in batches per depth level."""
    try:
        return core.store.subtree(path)
    except NotFound:
        if not core.store.exists(schema.NODES):
            raise not_initialised(core) from None
        return []


def _osd_key(name: str) -> tuple[int, int | str]:
    """OSD ids sort numerically (2 before 10); a foreign key that is no number after them."""
    return (0, int(name)) if name.isdigit() else (1, name)


# --- OSDs (§2.7.5) --------------------------------------------------------------------------------


def osd_ids(core: Cluster) -> list[str]:
    """The OSD ids in the tree, numerically sorted."""
    return sorted((i for i in _children(core, schema.CEPH_OSDS) if _osd_id(i)), key=_osd_key)


def _osd_id(name: str) -> bool:
    try:
        return schema.validate_osd_id(name) == name
    except InvalidArgument:
        return False  # a key of another tool


def read_osds(core: Cluster, ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """node, device and stats of the given OSDs in one batch; OSDs not in the tree are left out."""
    ids = list(ids)
    paths = [schema.osd(i) for i in ids] + [schema.osd_key(i, f) for i in ids for f in schema.OSD_FIELDS]
    entries = core.store.get_many(paths)
    out = {}
    for i in ids:
        if entries[schema.osd(i)] is None:
            continue
        out[i] = {f: (e.value if (e := entries[schema.osd_key(i, f)]) is not None else None) for f in schema.OSD_FIELDS}
    return out


def osd_object(osd_id: str, values: dict[str, str | None]) -> dict[str, Any]:
    """An OSD in the original's shape (``id``, ``stats``) with its id as a number, plus the node
    and device it was created on (pvc's: the original kept them only in the tree)."""
    return {"id": int(osd_id), "node": values.get("node") or None, "device": values.get("device") or None,
            "stats": _json(values.get("stats"))}


def osd_state(osd_id: str, values: dict[str, str | None]) -> dict[str, Any]:
    """``{"id", "in", "up"}`` as the original's state route, from the stats the OSD's node
    publishes (1 or 0, as Ceph says; null until the first figures)."""
    stats = _json(values.get("stats"))
    return {"id": int(osd_id), "in": _flag(stats.get("in")), "up": _flag(stats.get("up"))}


def _flag(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, int) else None


# --- pools (§2.7.6) -------------------------------------------------------------------------------


def pool_names(core: Cluster) -> list[str]:
    """The pools in the tree, sorted."""
    return [p for p in _children(core, schema.CEPH_POOLS) if _ceph_name(p)]


def read_pools(core: Cluster, names: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """pgs and stats of the given pools in one batch; pools not in the tree are left out."""
    names = list(names)
    paths = [schema.pool(p) for p in names] + [schema.pool_key(p, f) for p in names for f in schema.POOL_FIELDS]
    entries = core.store.get_many(paths)
    return {p: {f: (e.value if (e := entries[schema.pool_key(p, f)]) is not None else None) for f in schema.POOL_FIELDS}
            for p in names if entries[schema.pool(p)] is not None}


def pool_object(name: str, values: dict[str, str | None]) -> dict[str, Any]:
    """A pool in the original's shape (``name``, ``stats``), plus its placement groups."""
    return {"name": name, "pgs": _int(values.get("pgs")), "stats": _json(values.get("stats"))}


# --- volumes (§2.7.7) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    pool: str
    name: str

    @property
    def spec(self) -> str:
        """``pool/volume``, as rbd and a VM's rbdlist name it."""
        return f"{self.pool}/{self.name}"


def _ceph_name(name: str) -> bool:
    try:
        schema.validate_ceph_name("name", name)
    except InvalidArgument:
        return False  # a key of another tool: not ours to list (and not a valid Ceph name)
    return True


def volume_list(core: Cluster, pool: str | None = None) -> list[Volume]:
    """The volumes in the tree (of one pool, or of all), sorted by pool and name."""
    root = schema.pool_volumes(pool) if pool is not None else schema.CEPH_VOLUMES
    depth = root.count("/") + (1 if pool is not None else 2)
    found = []
    for path in _tree(core, root):
        parts = path.split("/")
        if len(parts) - 1 == depth and _ceph_name(parts[-1]) and _ceph_name(parts[-2]):
            found.append(Volume(parts[-2], parts[-1]))
    return sorted(found, key=lambda v: (v.pool, v.name))


def read_volume_stats(core: Cluster, volumes: list[Volume]) -> dict[Volume, str | None]:
    """The stats text of the given volumes in one batch."""
    entries = core.store.get_many([schema.volume_stats(v.pool, v.name) for v in volumes])
    return {v: (e.value if (e := entries[schema.volume_stats(v.pool, v.name)]) is not None else None) for v in volumes}


def volume_object(volume: Volume, stats_text: str | None) -> dict[str, Any]:
    """A volume in the original's shape: ``rbd info`` JSON as stats, with its size humanised."""
    stats = _json(stats_text)
    if isinstance(stats.get("size"), int) and not isinstance(stats["size"], bool):
        stats["size"] = format_bytes_tohuman(stats["size"])
    return {"name": volume.name, "pool": volume.pool, "stats": stats}


# --- snapshots (§2.7.8) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    pool: str
    volume: str
    name: str

    @property
    def spec(self) -> str:
        """``pool/volume@snapshot``: the original's snapshot "object"."""
        return f"{self.pool}/{self.volume}@{self.name}"


def snapshot_list(core: Cluster, pool: str | None = None) -> list[Snapshot]:
    """The snapshots in the tree (of one pool's volumes, or of all), sorted."""
    root = schema.pool_snapshots(pool) if pool is not None else schema.CEPH_SNAPSHOTS
    depth = root.count("/") + (2 if pool is not None else 3)
    found = []
    for path in _tree(core, root):
        parts = path.split("/")
        if len(parts) - 1 == depth and all(_ceph_name(p) for p in parts[-3:]):
            found.append(Snapshot(parts[-3], parts[-2], parts[-1]))
    return sorted(found, key=lambda s: (s.pool, s.volume, s.name))


# --- who uses a volume ----------------------------------------------------------------------------


def volume_users(core: Cluster) -> dict[str, list[str]]:
    """``pool/volume`` → the names of the VMs whose rbdlist names it (one batch for all VMs)."""
    from pvc.lib.vm_records import read_vms, vm_uuids

    users: dict[str, list[str]] = {}
    for vm in read_vms(core, vm_uuids(core), ("rbdlist",)):
        for spec in (vm.value("rbdlist") or "").split(","):
            if spec.strip():
                users.setdefault(spec.strip(), []).append(vm.name)
    return {spec: sorted(names) for spec, names in users.items()}
