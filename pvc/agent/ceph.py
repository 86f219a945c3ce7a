"""The node agent's Ceph commands (the table of issue 9): pools, RBD volumes and snapshots on the
primary coordinator; OSDs on the node that owns them (or is named to get one).

Each handler validates its arguments again (they reach a command line), runs Ceph through
:mod:`pvc.agent.ceph_exec`, and returns the tree change as ``Outcome.ops``, which the command
channel commits together with the result: the tree changes only after Ceph succeeded. Failures
raise CommandFailed with Ceph's own reason, or Timeout. A few ``ceph`` refusals come with exit
code 0 (an existing pool on create, an unknown pool on remove, an unknown OSD on in/out): those
are read from its stderr and raised too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import threading
import time
import uuid as uuidlib
from base64 import b64encode
from struct import pack
from typing import Any

from pvc.agent import ceph_exec
from pvc.agent.commands import Context, Outcome, handler
from pvc.lib import schema
from pvc.lib.errors import CommandFailed, InvalidArgument, PvcError, Timeout, quote
from pvc.lib.store import Create, Delete, Op, Set, Store

#: Ceph's own OSD flags: the library checks the same list (schema.OSD_SET_FLAGS).
OSD_SET_FLAGS, OSD_UNSET_FLAGS = schema.OSD_SET_FLAGS, schema.OSD_UNSET_FLAGS
#: Seconds given to undoing a half-done change (an OSD, pool or volume Ceph made before a later
#: step failed).
UNDO_SECONDS = 30.0
#: RBD features of a new volume (the original's).
IMAGE_FEATURES = "layering,exclusive-lock"
#: Size of the sparse file made for a file-backed OSD whose path does not exist yet (the lab's).
FILE_OSD_BYTES = 10 * 1024**3
#: Seconds an OSD removal keeps back from its deadline for stopping and purging the OSD.
REMOVE_RESERVE = 10.0
#: Pause between two looks at Ceph while waiting for an OSD (Ceph offers no watch for this).
POLL = 0.25
#: The file pvc writes into the data directory of an OSD it started: how to stop it and which
#: files are its own.
MARKER = "pvc-osd.json"


# --- arguments ------------------------------------------------------------------------------------

def _name(args: dict, key: str, kind: str) -> str:
    return schema.validate_ceph_name(kind, args.get(key))


def _size(args: dict) -> int:
    size = args.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size < 2**63:
        raise InvalidArgument(f"Invalid size {quote(size)}: it must be a positive number of bytes.")
    return size


def human(size: int) -> str:
    """Bytes in the largest binary unit that holds them exactly (the original's units)."""
    for unit, factor in (("P", 1024**5), ("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


# --- tree changes -----------------------------------------------------------------------------

def deletes(store: Store, path: str) -> list[Op]:
    """Deletes of ``path`` and everything under it, children first; none when it is absent."""
    if not store.exists(path):
        return []
    return [Delete(p) for p in sorted(store.subtree(path), key=lambda p: p.count("/"), reverse=True)]


def moves(store: Store, old: str, new: str, values: dict[str, str] | None = None) -> list[Op]:
    """Create a copy of the subtree ``old`` at ``new`` (``values`` replaces some, by new path) and
    delete ``old``: one commit's worth, so a rename is never half done."""
    keys = store.subtree(old) if store.exists(old) else []
    entries = store.get_many(keys) if keys else {}
    ops: list[Op] = []
    for path in keys:  # parents first
        target = new + path[len(old):]
        entry = entries[path]
        value = (values or {}).get(target, entry.value if entry else "")
        ops.append(Create(target, value))
    if not keys:
        ops.append(Create(new, ""))
    for path, value in (values or {}).items():
        if not any(isinstance(op, Create) and op.path == path for op in ops):
            ops.append(Create(path, value))
    return ops + deletes(store, old)


# --- OSD flags, in and out ----------------------------------------------------------------------

def _flag(args: dict, allowed: tuple[str, ...], verb: str) -> str:
    option = args.get("option")
    if option not in allowed:
        raise InvalidArgument(f"Invalid OSD property {quote(option)} to {verb}: it must be one of "
                              f"{', '.join(allowed)}.")
    return option


@handler("osd_set")
def osd_set(ctx: Context, args: dict) -> Outcome:
    option = _flag(args, OSD_SET_FLAGS, "set")
    ceph_exec.run(ctx, ["ceph", "osd", "set", option])
    return Outcome(f"Set OSD property {option} on the cluster.")


@handler("osd_unset")
def osd_unset(ctx: Context, args: dict) -> Outcome:
    option = _flag(args, OSD_UNSET_FLAGS, "unset")
    ceph_exec.run(ctx, ["ceph", "osd", "unset", option])
    return Outcome(f"Unset OSD property {option} on the cluster.")


def _mark(ctx: Context, osd_id: str, state: str) -> None:
    _, stderr = ceph_exec.call(ctx, ["ceph", "osd", state, osd_id])
    if "does not exist" in stderr:  # exit code 0 for an unknown OSD
        raise CommandFailed(f"Ceph refused ('ceph osd {state}' on node {quote(ctx.node)}): "
                            f"{ceph_exec.error_text(stderr)}")


@handler("osd_in")
def osd_in(ctx: Context, args: dict) -> Outcome:
    osd_id = schema.validate_osd_id(args.get("osd"))
    _mark(ctx, osd_id, "in")
    return Outcome(f"Set OSD {osd_id} online in the cluster.")


@handler("osd_out")
def osd_out(ctx: Context, args: dict) -> Outcome:
    osd_id = schema.validate_osd_id(args.get("osd"))
    _mark(ctx, osd_id, "out")
    return Outcome(f"Set OSD {osd_id} offline in the cluster.")


# --- OSD add and remove -------------------------------------------------------------------------

def _device(value: object) -> str:
    if (not isinstance(value, str) or not value.startswith("/") or os.path.normpath(value) != value
            or len(value) > 4096 or not value.isprintable()):
        raise InvalidArgument(f"Invalid device {quote(value)}: it must be an absolute path such as /dev/sdb.")
    return value


def _weight(value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1e6:
        raise InvalidArgument(f"Invalid OSD weight {quote(value)}: it must be a number from 0 (such as 1.0).")
    return float(value)


def _osd_map(ctx: Any) -> dict[int, dict]:
    dump = ceph_exec.run(ctx, ["ceph", "osd", "dump"], json_out=True)
    return {o["osd"]: o for o in dump.get("osds", [])}


def _osd_data(ctx: Any, osd_id: str) -> str:
    """The OSD's data directory as Ceph's configuration says (/var/lib/ceph/osd/ceph-<id>)."""
    return ceph_exec.run(ctx, ["ceph-osd", "-i", osd_id, "--show-config-value", "osd_data"]).strip()


def cephx_key() -> str:
    """A new cephx secret, as ``ceph-authtool --gen-print-key`` makes one: type 1 (AES), the
    creation time, and 16 random bytes, little-endian, in base64."""
    return b64encode(pack("<HIIH", 1, int(time.time()), 0, 16) + os.urandom(16)).decode()


@handler("osd_add")
def osd_add(ctx: Context, args: dict) -> Outcome:
    """Create an OSD on this node: a regular file (or a path that does not exist yet, made a
    sparse file) becomes a BlueStore OSD run by this agent; a block device goes through
    ``ceph-volume lvm``."""
    node = schema.validate_name("node", args.get("node"))
    if node != ctx.node:
        raise InvalidArgument(f"The OSD is for node {quote(node)}, but this is node {quote(ctx.node)}.")
    device, weight = _device(args.get("device")), _weight(args.get("weight"))
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise CommandFailed(f"Cannot use {quote(device)} on node {quote(ctx.node)}: {e.strerror or e}.") from None
    if mode is not None and stat.S_ISBLK(mode):
        osd_id = _add_with_ceph_volume(ctx, device)
    elif mode is None or stat.S_ISREG(mode):
        osd_id = _add_file(ctx, device)
    else:
        raise InvalidArgument(f"Invalid device {quote(device)} on node {quote(ctx.node)}: it is neither a block "
                              "device nor a regular file.")
    try:
        ceph_exec.run(ctx, ["ceph", "osd", "crush", "reweight", f"osd.{osd_id}", f"{weight:g}"])
    except PvcError as e:
        _remove_quietly(ctx, osd_id)
        raise e from None
    ops = (Create(schema.osd(osd_id), ""), Create(schema.osd_key(osd_id, "node"), node),
           Create(schema.osd_key(osd_id, "device"), device), Create(schema.osd_key(osd_id, "stats"), "{}"))
    return Outcome(f"Created new OSD with block device '{device}' on node '{node}'.", {"osd": osd_id}, ops)


def _add_with_ceph_volume(ctx: Context, device: str) -> str:
    """The production path: ``ceph-volume lvm`` makes a logical volume on the device and a
    BlueStore OSD on it, which systemd runs (``ceph-osd@<id>``).

    It cannot run on machines without device-mapper (containers, the test machines): LVM's
    ``lvcreate`` fails there, and so does this, with ceph-volume's error; nothing is faked.
    ceph-volume reads /etc/ceph/ceph.conf and the bootstrap-osd keyring of a real node."""
    ceph_exec.run(ctx, ["ceph-volume", "lvm", "zap", "--destroy", device])
    ceph_exec.run(ctx, ["ceph-volume", "lvm", "create", "--bluestore", "--data", device])
    listing = ceph_exec.run(ctx, ["ceph-volume", "lvm", "list", device], json_out=True)
    for volumes in listing.values() if isinstance(listing, dict) else ():
        for volume in volumes:
            osd_id = str(volume.get("tags", {}).get("ceph.osd_id", ""))
            if osd_id.isdigit():
                return osd_id
    raise CommandFailed(f"ceph-volume created no OSD on {quote(device)} on node {quote(ctx.node)}.")


def _add_file(ctx: Context, path: str) -> str:
    """BlueStore on a regular file, run by this agent (the lab's way): ``ceph osd new`` with a new
    key, the keyring, ``ceph-osd --mkfs``, then the daemon, started so that it outlives the
    command; its pid goes into MARKER in its data directory, which osd_remove uses to stop it."""
    created = False
    if not os.path.exists(path):
        if not os.path.isdir(os.path.dirname(path)):
            raise InvalidArgument(f"Invalid device {quote(path)} on node {quote(ctx.node)}: its directory does "
                                  "not exist.")
        with open(path, "xb") as f:
            f.truncate(FILE_OSD_BYTES)
        created = True
    osd_uuid = str(uuidlib.uuid4())
    try:
        secret = json.dumps({"cephx_secret": cephx_key()})
        osd_id = ceph_exec.run(ctx, ["ceph", "osd", "new", osd_uuid, "-i", "-"], stdin=secret).strip()
        schema.validate_osd_id(osd_id)
    except PvcError:
        if created:
            os.unlink(path)
        raise
    key = json.loads(secret)["cephx_secret"]
    try:
        data = _osd_data(ctx, osd_id)
        os.makedirs(data, exist_ok=True)
        if os.listdir(data):
            raise CommandFailed(f"The data directory {data} of the new OSD {osd_id} on node {quote(ctx.node)} is "
                                "not empty (left from an earlier OSD?).")
        keyring = os.path.join(data, "keyring")
        fd = os.open(keyring, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[osd.{osd_id}]\n\tkey = {key}\n")
        store = ["--osd-data", data, "--keyring", keyring, "--osd-objectstore", "bluestore",
                 "--bluestore-block-path", path, "--bluestore-block-create", "false",
                 "--bluestore-block-db-create", "false", "--bluestore-block-wal-create", "false"]
        ceph_exec.run(ctx, ["ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, *store])
        reap()
        proc = ceph_exec.spawn(ctx, ["ceph-osd", "-f", "-i", osd_id, *store], os.path.join(data, "ceph-osd.out"))
        _DAEMONS[proc.pid] = proc
        _write_marker(data, {"osd": osd_id, "pid": proc.pid, "device": path, "created_file": created,
                             "how": "SIGTERM to pid, SIGKILL after 10 s"})
        _wait_up(ctx, osd_id, proc)
    except PvcError as e:
        _remove_quietly(ctx, osd_id, path if created else None)
        raise e from None
    return osd_id


_DAEMONS: dict[int, Any] = {}  # the ceph-osd processes this agent started (it reaps them)


def _write_marker(data: str, value: dict) -> None:
    with open(os.path.join(data, MARKER), "w", encoding="utf-8") as f:
        json.dump(value, f)


def _read_marker(data: str) -> dict | None:
    try:
        with open(os.path.join(data, MARKER), encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _wait_up(ctx: Context, osd_id: str, proc: Any) -> None:
    while True:
        if proc.poll() is not None:
            raise CommandFailed(f"ceph-osd for OSD {osd_id} on node {quote(ctx.node)} exited at start (code "
                                f"{proc.returncode}); see its log.")
        if _osd_map(ctx).get(int(osd_id), {}).get("up") == 1:
            return
        if ctx.remaining() <= POLL:
            raise Timeout(f"OSD {osd_id} on node {quote(ctx.node)} did not come up in time.")
        if ctx.stopping.wait(POLL):
            raise CommandFailed(f"Node {quote(ctx.node)}'s agent stopped while OSD {osd_id} was starting.")


def _remove_quietly(ctx: Context, osd_id: str, created_file: str | None = None) -> None:
    """Undo a half-made OSD (with time of its own: the command's may be used up)."""
    cleanup = ctx.afresh(UNDO_SECONDS)
    try:
        data = _osd_data(cleanup, osd_id)
        marker = _read_marker(data) or {}
        if marker.get("created_file") and isinstance(marker.get("device"), str):
            created_file = marker["device"]
        _stop_daemon(cleanup, osd_id, data)
        ceph_exec.run(cleanup, ["ceph", "osd", "purge", osd_id, "--yes-i-really-mean-it"])
        if marker or os.path.exists(os.path.join(data, "keyring")):
            shutil.rmtree(data, ignore_errors=True)
    except PvcError:
        pass
    if created_file:
        try:
            os.unlink(created_file)
        except OSError:
            pass


def reap() -> None:
    """Collect the exit status of OSD daemons of this agent that ended (no zombies)."""
    for pid, proc in list(_DAEMONS.items()):
        if proc.poll() is not None:
            _DAEMONS.pop(pid, None)


def _stop_daemon(ctx: Any, osd_id: str, data: str) -> bool:
    """Stop the OSD's daemon: the one pvc started (SIGTERM to its recorded pid, if that process is
    still a ceph-osd of this OSD; SIGKILL after 10 s), else systemd's ``ceph-osd@<id>``. False
    when neither applies (no marker and no systemctl)."""
    reap()
    marker = _read_marker(data)
    if marker is not None:
        pid = marker.get("pid")
        if isinstance(pid, int) and _is_osd_process(pid, osd_id):
            proc = _DAEMONS.pop(pid, None)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + min(10.0, max(ctx.remaining() - 2, 0.5))
            pause = threading.Event()
            while _is_osd_process(pid, osd_id) and time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    break
                pause.wait(0.05)
            if _is_osd_process(pid, osd_id):
                os.kill(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(5)
        return True
    if shutil.which("systemctl", path=ceph_exec.environment(ctx.settings)["PATH"]):
        ceph_exec.run(ctx, ["systemctl", "stop", f"ceph-osd@{osd_id}"])
        return True
    return False


def _is_osd_process(pid: int, osd_id: str) -> bool:
    """Whether ``pid`` is still a ceph-osd of this OSD (not a recycled pid, not a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z" and os.path.basename(argv[0]) == b"ceph-osd" and b"-i" in argv \
        and argv[argv.index(b"-i") + 1:argv.index(b"-i") + 2] == [osd_id.encode()]


def _pgs_on(ctx: Context, osd_id: int) -> int | None:
    """Placement groups whose up or acting set holds the OSD (None while the mgr has no PG map)."""
    dump = ceph_exec.run(ctx, ["ceph", "pg", "dump", "pgs_brief"], json_out=True)
    if isinstance(dump, dict):
        if dump.get("pg_ready") is False:
            return None
        dump = dump.get("pg_stats", [])
    return sum(1 for pg in dump if osd_id in pg.get("up", []) or osd_id in pg.get("acting", []))


@handler("osd_remove")
def osd_remove(ctx: Context, args: dict) -> Outcome:
    """Take the OSD out, wait (until the deadline less REMOVE_RESERVE) until no placement group
    is on it, stop its daemon, purge it from Ceph and remove its files."""
    osd_id = schema.validate_osd_id(args.get("osd"))
    store = ctx.core.store
    ops = tuple(deletes(store, schema.osd(osd_id)))
    message = f"Removed OSD '{osd_id}' from the cluster."
    osds = _osd_map(ctx)
    if int(osd_id) not in osds:
        if ops:  # already gone from Ceph: only the tree still had it
            return Outcome(message, None, ops)
        raise CommandFailed(f"Ceph refused: OSD {osd_id} does not exist.")
    if osds[int(osd_id)].get("in"):
        _mark(ctx, osd_id, "out")
    while True:
        held = _pgs_on(ctx, int(osd_id))
        if held == 0:
            break
        if ctx.remaining() <= REMOVE_RESERVE + POLL:
            raise Timeout(f"OSD {osd_id} still holds {'some' if held is None else held} placement groups on node "
                          f"{quote(ctx.node)}; it stays out (its data keeps moving): remove it again later.")
        if ctx.stopping.wait(POLL):
            raise CommandFailed(f"Node {quote(ctx.node)}'s agent stopped while OSD {osd_id} was draining; it stays "
                                "out.")
    data = _osd_data(ctx, osd_id)
    marker = _read_marker(data)
    if not _stop_daemon(ctx, osd_id, data) and osds[int(osd_id)].get("up"):
        raise CommandFailed(f"OSD {osd_id} runs, but node {quote(ctx.node)} did not start it and has no systemd "
                            "to stop it; stop it, then remove it again.")
    ceph_exec.run(ctx, ["ceph", "osd", "down", osd_id])
    ceph_exec.run(ctx, ["ceph", "osd", "purge", osd_id, "--yes-i-really-mean-it"])
    if marker is not None:
        shutil.rmtree(data, ignore_errors=True)
        device = marker.get("device")
        if isinstance(device, str) and os.path.isfile(device):
            os.unlink(device)
    elif store.exists(schema.osd_key(osd_id, "device")):
        device = store.get(schema.osd_key(osd_id, "device")).value
        if device.startswith("/dev/"):
            ceph_exec.run(ctx, ["ceph-volume", "lvm", "zap", "--destroy", "--osd-id", osd_id])
    return Outcome(message, None, ops)


# --- pools --------------------------------------------------------------------------------------

@handler("pool_add")
def pool_add(ctx: Context, args: dict) -> Outcome:
    pool = _name(args, "pool", "pool")
    pgs = args.get("pgs")
    if not isinstance(pgs, int) or isinstance(pgs, bool) or not 0 < pgs <= 65536:
        raise InvalidArgument(f"Invalid number of PGs {quote(pgs)}: it must be a number from 1 to 65536.")
    _, stderr = ceph_exec.call(ctx, ["ceph", "osd", "pool", "create", pool, str(pgs), str(pgs), "replicated"])
    if "already exists" in stderr:  # exit code 0
        raise CommandFailed(f"Ceph refused: pool {quote(pool)} already exists.")
    try:
        ceph_exec.run(ctx, ["ceph", "osd", "pool", "application", "enable", pool, "rbd"])
    except PvcError as e:
        _pool_rm(ctx.afresh(UNDO_SECONDS), pool, quiet=True)
        raise e from None
    ops = (Create(schema.pool(pool), ""), Create(schema.pool_key(pool, "pgs"), str(pgs)),
           Create(schema.pool_key(pool, "stats"), "{}"), Create(schema.pool_volumes(pool), ""),
           Create(schema.pool_snapshots(pool), ""))
    return Outcome(f"Created new RBD pool '{pool}' with '{pgs}' PGs.", None, ops)


def _pool_rm(ctx: Any, pool: str, quiet: bool = False) -> None:
    try:
        _, stderr = ceph_exec.call(ctx, ["ceph", "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"])
    except PvcError:
        if quiet:
            return
        raise
    if "does not exist" in stderr and not quiet:  # exit code 0
        raise CommandFailed(f"Ceph refused: pool {quote(pool)} does not exist.")


@handler("pool_remove")
def pool_remove(ctx: Context, args: dict) -> Outcome:
    pool = _name(args, "pool", "pool")
    _pool_rm(ctx, pool)
    store = ctx.core.store
    ops = deletes(store, schema.pool_snapshots(pool)) + deletes(store, schema.pool_volumes(pool)) \
        + deletes(store, schema.pool(pool))
    return Outcome(f"Removed RBD pool '{pool}' and all volumes.", None, tuple(ops))


# --- volumes ------------------------------------------------------------------------------------

def _info(ctx: Context, spec: str) -> str:
    """`rbd info --format json` text, as the original stored it (checked to be JSON)."""
    text = ceph_exec.run(ctx, ["rbd", "info", "--format", "json", spec]).strip()
    try:
        json.loads(text)
    except ValueError:
        raise CommandFailed(f"'rbd info' of {spec} on node {quote(ctx.node)} printed no JSON.") from None
    return text


@handler("volume_add")
def volume_add(ctx: Context, args: dict) -> Outcome:
    pool, volume, size = _name(args, "pool", "pool"), _name(args, "volume", "volume"), _size(args)
    spec = f"{pool}/{volume}"
    ceph_exec.run(ctx, ["rbd", "create", "--size", f"{size}B", "--image-feature", IMAGE_FEATURES, spec])
    try:
        info = _info(ctx, spec)
    except PvcError as e:
        try:
            ceph_exec.run(ctx.afresh(UNDO_SECONDS), ["rbd", "rm", spec])
        except PvcError:
            pass
        raise e from None
    ops = (Create(schema.volume(pool, volume), ""), Create(schema.volume_stats(pool, volume), info),
           Create(schema.volume_snapshots(pool, volume), ""))
    return Outcome(f"Created new RBD volume '{volume}' of size '{human(size)}' on pool '{pool}'.", None, ops)


@handler("volume_resize")
def volume_resize(ctx: Context, args: dict) -> Outcome:
    """Grow a volume; a smaller size is refused by rbd (no ``--allow-shrink``)."""
    pool, volume, size = _name(args, "pool", "pool"), _name(args, "volume", "volume"), _size(args)
    spec = f"{pool}/{volume}"
    ceph_exec.run(ctx, ["rbd", "resize", "--size", f"{size}B", spec])
    info = _info(ctx, spec)
    stats = schema.volume_stats(pool, volume)
    ops = [Set(stats, info)] if ctx.core.store.exists(stats) else [Create(stats, info)]
    return Outcome(f"Resized RBD volume '{volume}' to size '{human(size)}' on pool '{pool}'.", None, tuple(ops))


@handler("volume_rename")
def volume_rename(ctx: Context, args: dict) -> Outcome:
    pool, volume, new = _name(args, "pool", "pool"), _name(args, "volume", "volume"), _name(args, "new", "volume")
    ceph_exec.run(ctx, ["rbd", "rename", f"{pool}/{volume}", f"{pool}/{new}"])
    info = _info(ctx, f"{pool}/{new}")
    store = ctx.core.store
    ops = moves(store, schema.volume(pool, volume), schema.volume(pool, new), {schema.volume_stats(pool, new): info})
    ops += moves(store, schema.volume_snapshots(pool, volume), schema.volume_snapshots(pool, new))
    return Outcome(f"Renamed RBD volume '{volume}' to '{new}' on pool '{pool}'.", None, tuple(ops))


@handler("volume_remove")
def volume_remove(ctx: Context, args: dict) -> Outcome:
    pool, volume = _name(args, "pool", "pool"), _name(args, "volume", "volume")
    spec = f"{pool}/{volume}"
    ceph_exec.run(ctx, ["rbd", "snap", "purge", spec])
    ceph_exec.run(ctx, ["rbd", "rm", spec])
    store = ctx.core.store
    ops = deletes(store, schema.volume_snapshots(pool, volume)) + deletes(store, schema.volume(pool, volume))
    return Outcome(f"Removed RBD volume '{volume}' in pool '{pool}'.", None, tuple(ops))


# --- snapshots ----------------------------------------------------------------------------------

def _snapshot_args(args: dict) -> tuple[str, str, str]:
    return _name(args, "pool", "pool"), _name(args, "volume", "volume"), _name(args, "snapshot", "snapshot")


@handler("snapshot_add")
def snapshot_add(ctx: Context, args: dict) -> Outcome:
    pool, volume, snap = _snapshot_args(args)
    ceph_exec.run(ctx, ["rbd", "snap", "create", f"{pool}/{volume}@{snap}"])
    ops = (Create(schema.snapshot(pool, volume, snap), ""), Create(schema.snapshot_stats(pool, volume, snap), "{}"))
    return Outcome(f"Created new RBD snapshot '{snap}' of volume '{volume}' on pool '{pool}'.", None, ops)


@handler("snapshot_rename")
def snapshot_rename(ctx: Context, args: dict) -> Outcome:
    pool, volume, snap = _snapshot_args(args)
    new = _name(args, "new", "snapshot")
    ceph_exec.run(ctx, ["rbd", "snap", "rename", f"{pool}/{volume}@{snap}", f"{pool}/{volume}@{new}"])
    store = ctx.core.store
    stats = None if store.exists(schema.snapshot_stats(pool, volume, snap)) else {
        schema.snapshot_stats(pool, volume, new): "{}"}
    ops = moves(store, schema.snapshot(pool, volume, snap), schema.snapshot(pool, volume, new), stats)
    return Outcome(f"Renamed RBD snapshot '{snap}' to '{new}' of volume '{volume}' on pool '{pool}'.", None,
                   tuple(ops))


@handler("snapshot_remove")
def snapshot_remove(ctx: Context, args: dict) -> Outcome:
    pool, volume, snap = _snapshot_args(args)
    ceph_exec.run(ctx, ["rbd", "snap", "rm", f"{pool}/{volume}@{snap}"])
    ops = deletes(ctx.core.store, schema.snapshot(pool, volume, snap))
    return Outcome(f"Removed RBD snapshot '{snap}' of volume '{volume}' in pool '{pool}'.", None, tuple(ops))
