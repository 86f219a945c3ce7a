"""Storage views: `pvc storage ceph status|df` and the OSD, pool, volume and snapshot lists, in
the original's columns (its §5.3)."""

from __future__ import annotations

from typing import Any

from pvc.cli.render import Paint, renderer, table


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _bytes(value: Any) -> str:
    from pvc.lib.ceph_records import format_bytes_tohuman

    return format_bytes_tohuman(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "-"


def _yes(value: Any, paint: Paint) -> str:
    if value is None:
        return "-"
    return paint("Yes", "green") if value else paint("No", "red")


@renderer("ceph_figures")
def ceph_figures(data: dict[str, Any], paint: Paint, long: bool) -> str:
    heading = paint(f"Ceph cluster {data['type']} (primary node ", "bold") + paint(data["primary_node"], "blue") + \
        paint(")", "bold")
    return f"{heading}\n\n{data['ceph_data']}"


@renderer("osd_list")
def osd_list(osds: list[dict[str, Any]], paint: Paint, long: bool) -> str:
    headers = ["ID", "Node", "Up", "In", "Size", "PGs", "Wt", "ReWt", "Sp: Used", "Free", "Util%", "Var",
               "Rd: OPS", "Data", "Wr: OPS", "Data"]
    rows = []
    for o in osds:
        s = o["stats"]
        kb = s.get("kb")
        util = s.get("utilization")
        rows.append([o["id"], _text(s.get("node") or o.get("node")), _yes(s.get("up"), paint), _yes(s.get("in"), paint),
                     _bytes(kb * 1024 if isinstance(kb, int) else None), _text(s.get("pgs")), _text(s.get("weight")),
                     _text(s.get("reweight")), _text(s.get("used")), _text(s.get("avail")),
                     f"{util:.2f}" if isinstance(util, (int, float)) else "-",
                     f"{s['var']:.2f}" if isinstance(s.get("var"), (int, float)) else "-",
                     _text(s.get("rd_ops")), _text(s.get("rd_data")), _text(s.get("wr_ops")), _text(s.get("wr_data"))])
    return table(headers, rows, paint)


@renderer("osd_state")
def osd_state(data: dict[str, Any], paint: Paint, long: bool) -> str:
    return table(["ID", "In", "Up"], [[data["id"], _yes(data["in"], paint), _yes(data["up"], paint)]], paint)


@renderer("pool_list")
def pool_list(pools: list[dict[str, Any]], paint: Paint, long: bool) -> str:
    # Each row its own pool's figures (the original printed the last pool's on every row, its L24).
    headers = ["ID", "Name", "PGs", "Used", "Obj: Count", "Clones", "Copies", "Degraded", "Rd: OPS", "Data",
               "Wr: OPS", "Data"]
    rows = []
    for p in pools:
        s = p["stats"]
        rows.append([_text(s.get("id")), p["name"], _text(p.get("pgs")), _bytes(s.get("size_bytes")),
                     _text(s.get("num_objects")), _text(s.get("num_object_clones")), _text(s.get("num_object_copies")),
                     _text(s.get("num_objects_degraded")), _text(s.get("read_ops")), _bytes(s.get("read_bytes")),
                     _text(s.get("write_ops")), _bytes(s.get("write_bytes"))])
    return table(headers, rows, paint)


@renderer("volume_list")
def volume_list(volumes: list[dict[str, Any]], paint: Paint, long: bool) -> str:
    rows = []
    for v in volumes:
        s = v["stats"]
        features = s.get("features")
        rows.append([v["name"], v["pool"], _text(s.get("size")), _text(s.get("objects")), _text(s.get("order")),
                     _text(s.get("format")), ",".join(features) if isinstance(features, list) and features else "-"])
    return table(["Name", "Pool", "Size", "Objects", "Order", "Format", "Features"], rows, paint)


@renderer("snapshot_list")
def snapshot_list(snapshots: list[str], paint: Paint, long: bool) -> str:
    rows = []
    for spec in snapshots:
        volume_spec, _, name = spec.rpartition("@")
        pool, _, volume = volume_spec.partition("/")
        rows.append([name, volume, pool])
    return table(["Name", "Volume", "Pool"], rows, paint)
