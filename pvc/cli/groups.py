"""Help text and aliases of the command groups (the nouns of the endpoint tree)."""

from __future__ import annotations

#: group path → (help, aliases). Groups not listed get "Manage <name>s." and no alias.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "node": ("Manage the nodes of the cluster: state, coordinator role, flush and ready.", ()),
    "vm": ("Manage virtual machines: define, modify, start and stop, migrate between nodes.", ()),
    "network": ("Manage virtual networks: bridged vLANs and managed VXLANs.", ()),
    "network lease": ("Manage the DHCP leases and static reservations of a managed network.", ("dhcp",)),
    "network acl": ("Manage the firewall rules (nftables ACLs) of a network.", ()),
}
