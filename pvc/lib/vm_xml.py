"""Reading libvirt domain XML: the facts pvc shows about a VM and the checks it makes on define.

Parsing is strict about what could hurt: no DTD (so no entity can be declared, let alone
expanded), no network access, no huge trees. Everything else is lenient: an optional element that
is missing gives None or an empty list, never an error, because the XML is libvirt's business.
lxml is imported on first use only, so `pvc --help` does not load it.
"""

from __future__ import annotations

import hashlib
import marshal
import os
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
    if node is None:
        return None
    return _mib(node.text, node.get("unit"))


def _mib(text: str | None, unit_name: str | None) -> int | float | None:
    if text is None:
        return None
    amount = _number(text)
    if amount is None:
        return None
    unit = MEMORY_UNITS.get((unit_name or "KiB").lower())
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
    return [_disk(disk.get("type"), disk.find("source"), disk.find("target")) for disk in root.findall("devices/disk")]


def _disk(kind: str | None, source: Any, target: Any) -> Disk:
    """One disk from its type and its first <source> and <target> (elements or attribute dicts)."""
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
    return Disk(kind, name, target.get("dev") if target is not None else None,
                target.get("bus") if target is not None else None)


def rbd_volumes(root: Any) -> list[str]:
    """`pool/volume` names of the VM's RBD disks (the original's `rbdlist`)."""
    return [d.name for d in disks(root) if d.type == "rbd" and d.name]


def interfaces(root: Any) -> list[dict[str, str | None]]:
    """One `{type, mac, source, model}` per `<interface>`; ``source`` is the attribute named like
    the type (a bridge's name for type bridge, a network's for type network)."""
    out = []
    for iface in root.findall("devices/interface"):
        source = iface.find("source")
        out.append(_interface(iface.get("type"), None if source is None else dict(source.attrib),
                              _attr(iface, "mac", "address"), _attr(iface, "model", "type")))
    return out


def _interface(kind: str | None, source: dict[str, str] | None, mac: str | None, model: str | None) -> dict[str, str | None]:
    """One interface from its type, the attributes of its first <source> (in document order), its
    MAC address and model."""
    value = None
    if source is not None:
        value = source.get(kind) if kind and source.get(kind) is not None else next(iter(source.values()), None)
    return {"type": kind, "mac": mac, "source": value, "model": model}


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


# --- the facts of stored documents, read in one pass --------------------------------------------

_parser_create: Any = None
#: Children of <domain> whose text is read.
_ROOT_TEXTS = frozenset(("name", "uuid", "description", "memory", "vcpu"))


def _scan(text: str) -> DomainXml | None:
    """The facts :func:`read` gathers, in one pass of expat over ``text`` that keeps only the
    elements read; None when the root is not <domain> (left to :func:`read` to refuse).

    Semantics follow lxml's as :func:`read` uses them: an element's text is what precedes its
    first child node (element, comment or processing instruction), CDATA included; ``find``
    means the first match in document order; tags and attributes in a namespace never match
    the plain names read, and a namespaced feature shows as ``{uri}name``."""
    global _parser_create
    if _parser_create is None:  # loaded on first use; an import statement per document costs
        from xml.parsers.expat import ParserCreate as _parser_create
    parser = _parser_create(namespace_separator="}")
    parser.buffer_text = True
    texts: dict[str, list[str]] = {}  # "name", ..., "os/type", "devices/emulator" → text pieces
    firsts: dict[str, dict[str, str]] = {}  # "memory", "cpu/topology", "os/type", "devices/console" → attributes
    features_list: list[str] = []  # the element children of the first <features>
    ifaces: list[list[Any]] = []  # [attributes, <source>, <mac>, <model>] attributes
    disks_: list[list[Any]] = []  # [attributes, <source>, <target>] attributes
    controllers: list[dict[str, str]] = []
    root: list[str] = []
    # The open elements, innermost first: an element's end removes the first item of its name,
    # which is the innermost (the document is well-formed), without a Python call per element.
    # Character data (and the comments and processing instructions that end an element's text)
    # reach Python only while an element whose text is read is open and has had no child yet.
    # (A flag of our own: reading a handler back from the parser is slow.)
    stack: list[str] = []
    end = stack.remove
    features_seen = 0
    capturing = False

    def capture(pieces: list[str]) -> None:
        nonlocal capturing
        parser.CharacterDataHandler = pieces.append
        parser.CommentHandler = parser.ProcessingInstructionHandler = stop
        parser.EndElementHandler = end_captured
        capturing = True

    def stop(*_: Any) -> None:
        nonlocal capturing
        parser.CharacterDataHandler = parser.CommentHandler = parser.ProcessingInstructionHandler = None
        parser.EndElementHandler = end
        capturing = False

    def end_captured(name: str) -> None:
        end(name)
        stop()

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal features_seen
        if capturing:  # an element's text ends at its first child
            stop()
        depth = len(stack)  # the parent's depth (the root's is 1)
        stack.insert(0, name)
        if depth > 3:  # nothing deeper is read (most elements of a domain are here or at 3)
            return
        if depth == 2:
            parent = stack[1]
            if parent == "devices":
                if name == "interface":
                    ifaces.append([attrs, None, None, None])
                elif name == "disk":
                    disks_.append([attrs, None, None])
                elif name == "controller":
                    controllers.append(attrs)
                elif name == "emulator":
                    if "devices/emulator" not in texts:
                        capture(texts.setdefault("devices/emulator", []))
                elif name == "console":
                    firsts.setdefault("devices/console", attrs)
            elif parent == "os":
                if name == "type" and "os/type" not in texts:
                    capture(texts.setdefault("os/type", []))
                    firsts["os/type"] = attrs
            elif parent == "cpu":
                if name == "topology":
                    firsts.setdefault("cpu/topology", attrs)
            elif parent == "features" and features_seen == 1:  # children of the first <features> only
                features_list.append("{" + name if "}" in name else name)
        elif depth == 3:
            if stack[2] != "devices":
                return
            parent = stack[1]  # the last <interface> or <disk> of <devices> begun is the open one
            if parent == "interface":
                device = ifaces[-1]
                if name == "source":
                    if device[1] is None:
                        device[1] = attrs
                elif name == "mac":
                    if device[2] is None:
                        device[2] = attrs
                elif name == "model" and device[3] is None:
                    device[3] = attrs
            elif parent == "disk":
                device = disks_[-1]
                if name == "source":
                    if device[1] is None:
                        device[1] = attrs
                elif name == "target" and device[2] is None:
                    device[2] = attrs
        elif depth == 1:
            if name in _ROOT_TEXTS:
                if name not in texts:
                    capture(texts.setdefault(name, []))
                    if name == "memory":
                        firsts["memory"] = attrs
            elif name == "features":
                features_seen += 1
        elif depth == 0:
            root.append(name)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.Parse(text, True)
    if root != ["domain"]:
        return None

    def text_of(key: str) -> str | None:  # lxml's .text: None when empty
        pieces = texts.get(key)
        return ("".join(pieces) or None) if pieces is not None else None

    def stripped(key: str) -> str | None:  # _text()
        value = text_of(key)
        return (value.strip() or None) if value is not None else None

    topology = firsts.get("cpu/topology")
    sockets, cores, threads = ((topology.get("sockets"), topology.get("cores"), topology.get("threads"))
                               if topology is not None else (None, None, None))
    os_type = firsts.get("os/type")
    console = firsts.get("devices/console")
    networks = [_interface(a.get("type"), src, mac.get("address") if mac is not None else None,
                           model.get("type") if model is not None else None) for a, src, mac, model in ifaces]
    disk_list = [_disk(a.get("type"), src, target) for a, src, target in disks_]
    facts = {
        "description": stripped("description"),
        "memory": _mib(text_of("memory"), firsts["memory"].get("unit")) if "memory" in firsts else None,
        "vcpu": _number(stripped("vcpu")),
        "vcpu_topology": f"{sockets}/{cores}/{threads}" if None not in (sockets, cores, threads) else None,
        "type": stripped("os/type"),
        "arch": os_type.get("arch") if os_type is not None else None,
        "machine": os_type.get("machine") if os_type is not None else None,
        "console": console.get("type") if console is not None else None,
        "emulator": stripped("devices/emulator"),
        "features": features_list,
        "networks": networks,
        "disks": [d.as_dict() for d in disk_list],
        "controllers": [{"type": c.get("type"), "model": c.get("model")} for c in controllers],
    }
    return DomainXml(name=stripped("name"), uuid=stripped("uuid"), facts=facts,
                     bridges=tuple(i["source"] for i in networks if i["type"] == "bridge" and i["source"]),
                     rbd_volumes=tuple(d.name for d in disk_list if d.type == "rbd" and d.name))


def read_facts(text: str) -> DomainXml:
    """What :func:`read` gives for a stored document, several times faster: lists read every VM's
    XML. A document the one-pass reader does not take (malformed, a DOCTYPE, another encoding,
    another root) goes to :func:`read`, which gives the same answer or error as ever."""
    if not isinstance(text, str) or "<!DOCTYPE" in text or "<!ENTITY" in text:
        return read(text)
    declared = _DECLARED_ENCODING.match(text)
    if declared and declared.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
        return read(text)
    try:
        found = _scan(text)
    except Exception:  # expat's errors (and a lone surrogate's): read() gives the error pvc reports
        found = None
    return found if found is not None else read(text)


class ParsedCache:
    """Parsed documents by key (a VM's XML key path), reused while the key's version and text are
    unchanged; bounded and thread-safe.

    Listing many VMs must not parse unchanged XML again. The version alone is not enough (a VM
    undefined and defined again starts at version 0), so the text is compared too; that is a
    memory compare, far cheaper than a parse (and free when it is the same string object, as
    in a view kept in memory). When full, the oldest entry goes.
    """

    def __init__(self, limit: int = 100_000, reader: Any = None):
        self.limit = limit
        self.reader = reader or read_facts
        self._items: dict[str, tuple[int, Any, DomainXml]] = {}
        self._lock = threading.Lock()
        self.parses = 0
        self._file: str | None = None
        self._loaded = False
        self._saved_parses = 0

    def get(self, key: str, version: int, text: str) -> DomainXml:
        if self._file is not None and not self._loaded:
            self._load()
        hit = self._items.get(key)
        if hit is not None and hit[0] == version:
            seen = hit[1]
            if seen is text or (seen == text if isinstance(seen, str) else seen == _digest(text)):
                return hit[2]
        parsed = self.reader(text)
        with self._lock:
            self.parses += 1
            self._items.pop(key, None)  # re-inserted last: the oldest entries are the first
            while len(self._items) >= self.limit:
                del self._items[next(iter(self._items))]
            self._items[key] = (version, text, parsed)
        return parsed

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    # -- kept on disk between CLI runs -------------------------------------------------------------
    # A `pvc vm list` is a fresh process: without this, every run parses every VM's XML again
    # (about 90 µs each, the largest part of the command at 1,000 VMs). The file keeps each
    # document's parsed facts with a digest of its text instead of the text, so an entry is used
    # only for exactly the text it was made from, whatever cluster or version it came from.

    def persist(self, path: str) -> None:
        """Load the facts kept in ``path`` on first use, and let :meth:`save` write them back."""
        self._file = path
        self._loaded = False
        self._saved_parses = self.parses

    def _load(self) -> None:
        self._loaded = True
        path = self._file
        try:
            with open(path, "rb") as f:  # type: ignore[arg-type]
                info = os.fstat(f.fileno())
                # Only a file of this user's that nobody else can write: it is trusted as parsed.
                if info.st_uid != os.getuid() or info.st_mode & 0o022:
                    return
                data = marshal.loads(f.read())
            if not isinstance(data, tuple) or len(data) != 2 or data[0] != _CACHE_FORMAT:
                return
            items = {key: (version, _Digest(digest), DomainXml(*fields))
                     for key, version, digest, fields in data[1]}
        except (OSError, EOFError, ValueError, TypeError):
            return  # no file yet, or an unreadable one: it is rewritten at the next save
        with self._lock:
            for key, item in items.items():
                self._items.setdefault(key, item)

    def save(self) -> None:
        """Write the facts to the file given to :meth:`persist` if anything was parsed since."""
        if self._file is None or self.parses == self._saved_parses:
            return
        with self._lock:
            rows = [(key, version, seen.value if isinstance(seen, _Digest) else _digest(seen).value,
                     (parsed.name, parsed.uuid, parsed.facts, parsed.bridges, parsed.rbd_volumes))
                    for key, (version, seen, parsed) in self._items.items()]
        rows = rows[-_KEPT_ON_DISK:]  # the most recently parsed
        import tempfile  # only when writing: it costs more to import than a list takes to read

        try:
            os.makedirs(os.path.dirname(self._file), mode=0o700, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=os.path.dirname(self._file), prefix=".facts-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(marshal.dumps((_CACHE_FORMAT, rows)))
                os.replace(temp, self._file)
            except BaseException:
                os.unlink(temp)
                raise
        except (OSError, ValueError):
            return  # a cache: the next run parses again
        self._saved_parses = self.parses


#: Entries written to the file at most (a cluster's VMs; a larger one parses the rest each run).
_KEPT_ON_DISK = 20_000
#: Changes whenever the facts read from a document change shape (then old files are ignored).
_CACHE_FORMAT = "pvc-vm-facts-1"


@dataclass(frozen=True)
class _Digest:
    value: bytes


def _digest(text: str) -> _Digest:
    return _Digest(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())
