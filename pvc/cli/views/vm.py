"""VM views: `pvc vm list` and `pvc vm info`, in the original's columns and colours (its §5.3)."""

from __future__ import annotations

import re
from typing import Any

from pvc.cli.render import Paint, fields, renderer, table

STATE_COLOURS = {"start": ("green",), "restart": ("yellow",), "shutdown": ("yellow",), "stop": ("red",),
                 "failed": ("red",)}


def known_networks(core: Any, data: Any = None, long: bool = False) -> set[str]:
    """VNIs of the cluster's networks, to mark interfaces on bridges of no network."""
    from pvc.lib.ops.network import network_vnis

    return set(network_vnis(core))


def network_label(source: str | None) -> str:
    """The original's short name of a bridge: its first digits (`vmbr1001` → `1001`), else the
    name without `br` (`brcluster` → `cluster`)."""
    if not source:
        return "?"
    digits = re.search(r"\d+", source)
    return digits.group(0) if digits else source.replace("br", "")


def _networks(vm: dict[str, Any], paint: Paint, known: set[str], marker: str = "") -> list[str]:
    out = []
    for iface in vm["networks"]:
        label = network_label(iface["source"])
        valid = label in known or label == "cluster" or not label.isdigit()
        out.append(label if valid else paint(label + marker, "red"))
    return out


def state(vm: dict[str, Any], paint: Paint) -> str:
    return paint(vm["state"], *STATE_COLOURS.get(vm["state"] or "", ("blue",)))


def raw_names(vms: list[dict[str, Any]]) -> str:
    return "\n".join(sorted(vm["name"] for vm in vms))


@renderer("vm_list", raw=raw_names, context=known_networks)
def vm_list(vms: list[dict[str, Any]], paint: Paint, long: bool, context: set[str]) -> str:
    headers = ["Name", "UUID", "State", "Networks", "RAM (M)", "vCPUs", "Node", "Migrated"]
    rows = [[vm["name"], vm["uuid"], state(vm, paint), ",".join(_networks(vm, paint, context)), vm["memory"],
             vm["vcpu"], vm["node"], vm["migrated"]] for vm in vms]
    return table(headers, rows, paint)


@renderer("vm_info", long=True, context=known_networks)
def vm_info(vms: list[dict[str, Any]], paint: Paint, long: bool, context: set[str]) -> str:
    blocks = []
    for vm in vms:
        pairs: list[tuple[str, Any]] = [("UUID", vm["uuid"]), ("Name", vm["name"]), ("Description", vm["description"]),
                                        ("Memory (M)", vm["memory"]), ("vCPUs", vm["vcpu"]),
                                        ("Topology (S/C/T)", vm["vcpu_topology"])]
        if long:
            pairs += [("Emulator", vm["emulator"]), ("Type", vm["type"]), ("Arch", vm["arch"]),
                      ("Machine", vm["machine"]), ("Features", " ".join(vm["features"]))]
        pairs += [("State", state(vm, paint)), ("Current Node", vm["node"]), ("Previous Node", vm["last_node"] or "N/A")]
        if vm["failed_reason"]:
            pairs.append(("Failure reason", vm["failed_reason"]))
        pairs.append(("Networks", " ".join(_networks(vm, paint, context, " [invalid]"))))
        text = paint("Virtual machine information:", "bold") + "\n\n" + fields(pairs, paint)
        if long:
            text += "\n\n" + _devices(vm, paint)
        blocks.append(text)
    return "\n\n".join(blocks)


def _devices(vm: dict[str, Any], paint: Paint) -> str:
    parts = [
        ("Disks", ["ID", "Type", "Name", "Dev", "Bus"],
         [[i, d["type"], d["name"], d["dev"], d["bus"]] for i, d in enumerate(vm["disks"])]),
        ("Interfaces", ["ID", "Type", "Source", "Model", "MAC"],
         [[i, n["type"], n["source"], n["model"], n["mac"]] for i, n in enumerate(vm["networks"])]),
        ("Controllers", ["ID", "Type", "Model"],
         [[i, c["type"], c["model"]] for i, c in enumerate(vm["controllers"])]),
    ]
    return "\n\n".join(paint(f"{title}:", "purple") + "\n" + table(headers, rows, paint) for title, headers, rows in parts)


@renderer("vm_node")
def vm_node(data: dict[str, Any], paint: Paint, long: bool) -> str:
    return table(["Name", "Node", "Previous node"], [[data["name"], data["node"], data["last_node"] or ""]], paint)
