"""Network operations: the manual's virtual network endpoints (bridged vLANs, managed VXLANs)."""

from __future__ import annotations

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidState, NotFound, quote


def network_vnis(core: Cluster) -> list[str]:
    """VNIs of all networks, in numeric order."""
    try:
        return sorted(core.store.children(schema.NETWORKS), key=lambda v: (len(v), v))
    except NotFound:
        raise InvalidState(f"The cluster in {core.store.describe()} is not initialised; run 'pvc init'.") from None


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
