"""The node agent's Ceph figures (the original's Ceph keepalive, original-behaviour.md §3.7).

On its own thread, every ``ceph_figures_interval``:

- the primary coordinator writes the text of ``ceph status`` into ``/ceph``, the text of
  ``rados df`` into ``/ceph/radosdf``, and each pool's ``stats`` from ``rados df --format json``
  (§2.7.6: twelve integers);
- every node writes the ``stats`` of the OSDs whose ``/ceph/osds/<id>/node`` is itself (§2.7.5):
  ``uuid``, ``up``, ``in``, ``primary_affinity`` from ``ceph osd dump``; ``utilization``, ``var``,
  ``pgs``, ``kb``, ``weight`` (CRUSH) and ``reweight`` from ``ceph osd df``; and the strings
  ``node``, ``used``, ``avail``, ``wr_ops``, ``wr_data``, ``rd_ops``, ``rd_data``, ``state`` scraped
  from the text table of ``ceph osd status`` as the original did (16.2 prints no JSON for it).
  When that table cannot be had (it needs the mgr) they are derived instead: ``node`` is the
  OSD's node, ``used``/``avail`` from ``osd df``, ``state`` from ``osd dump``, the rates ``0``.

A round's writes are one commit; keys that are gone (a pool or OSD just removed) are skipped. A
round never raises, never blocks the keepalive, and logs a problem once, not once per round.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable

from pvc.agent import ceph_exec
from pvc.agent.commands import Bounds
from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import NotFound, PvcError, quote
from pvc.lib.store import Create, Op, Set

log = logging.getLogger("pvc.agent.ceph")

#: The pool stats the original kept from `rados df --format json` (§2.7.6), in its order.
POOL_STATS = ("id", "size_bytes", "num_objects", "num_object_clones", "num_object_copies",
              "num_objects_missing_on_primary", "num_objects_unfound", "num_objects_degraded", "read_ops",
              "read_bytes", "write_ops", "write_bytes")
#: The columns of `ceph osd status` after ID and HOST (16.2's mgr status module).
STATUS_COLUMNS = ("used", "avail", "wr_ops", "wr_data", "rd_ops", "rd_data", "state")
#: Least time a round's Ceph calls get (a hung monitor costs a round this long, never more).
MIN_ROUND = 20.0


class CephFigures:
    """Publishes the Ceph figures of node ``node``; ``loop(stop)`` runs until ``stop`` is set."""

    def __init__(self, core: Cluster, node: str, settings: Settings, is_primary: Callable[[], bool]):
        self.core = core
        self.node = node
        self.settings = settings
        self.is_primary = is_primary
        self._problem: str | None = None
        #: Seconds a round's Ceph calls may take in all.
        self.round_timeout = max(settings.ceph_figures_interval, MIN_ROUND)
        #: Rounds that wrote something (tests wait on it).
        self.rounds = 0

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.round(stop)
            stop.wait(self.settings.ceph_figures_interval)

    def round(self, stop: threading.Event | None = None) -> bool:
        """One round; True when it wrote figures. Never raises."""
        stop = stop or threading.Event()
        try:
            ops = self.collect(stop)
            if ops:
                self.core.store.commit(ops)
                self.rounds += 1
            self._report(None)
            return bool(ops)
        except PvcError as e:
            self._report(e.message)
        except Exception as e:  # a bug must not end the thread: log it once with its traceback
            if self._problem != repr(e):
                log.exception("Ceph figures of node %s failed", quote(self.node))
            self._problem = repr(e)
        return False

    def _report(self, problem: str | None) -> None:
        if problem == self._problem:
            return
        if problem is None:
            log.info("Ceph figures of node %s are published again", quote(self.node))
        else:
            log.warning("Ceph figures of node %s not published: %s (retrying every %g s)", quote(self.node),
                        problem, self.settings.ceph_figures_interval)
        self._problem = problem

    # -- what a round writes --------------------------------------------------------------------
    def collect(self, stop: threading.Event) -> list[Op]:
        """The round's writes (empty when this node has nothing to publish)."""
        store = self.core.store
        try:
            osds = store.children(schema.CEPH_OSDS)
        except NotFound:
            return []  # no root tree yet
        owners = store.get_many([schema.osd_key(i, "node") for i in osds]) if osds else {}
        mine = [i for i in osds if (owners.get(schema.osd_key(i, "node")) or _NONE).value == self.node]
        primary = self.is_primary()
        if not primary and not mine:
            return []
        bounds = Bounds(self.node, self.settings, time.monotonic() + self.round_timeout, stop)
        ops: list[Op] = []
        if primary:
            ops += self._cluster(bounds)
        if mine:
            ops += self._osds(bounds, mine)
        return ops

    def _cluster(self, bounds: Bounds) -> list[Op]:
        store = self.core.store
        status = ceph_exec.run(bounds, ["ceph", "status"])
        radosdf = ceph_exec.run(bounds, ["rados", "df"])
        df = ceph_exec.run(bounds, ["rados", "df"], json_out=True)
        pools = {p.get("name"): p for p in df.get("pools", []) if isinstance(p, dict)}
        names = [n for n in store.children(schema.CEPH_POOLS) if n in pools]
        keys = [schema.pool_key(n, "stats") for n in names]
        current = store.get_many([schema.CEPH_RADOSDF, *keys])
        ops: list[Op] = [Set(schema.CEPH, status)]
        ops.append(Set(schema.CEPH_RADOSDF, radosdf) if current[schema.CEPH_RADOSDF] is not None
                   else Create(schema.CEPH_RADOSDF, radosdf))
        for name, key in zip(names, keys):
            if current[key] is not None:
                stats = {field: _int(pools[name].get(field)) for field in POOL_STATS}
                ops.append(Set(key, json.dumps(stats)))
        return ops

    def _osds(self, bounds: Bounds, mine: list[str]) -> list[Op]:
        dump = {o.get("osd"): o for o in ceph_exec.run(bounds, ["ceph", "osd", "dump"], json_out=True).get("osds", [])}
        df = {o.get("id"): o for o in ceph_exec.run(bounds, ["ceph", "osd", "df"], json_out=True).get("nodes", [])}
        try:
            table = parse_status(ceph_exec.run(bounds, ["ceph", "osd", "status"]))
        except PvcError:
            table = {}  # no mgr: derive those fields
        keys = [schema.osd_key(i, "stats") for i in mine]
        current = self.core.store.get_many(keys)
        ops: list[Op] = []
        for osd_id, key in zip(mine, keys):
            number = int(osd_id)
            if current[key] is None or number not in dump:
                continue  # gone from the tree or from Ceph
            ops.append(Set(key, json.dumps(osd_stats(self.node, dump[number], df.get(number, {}),
                                                     table.get(number)))))
        return ops


class _Missing:
    value = None


_NONE = _Missing()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def parse_status(text: str) -> dict[int, dict[str, str]]:
    """The rows of `ceph osd status` by OSD id: host and the STATUS_COLUMNS, as printed. No cell
    holds a space; HOST is empty for an OSD the mgr has no metadata of."""
    rows: dict[int, dict[str, str]] = {}
    for line in text.splitlines():
        cells = line.split()
        if not cells or not cells[0].isdigit() or len(cells) not in (8, 9):
            continue
        host = cells[1] if len(cells) == 9 else ""
        rows[int(cells[0])] = {"node": host, **dict(zip(STATUS_COLUMNS, cells[-7:]))}
    return rows


def _human(kib: Any) -> str:
    """KiB as `ceph osd status` prints bytes (1023M, 43.0k): for the derived fields."""
    value = _int(kib) * 1024.0
    for unit in ("", "k", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            return f"{value:.0f}{unit}" if value >= 100 or unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return "0"


def osd_stats(node: str, dump: dict, df: dict, row: dict[str, str] | None) -> dict[str, Any]:
    """One OSD's stats in the original's shape (§2.7.5)."""
    derived = row or {"node": node, "used": _human(df.get("kb_used")), "avail": _human(df.get("kb_avail")),
                      "wr_ops": "0", "wr_data": "0", "rd_ops": "0", "rd_data": "0",
                      "state": ",".join(dump.get("state", []))}
    return {
        "uuid": str(dump.get("uuid", "")), "up": _int(dump.get("up")), "in": _int(dump.get("in")),
        "primary_affinity": _float(dump.get("primary_affinity")),
        "utilization": _float(df.get("utilization")), "var": _float(df.get("var")), "pgs": _int(df.get("pgs")),
        "kb": _int(df.get("kb")), "weight": _float(df.get("crush_weight")), "reweight": _float(df.get("reweight")),
        **{field: str(derived.get(field, "")) for field in ("node", *STATUS_COLUMNS)},
    }
