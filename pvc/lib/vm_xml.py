"""Reading libvirt domain XML: the facts pvc shows about a VM and the checks it makes on define.

Parsing is strict about what could hurt: no DTD (so no entity can be declared, let alone
expanded), no network access, no huge trees. Everything else is lenient: an optional element that
is missing gives None or an empty list, never an error, because the XML is libvirt's business.
lxml is imported on first use only, so `pvc --help` does not load it.
"""

from __future__ import annotations

import re
import threading
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from pvc.lib.errors import InvalidArgument, quote

#: Bytes per unit of libvirt's memory units (libvirt's formatdomain: "unit" attribute).
MEMORY_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
    "pb": 1000**5, "p": 1024**5, "pib": 1024**5,
    "eb": 1000**6, "e": 1024**6, "eib": 1024**6,
}
MIB = 1024**2
#: Largest document accepted: far above any real domain XML, and with the rest of a VM's keys
#: well inside one store write (see pvc.lib.store.base.MAX_COMMIT_BYTES).
MAX_XML_BYTES = 512 * 1024
DOCTYPE_REFUSED = ("Invalid VM XML: a DOCTYPE is not allowed (libvirt XML needs none, and entities are never "
                   "expanded).")

_parser_local = threading.local()
#: The encoding named by an XML declaration at the start of a document.
_DECLARED_ENCODING = re.compile(r"""\ufeff?\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([^"']*)["']""")


def _parser() -> Any:
    """One parser per thread (lxml parsers are not thread-safe), hardened."""
    parser = getattr(_parser_local, "parser", None)
    if parser is None:
        from lxml import etree

        # encoding: the text is already decoded; a declaration naming another encoding must not
        # make lxml decode our UTF-8 bytes a second time, differently (or hide markup in UTF-7).
        parser = etree.XMLParser(encoding="utf-8", resolve_entities=False, no_network=True, load_dtd=False,
                                 dtd_validation=False, huge_tree=False, remove_comments=False)
        _parser_local.parser = parser
    return parser


def parse(text: str) -> Any:
    """The root element of a libvirt domain document; InvalidArgument for anything else."""
    from lxml import etree

    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("Invalid VM XML: the document is empty.")
    # Refused before libxml2 sees it: even without resolving them, libxml2 builds the DTD and
    # expands entity references to check them (only its amplification limit stops a billion
    # laughs). The check after parsing is a second line of defence.
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InvalidArgument(DOCTYPE_REFUSED)
    # pvc reads the text as UTF-8 and stores it as given; a parser that follows a declaration of
    # another encoding (libvirt's does) would see another document than the one pvc checked.
    declared = _DECLARED_ENCODING.match(text)
    if declared and declared.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise InvalidArgument(f"Invalid VM XML: the declaration names the encoding {quote(declared.group(1))}; "
                              "pvc stores VM XML as UTF-8, so declare encoding='UTF-8' or leave it out.")
    try:
        # Bytes, so that an encoding declaration in the document is allowed (lxml refuses one in a str).
        root = etree.fromstring(text.encode("utf-8"), _parser())
    except etree.XMLSyntaxError as e:
        raise InvalidArgument(f"Invalid VM XML: {e}.") from None
    except ValueError as e:  # e.g. an encoding declaration that is not UTF-8 compatible
        raise InvalidArgument(f"Invalid VM XML: {e}.") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise InvalidArgument(DOCTYPE_REFUSED)
    if root.tag != "domain":
        raise InvalidArgument(f"Invalid VM XML: the root element is {quote(root.tag)}, not 'domain'.")
    return root


def check_size(text: str) -> str:
    """Check a submitted document before it is defined or replaces a VM's (stored ones are read
    whatever they hold): at most MAX_XML_BYTES, Unicode text (no lone surrogate, which JSON's
    ``"\\ud800"`` gives), and a ``<memory>`` and ``<vcpu>`` that, when given as numbers, are
    positive (issue 11: negative ones were accepted)."""
    if not isinstance(text, str):
        raise InvalidArgument("Invalid VM XML: the document must be text.")
    # Bounded before anything else: a character is at most 4 UTF-8 bytes, at least 1.
    if len(text) > MAX_XML_BYTES:
        raise InvalidArgument(f"Invalid VM XML: the document is more than {MAX_XML_BYTES} bytes; the limit is "
                              f"{MAX_XML_BYTES} (libvirt domain XML is a few kilobytes).")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # only a surrogate cannot be encoded
        raise InvalidArgument(f"Invalid VM XML: it is not valid Unicode text (a lone surrogate "
                              f"U+{ord(text[e.start]):04X} at character {e.start}).") from None
    if size > MAX_XML_BYTES:
        raise InvalidArgument(f"Invalid VM XML: the document is {size} bytes; the limit is {MAX_XML_BYTES} "
                              "(libvirt domain XML is a few kilobytes).")
    check_resources(parse(text))
    return text


def check_resources(root: Any) -> None:
    """Refuse a ``<memory>`` of 0 or less and a ``<vcpu>`` under 1; values that are not numbers
    are libvirt's to judge (pvc shows them as unknown)."""
    node = root.find("memory")
    amount = _number(node.text if node is not None else None)
    if amount is not None and amount <= 0:
        raise InvalidArgument(f"Invalid VM XML: <memory> is {amount}; a VM needs more than 0.")
    vcpus = _number(_text(root, "vcpu"))
    if vcpus is not None and vcpus < 1:
        raise InvalidArgument(f"Invalid VM XML: <vcpu> is {vcpus}; a VM needs at least 1.")


def _text(root: Any, path: str) -> str | None:
    node = root.find(path)
    if node is None or node.text is None:
        return None
    text = node.text.strip()
    return text or None


def _attr(root: Any, path: str, name: str) -> str | None:
    node = root.find(path)
    return None if node is None else node.get(name)


#: An integer as libvirt writes one: ASCII digits, perhaps signed (int() also reads '١٠' and '1_0').
_INTEGER = re.compile(r"[-+]?[0-9]{1,30}", re.ASCII)


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def memory_mib(root: Any) -> int | float | None:
    """`<memory>` in MiB, whatever unit the XML uses (libvirt's default unit is KiB)."""
    node = root.find("memory")
    if node is None or node.text is None:
        return None
    amount = _number(node.text)
    if amount is None:
        return None
    unit = MEMORY_UNITS.get((node.get("unit") or "KiB").lower())
    if unit is None:
        return None
    total = amount * unit
    return total // MIB if total % MIB == 0 else round(total / MIB, 3)


def canonical_uuid(text: str) -> str | None:
    """The lower-case, hyphenated form of a UUID, or None when ``text`` is not one."""
    try:
        return str(uuidlib.UUID(text.strip()))
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Disk:
    type: str | None
    name: str | None
    dev: str | None
    bus: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"type": self.type, "name": self.name, "dev": self.dev, "bus": self.bus}


def disks(root: Any) -> list[Disk]:
    """The `<disk>` devices: network disks by protocol (rbd, ...) and source name, file and block
    disks by path; any part that is missing is None."""
    out = []
    for disk in root.findall("devices/disk"):
        kind = disk.get("type")
        source = disk.find("source")
        target = disk.find("target")
        if kind == "network":
            kind, name = (source.get("protocol"), source.get("name")) if source is not None else (None, None)
        elif kind == "file":
            name = source.get("file") if source is not None else None
        elif kind == "block":
            name = source.get("dev") if source is not None else None
        elif kind == "volume":
            name = f"{source.get('pool')}/{source.get('volume')}" if source is not None else None
        else:
            name = None
        out.append(Disk(kind, name, target.get("dev") if target is not None else None,
                        target.get("bus") if target is not None else None))
    return out


def rbd_volumes(root: Any) -> list[str]:
    """`pool/volume` names of the VM's RBD disks (the original's `rbdlist`)."""
    return [d.name for d in disks(root) if d.type == "rbd" and d.name]


def interfaces(root: Any) -> list[dict[str, str | None]]:
    """One `{type, mac, source, model}` per `<interface>`; ``source`` is the attribute named like
    the type (a bridge's name for type bridge, a network's for type network)."""
    out = []
    for iface in root.findall("devices/interface"):
        kind = iface.get("type")
        source = iface.find("source")
        value = None
        if source is not None:
            value = source.get(kind) if kind and source.get(kind) is not None else next(iter(source.attrib.values()), None)
        out.append({
            "type": kind,
            "mac": _attr(iface, "mac", "address"),
            "source": value,
            "model": _attr(iface, "model", "type"),
        })
    return out


def bridges(root: Any) -> list[str]:
    """Names of the host bridges the VM's interfaces attach to."""
    return [i["source"] for i in interfaces(root) if i["type"] == "bridge" and i["source"]]


@dataclass(frozen=True)
class DomainXml:
    """What pvc reads from one domain document; ``facts`` is the XML part of the VM object."""

    name: str | None
    uuid: str | None
    facts: dict[str, Any]
    bridges: tuple[str, ...]
    rbd_volumes: tuple[str, ...]


def read(text: str) -> DomainXml:
    """Parse ``text`` and gather the VM object's XML fields (the original's shape, JSON types)."""
    root = parse(text)
    sockets = _attr(root, "cpu/topology", "sockets")
    cores = _attr(root, "cpu/topology", "cores")
    threads = _attr(root, "cpu/topology", "threads")
    features = root.find("features")
    facts = {
        "description": _text(root, "description"),
        "memory": memory_mib(root),
        "vcpu": _number(_text(root, "vcpu")),
        "vcpu_topology": f"{sockets}/{cores}/{threads}" if None not in (sockets, cores, threads) else None,
        "type": _text(root, "os/type"),
        "arch": _attr(root, "os/type", "arch"),
        "machine": _attr(root, "os/type", "machine"),
        "console": _attr(root, "devices/console", "type"),
        "emulator": _text(root, "devices/emulator"),
        "features": [child.tag for child in features if isinstance(child.tag, str)] if features is not None else [],
        "networks": interfaces(root),
        "disks": [d.as_dict() for d in disks(root)],
        "controllers": [{"type": c.get("type"), "model": c.get("model")} for c in root.findall("devices/controller")],
    }
    return DomainXml(name=_text(root, "name"), uuid=_text(root, "uuid"), facts=facts, bridges=tuple(bridges(root)),
                     rbd_volumes=tuple(rbd_volumes(root)))


class ParsedCache:
    """Parsed documents by key, reused while the key's version and text are unchanged.

    Listing many VMs must not parse unchanged XML again. The version alone is not enough (a
    VM undefined and defined again starts at version 0), so the text is compared too; that is
    a memory compare, far cheaper than a parse.
    """

    def __init__(self, limit: int = 100_000):
        self.limit = limit
        self._items: dict[str, tuple[int, str, DomainXml]] = {}
        self._lock = threading.Lock()
        self.parses = 0

    def get(self, key: str, version: int, text: str) -> DomainXml:
        hit = self._items.get(key)
        if hit is not None and hit[0] == version and hit[1] == text:
            return hit[2]
        parsed = read(text)
        with self._lock:
            self.parses += 1
            if len(self._items) >= self.limit:
                self._items.clear()  # crude but bounded; a cluster this large re-warms in one list
            self._items[key] = (version, text, parsed)
        return parsed
