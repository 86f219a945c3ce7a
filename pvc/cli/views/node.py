"""Node views: `pvc node list` and `pvc node info`, in the original's columns and colours."""

from __future__ import annotations

from typing import Any

from pvc.cli.render import Paint, fields, renderer, table

DAEMON_COLOURS = {"run": ("green",), "stop": ("red",), "shutdown": ("yellow",), "init": ("yellow",), "dead": ("bold", "red")}
COORDINATOR_COLOURS = {"primary": ("green",), "secondary": ("blue",)}
DOMAIN_COLOURS = {"ready": ("green",)}


def _states(node: dict[str, Any], paint: Paint) -> tuple[str, str, str]:
    daemon, coordinator, domain = node["daemon_state"], node["coordinator_state"], node["domain_state"]
    return (
        paint(daemon, *DAEMON_COLOURS.get(daemon, ("blue",))),
        paint(coordinator, *COORDINATOR_COLOURS.get(coordinator, ("cyan",))),
        paint(domain, *DOMAIN_COLOURS.get(domain, ("blue",))),
    )


@renderer("node_list")
def node_list(nodes: list[dict[str, Any]], paint: Paint, long: bool) -> str:
    headers = ["Name", "St: Daemon", "Coordinator", "Domain", "Res: VMs", "vCPUs", "Load",
               "Mem (M): Total", "Used", "Free", "VMs"]
    rows = []
    for n in nodes:
        mem = n["memory"]
        rows.append([n["name"], *_states(n, paint), n["domains_count"], n["vcpu"]["allocated"], n["load"],
                     mem["total"], mem["used"], mem["free"], mem["allocated"]])
    return table(headers, rows, paint)


@renderer("node_info", long=True)
def node_info(nodes: list[dict[str, Any]], paint: Paint, long: bool) -> str:
    blocks = []
    for n in nodes:
        daemon, coordinator, domain = _states(n, paint)
        pairs = [("Name", n["name"]), ("Daemon State", daemon), ("Coordinator State", coordinator),
                 ("Domain State", domain), ("Active VM Count", n["domains_count"])]
        if long:
            pairs += [("Architecture", n["arch"]), ("Operating System", n["os"]), ("Kernel Version", n["kernel"])]
        mem = n["memory"]
        pairs += [("Host CPUs", n["vcpu"]["total"]), ("vCPUs", n["vcpu"]["allocated"]), ("Load", n["load"]),
                  ("Total RAM (MiB)", mem["total"]), ("Used RAM (MiB)", mem["used"]),
                  ("Free RAM (MiB)", mem["free"]), ("Allocated RAM (MiB)", mem["allocated"])]
        blocks.append(fields(pairs, paint))
    return "\n\n".join(blocks)
