"""Reading VMs from the store: their keys in one batch, lookups by name or UUID, and the VM
object of the original's shape (its §2.7.2) with JSON types.

A VM is `/domains/<uuid>` (its value is the name) with the children of ``schema.DOMAIN_FIELDS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pvc.lib import schema
from pvc.lib.core import Cluster, not_initialised
from pvc.lib.errors import InvalidArgument, NotFound, quote
from pvc.lib.store import Entry
from pvc.lib.vm_xml import DomainXml, ParsedCache, canonical_uuid

#: The facts of the XML of the VMs this process has read, by the XML key's path, while its
#: version and text are unchanged (bounded and thread-safe; `pvc serve`'s read view shares it).
#: A miss reads the document in one pass (vm_xml.read_facts), which lists need for every VM.
PARSED = ParsedCache()


@dataclass(frozen=True)
class Vm:
    """One VM's keys as read from the store."""

    uuid: str
    name: str
    entries: dict[str, Entry | None]

    def value(self, field: str) -> str | None:
        entry = self.entries.get(field)
        return None if entry is None else entry.value

    def version(self, field: str) -> int | None:
        entry = self.entries.get(field)
        return None if entry is None else entry.version

    @property
    def state(self) -> str | None:
        return self.value("state")

    @property
    def node(self) -> str | None:
        return self.value("node")

    @property
    def last_node(self) -> str:
        return self.value("lastnode") or ""


def vm_uuids(core: Cluster) -> list[str]:
    try:
        return core.store.children(schema.DOMAINS)
    except NotFound:
        raise not_initialised(core) from None


def read_vms(core: Cluster, uuids: list[str], fields: tuple[str, ...]) -> list[Vm]:
    """The given fields (of DOMAIN_FIELDS) of many VMs in one batch, in the given order; VMs gone meanwhile are left out."""
    unknown = set(fields) - set(schema.DOMAIN_FIELDS)
    if unknown:
        raise ValueError(f"unknown VM fields {sorted(unknown)}")
    heads = [schema.domain(u) for u in uuids]
    keys = [[f"{head}/{f}" for f in fields] for head in heads]  # as schema.domain_key, built once
    entries = core.store.get_many(heads + [k for row in keys for k in row])
    out = []
    for u, head, row in zip(uuids, heads, keys):
        entry = entries[head]
        if entry is not None:
            out.append(Vm(u, entry.value, {f: entries[k] for f, k in zip(fields, row)}))
    return out


def _parsed(vm: Vm) -> DomainXml | None:
    entry = vm.entries.get("xml")
    if entry is None:
        return None
    try:
        return PARSED.get(schema.domain_key(vm.uuid, "xml"), entry.version, entry.value)
    except InvalidArgument:
        return None  # a tree written by other tools may hold XML we cannot read; show what we can


def vm_object(vm: Vm) -> dict[str, Any]:
    """A VM in the original's shape (its §2.7.2), with JSON types; XML parts missing are null."""
    parsed = _parsed(vm)
    facts = parsed.facts if parsed is not None else {}
    last = vm.last_node
    return {
        "name": vm.name,
        "uuid": vm.uuid,
        "state": vm.state,
        "node": vm.node,
        "last_node": last,
        "migrated": f"from {last}" if last else "no",
        "failed_reason": vm.value("failedreason") or "",
        "description": facts.get("description"),
        "memory": facts.get("memory"),
        "vcpu": facts.get("vcpu"),
        "vcpu_topology": facts.get("vcpu_topology"),
        "networks": facts.get("networks", []),
        "type": facts.get("type"),
        "arch": facts.get("arch"),
        "machine": facts.get("machine"),
        "console": facts.get("console"),
        "emulator": facts.get("emulator"),
        "features": facts.get("features", []),
        "disks": facts.get("disks", []),
        "controllers": facts.get("controllers", []),
        "xml": vm.value("xml"),
    }


OBJECT_FIELDS = ("state", "node", "lastnode", "failedreason", "xml")

#: The UUID last found for a VM name. Finding a VM by name otherwise reads every VM's name; with
#: this, one read of the remembered VM's keys, which also verifies that it still has that name
#: (names are unique: define and rename refuse a taken one), so a stale entry is never believed.
_BY_NAME: dict[str, str] = {}
_BY_NAME_LIMIT = 100_000


def find_vm(core: Cluster, vm: str, fields: tuple[str, ...] = schema.DOMAIN_FIELDS) -> Vm:
    """The VM named ``vm`` (exactly), or whose UUID it is; NotFound otherwise."""
    uuid = canonical_uuid(vm)
    if uuid is not None:
        found = read_vms(core, [uuid], fields)
        if found:
            return found[0]
        raise NotFound(f"VM {quote(vm)} not found.")
    schema.validate_name("VM", vm)
    remembered = _BY_NAME.get(vm)
    if remembered is not None:
        found = read_vms(core, [remembered], fields)
        if found and found[0].name == vm:
            return found[0]
    names = read_vms(core, vm_uuids(core), ())
    if len(_BY_NAME) + len(names) > _BY_NAME_LIMIT:
        _BY_NAME.clear()
    _BY_NAME.update((v.name, v.uuid) for v in names)  # every name was read: remember them all
    matches = [v.uuid for v in names if v.name == vm]
    if not matches:
        raise NotFound(f"VM {quote(vm)} not found.")
    if len(matches) > 1:  # only a tree written by other tools can hold two VMs of one name
        raise InvalidArgument(f"VM name {quote(vm)} is not unique ({', '.join(matches)}); use the UUID.")
    found = read_vms(core, matches, fields)
    if not found:
        raise NotFound(f"VM {quote(vm)} not found.")
    return found[0]


def vms_using_bridge(core: Cluster, bridge: str) -> list[str]:
    """Names of the VMs whose XML attaches an interface to ``bridge``, sorted.

    A VM whose stored XML cannot be read counts when the bridge's name appears in it at all:
    when in doubt, the VM is named rather than left out."""
    mention = re.compile(rf"(?<![\w.-]){re.escape(bridge)}(?![\w.-])")
    out = []
    for v in read_vms(core, vm_uuids(core), ("xml",)):
        parsed = _parsed(v)
        if parsed is not None and bridge in parsed.bridges:
            out.append(v.name)
        elif parsed is None and mention.search(v.value("xml") or ""):
            out.append(v.name)
    return sorted(out)
