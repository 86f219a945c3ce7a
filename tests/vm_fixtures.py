"""Shared XML samples and helpers of the VM tests (tests/test_ops_vm.py, tests/test_cli_vm.py)."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.ops.vm import define_vm
from pvc.lib.store import Set

#: Node figures for the selector tests. Every selector picks a different candidate; the flushed
#: and the dead node have the smallest figures of all and must still never be chosen.
SELECTOR_NODES: dict[str, dict[str, Any]] = {
    "hv1": {"memalloc": 4096, "vcpualloc": 4, "cpuload": 3.0},
    "hv2": {"memalloc": 1024, "vcpualloc": 16, "cpuload": 2.0},
    "hv3": {"memalloc": 8192, "vcpualloc": 8, "cpuload": 0.25},
    "hv4": {"memalloc": 2048, "vcpualloc": 6, "cpuload": 1.0},
    "hv0": {"memalloc": 0, "vcpualloc": 0, "cpuload": 0.0, "domain_state": "flushed"},
    "hv9": {"memalloc": 0, "vcpualloc": 0, "cpuload": 0.0, "daemon_state": "dead"},
}
#: With one VM on each of hv1, hv2, hv3 (and none anywhere else).
SELECTOR_CHOICE = {"mem": "hv2", "vcpus": "hv1", "load": "hv3", "vms": "hv4"}


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def vm_xml(name: str, uuid: str, memory: str = "1024", unit: str | None = "MiB", vcpu: str = "2",
           bridges: tuple[str, ...] = ("vmbr100",), rbd: tuple[str, ...] | None = None,
           description: str | None = None) -> str:
    """A single-line libvirt document with every part pvc reads."""
    rbd = (f"vms/{name}_disk0",) if rbd is None else rbd
    unit_attr = f' unit="{unit}"' if unit is not None else ""
    desc = f"<description>{description}</description>" if description is not None else ""
    disks = "".join(f'<disk type="network" device="disk"><source protocol="rbd" name="{d}"/>'
                    f'<target dev="sd{chr(97 + i)}" bus="scsi"/></disk>' for i, d in enumerate(rbd))
    nics = "".join(f'<interface type="bridge"><mac address="52:54:00:00:00:{i:02x}"/><source bridge="{b}"/>'
                   f'<model type="virtio"/></interface>' for i, b in enumerate(bridges))
    return (f'<domain type="kvm"><name>{name}</name><uuid>{uuid}</uuid>{desc}<memory{unit_attr}>{memory}</memory>'
            f'<vcpu>{vcpu}</vcpu><os><type arch="x86_64" machine="pc-i440fx-2.7">hvm</type></os>'
            f'<features><acpi/><apic/></features><cpu><topology sockets="1" cores="2" threads="1"/></cpu>'
            f'<devices><emulator>/usr/bin/kvm</emulator>{disks}{nics}<console type="pty"/>'
            f'<controller type="usb" model="none"/></devices></domain>')


def pretty_xml(name: str, uuid: str) -> str:
    """A multi-line document with an XML declaration, comments, a file disk, non-ASCII text and
    a trailing newline: dump must give it back byte for byte."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- defined by the tests -->
<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <description>Serveur de test — café, 日本</description>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>4</vcpu>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/{name}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='vms/{name}_data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='vmbr1001'/>
    </interface>
  </devices>
</domain>
"""


def minimal_xml(name: str, uuid: str) -> str:
    """Only what pvc requires: every optional part of the VM object is missing."""
    return f"<domain><name>{name}</name><uuid>{uuid}</uuid></domain>"


def billion_laughs(uuid: str) -> str:
    entities = "".join(f' <!ENTITY lol{i} "{("&lol%s;" % ("" if i == 1 else i - 1)) * 10}">\n' for i in range(1, 10))
    return (f'<?xml version="1.0"?>\n<!DOCTYPE domain [\n <!ENTITY lol "lol">\n{entities}]>\n'
            f"<domain><name>&lol9;</name><uuid>{uuid}</uuid></domain>")


def bad_documents(uuid: str) -> list[tuple[str, str, str]]:
    """(id, document, a fragment the refusal must contain) for XML define and modify refuse."""
    return [
        ("malformed", f"<domain><name>x</name><uuid>{uuid}</uuid>", "Invalid VM XML: "),
        ("not-xml", "name: web1", "Invalid VM XML: "),
        ("empty", "", "the document is empty"),
        ("blank", " \n ", "the document is empty"),
        ("billion-laughs", billion_laughs(uuid), "DOCTYPE is not allowed"),
        ("external-entity", f'<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><domain><name>x</name>'
                            f"<uuid>{uuid}</uuid><description>&xxe;</description></domain>", "DOCTYPE is not allowed"),
        ("external-dtd", f'<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/evil.dtd"><domain><name>x</name>'
                         f"<uuid>{uuid}</uuid></domain>", "DOCTYPE is not allowed"),
        ("parameter-entity", f'<!DOCTYPE domain [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                             f"<domain><name>x</name><uuid>{uuid}</uuid></domain>", "DOCTYPE is not allowed"),
        # A declaration of another encoding is refused: libvirt's parser follows it, so it would
        # see another document than pvc checked (here a DOCTYPE hidden in UTF-7).
        ("utf7-doctype", '<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE domain+AD4-'
                         f"<domain><name>x</name><uuid>{uuid}</uuid></domain>", "names the encoding 'UTF-7'"),
        ("utf16-declared", '<?xml version="1.0" encoding="UTF-16"?>'
                           f"<domain><name>x</name><uuid>{uuid}</uuid></domain>", "names the encoding 'UTF-16'"),
        ("latin1-declared", "<?xml version='1.0' encoding='ISO-8859-1'?>"
                            f"<domain><name>x</name><uuid>{uuid}</uuid></domain>", "names the encoding 'ISO-8859-1'"),
        ("undefined-entity", f"<domain><name>&foo;</name><uuid>{uuid}</uuid></domain>", "Entity 'foo' not defined"),
        ("missing-uuid", "<domain><name>x</name></domain>", "it has no <uuid>"),
        ("empty-uuid", "<domain><name>x</name><uuid> </uuid></domain>", "it has no <uuid>"),
        ("invalid-uuid", "<domain><name>x</name><uuid>1234-not-a-uuid</uuid></domain>",
         "'1234-not-a-uuid' is not a valid UUID"),
        ("missing-name", f"<domain><uuid>{uuid}</uuid></domain>", "it has no <name>"),
        ("nested-name", f"<domain><devices><name>x</name></devices><uuid>{uuid}</uuid></domain>",
         "it has no <name>"),
        ("wrong-root", f"<network><name>x</name><uuid>{uuid}</uuid></network>",
         "the root element is 'network', not 'domain'"),
        ("namespaced-root", f'<domain xmlns="urn:x"><name>x</name><uuid>{uuid}</uuid></domain>',
         "the root element is '{urn:x}domain'"),
        ("name-is-a-uuid", f"<domain><name>{new_uuid()}</name><uuid>{uuid}</uuid></domain>",
         "a VM name must not be a UUID"),
        ("name-with-slash", f"<domain><name>web/1</name><uuid>{uuid}</uuid></domain>", "Invalid VM name 'web/1'"),
        ("name-dotdot", f"<domain><name>..</name><uuid>{uuid}</uuid></domain>", "Invalid VM name '..'"),
    ]


# --- the tree -----------------------------------------------------------------------------------


def snapshot(core: Cluster) -> dict[str, tuple[str, int]]:
    """Every key of the cluster's tree with its value and data version."""
    keys = core.store.subtree("/")
    return {k: (e.value, e.version) for k, e in core.store.get_many(keys).items() if e is not None}


def changed_keys(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def vm_keys(core: Cluster, uuid: str) -> dict[str, str]:
    """The VM's keys: "" for the name at /domains/<uuid>, else the field name."""
    paths = {"": schema.domain(uuid), **{f: schema.domain_key(uuid, f) for f in schema.DOMAIN_FIELDS}}
    entries = core.store.get_many(list(paths.values()))
    return {f: e.value for f, p in paths.items() if (e := entries[p]) is not None}


def field(core: Cluster, uuid: str, name: str) -> str:
    return core.store.get(schema.domain_key(uuid, name)).value


def agent_writes_state(core: Cluster, uuid: str, state: str = "start") -> None:
    """What the node agent does when a start or migration has settled: it writes the state."""
    core.store.commit([Set(schema.domain_key(uuid, "state"), state)])


def define(core: Cluster, name: str, node: str | None = "hv1", state: str | None = None, **xml: Any) -> str:
    """Define a VM through the library (on ``node``), optionally let the agent put it in
    ``state``; returns its UUID."""
    uuid = new_uuid()
    define_vm(core, vm_xml(name, uuid, **xml), node=node)
    if state is not None:
        agent_writes_state(core, uuid, state)
    return uuid
