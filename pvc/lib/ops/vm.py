"""VM operations: the manual's VM endpoints.

A VM is `/domains/<uuid>` (its value is the name) with its libvirt XML and the state, node and
previous node the node agents act on (original §3.5). Clients only write the wanted state and
node; the agent of the VM's node carries it out (start, stop, live migration).
"""

from __future__ import annotations

import re
from typing import Any

from pvc.lib import schema
from pvc.lib.config_values import SELECTORS
from pvc.lib.core import Cluster, not_initialised
from pvc.lib.errors import (
    AlreadyExists,
    CommandFailed,
    Conflict,
    InvalidArgument,
    InvalidState,
    NotFound,
    PvcError,
    Timeout,
    quote,
)
from pvc.lib.match import select_any
from pvc.lib.placement import check_target, choose_node
from pvc.lib.registry import Param, Variant, completer, operation
from pvc.lib.retry import retrying
from pvc.lib.store import Check, Create, Delete, Entry, Set
from pvc.lib.vm_records import OBJECT_FIELDS, Vm, find_vm, read_vms, vm_object, vm_uuids
from pvc.lib.vm_xml import DomainXml, canonical_uuid, check_size, read

#: States a VM can be asked for, and those the list filter accepts.
STATE_REQUESTS = ("start", "shutdown", "stop", "restart")
STATES = ("start", "restart", "shutdown", "stop", "migrate", "failed")
NODE_ACTIONS = ("migrate", "unmigrate")
#: States in which the VM is changing on its node: moving it then could leave it running where
#: the tree no longer says it is.
BUSY_STATES = ("migrate", "restart", "shutdown")
#: The UUID spellings libvirt reads in <uuid> (no braces, no urn: prefix).
LIBVIRT_UUID = re.compile(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}")

VM_ARG = Param("Name or UUID of the VM.", positional=True, complete="vm")
NODE_OPT = Param("Node to use; one that does not exist means automatic selection.", short="-t", complete="node",
                 cli_aliases=("--target",))
SELECTOR_OPT = Param("How to choose the node when none is given (default: the cluster's, "
                     "pvc.system.migration.target_selector).", kind="choice", choices=SELECTORS, short="-s")


@completer("vm")
def complete_vms(core: Cluster, incomplete: str) -> list[str]:
    return sorted(v.name for v in read_vms(core, vm_uuids(core), ()) if v.name.startswith(incomplete))


# --- reads -----------------------------------------------------------------------------------


@operation(
    "vm", "list", "GET", "/vm", result="list", render="vm_list",
    params={
        "limit": Param("Show only VMs whose name or UUID matches this fuzzy regex.", positional=True),
        "node": Param("Show only VMs on this node.", short="-t", complete="node", cli_aliases=("--target",)),
        "state": Param("Show only VMs in this state.", kind="choice", choices=STATES, short="-s"),
    },
)
def list_vms(core: Cluster, limit: str | None = None, node: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
    """List the VMs of the cluster.

    LIMIT is the original's fuzzy regex, matched on the name and on the UUID. NODE and STATE
    narrow the list further (all given conditions must hold).
    """
    if node is not None:
        schema.validate_name("node", node)
    if limit or node is not None or state is not None:
        # Filter on the small keys first, so the XML of VMs left out is never fetched.
        heads = read_vms(core, vm_uuids(core), ("state", "node"))
        chosen = [v.uuid for v in select_any(heads, limit, lambda v: v.name, lambda v: v.uuid,
                                                  timeout=core.settings.regex_timeout)
                  if (node is None or v.node == node) and (state is None or v.state == state)]
    else:
        chosen = vm_uuids(core)
    full = read_vms(core, chosen, OBJECT_FIELDS)
    return [vm_object(v) for v in sorted(full, key=lambda v: (v.name, v.uuid))]


@operation("vm", "info", "GET", "/vm/<vm>", result="list", render="vm_info", params={"vm": VM_ARG})
def get_vm(core: Cluster, vm: str) -> list[dict[str, Any]]:
    """Show one VM (exact name or UUID)."""
    return [vm_object(find_vm(core, vm, OBJECT_FIELDS))]


@operation("vm", "state", "GET", "/vm/<vm>/state", result="object", render="state", params={"vm": VM_ARG})
def get_vm_state(core: Cluster, vm: str) -> dict[str, Any]:
    """Show the state of a VM."""
    found = find_vm(core, vm, ("state",))
    return {"name": found.name, "state": found.state}


@operation("vm", "node", "GET", "/vm/<vm>/node", result="object", render="vm_node", params={"vm": VM_ARG})
def get_vm_node(core: Cluster, vm: str) -> dict[str, Any]:
    """Show the node of a VM and, after a temporary migration, the node it came from."""
    found = find_vm(core, vm, ("node", "lastnode"))
    return {"name": found.name, "node": found.node, "last_node": found.last_node}


@operation("vm", "dump", "GET", "/vm/<vm>/dump", result="document", content_type="application/xml",
           params={"vm": VM_ARG})
def dump_vm(core: Cluster, vm: str) -> str:
    """Print the libvirt XML of a VM, exactly as stored."""
    found = find_vm(core, vm, ("xml",))
    xml = found.value("xml")
    if xml is None:
        raise NotFound(f"VM {quote(vm)} has no XML.")
    return xml


# --- define, modify, undefine -----------------------------------------------------------------


def _checked_document(xml: str) -> DomainXml:
    """Parse a submitted document and check the name and UUID pvc keys it by."""
    doc = read(check_size(xml))
    if doc.uuid is None:
        raise InvalidArgument("Invalid VM XML: it has no <uuid>; pvc keys VMs by UUID.")
    uuid = canonical_uuid(doc.uuid) if LIBVIRT_UUID.fullmatch(doc.uuid) else None
    if uuid is None:
        raise InvalidArgument(f"Invalid VM XML: <uuid> {quote(doc.uuid)} is not a valid UUID (32 hexadecimal "
                              "digits, optionally with dashes as in 11111111-2222-3333-4444-555555555555).")
    if doc.name is None:
        raise InvalidArgument("Invalid VM XML: it has no <name>.")
    schema.validate_name("VM", doc.name)
    if canonical_uuid(doc.name) is not None:
        raise InvalidArgument(f"Invalid VM name {quote(doc.name)}: a VM name must not be a UUID.")
    return DomainXml(doc.name, uuid, doc.facts, doc.bridges, doc.rbd_volumes)


def _names_in_use(core: Cluster) -> tuple[Entry, dict[str, str]]:
    """The /domains entry (its version guards name uniqueness) and every VM's name → UUID."""
    root = core.store.get_many([schema.DOMAINS])[schema.DOMAINS]
    if root is None:
        raise not_initialised(core)
    return root, {v.name: v.uuid for v in read_vms(core, vm_uuids(core), ())}


@operation(
    "vm", "define", "POST", "/vm",
    params={
        "xml": Param("Libvirt XML of the VM (single-line or pretty); on the command line, a file or - for stdin.",
                     positional=True, cli_file=True),
        "node": NODE_OPT,
        "selector": SELECTOR_OPT,
    },
)
def define_vm(core: Cluster, xml: str, node: str | None = None, selector: str | None = None) -> str:
    """Define a new VM from its libvirt XML; it starts out stopped.

    The XML needs a <name> and a valid <uuid>, both unused in the cluster. The VM is placed on
    NODE when that node exists, else on the node chosen by SELECTOR (default: the cluster's).
    The disks and other resources must exist already.
    """
    doc = _checked_document(xml)
    assert doc.uuid is not None and doc.name is not None

    def attempt() -> str:
        root, names = _names_in_use(core)
        if doc.uuid in names.values():
            raise AlreadyExists(f"A VM with UUID {quote(doc.uuid)} already exists.")
        if doc.name in names:
            raise AlreadyExists(f"A VM named {quote(doc.name)} already exists (UUID {names[doc.name]}).")
        target, note = choose_node(core, node, selector)
        values = {"state": "stop", "node": target, "lastnode": "", "failedreason": "", "consolelog": "",
                  "rbdlist": ",".join(doc.rbd_volumes), "xml": xml}
        try:
            # Bumping /domains makes two concurrent defines of one name conflict instead of both landing.
            core.store.commit([Set(schema.DOMAINS, root.value, root.version), Create(schema.domain(doc.uuid), doc.name)]
                              + [Create(schema.domain_key(doc.uuid, f), values[f]) for f in schema.DOMAIN_FIELDS])
        except AlreadyExists:
            raise AlreadyExists(f"A VM with UUID {quote(doc.uuid)} already exists.") from None
        return f"Defined VM {quote(doc.name)} with UUID {quote(doc.uuid)} on node {quote(target)}{note}."

    return retrying("The list of VMs", attempt)


@operation(
    "vm", "modify", "PUT", "/vm/<vm>",
    params={
        "vm": VM_ARG,
        "xml": Param("The new libvirt XML of the VM.", positional=True, cli_file=True),
        "restart": Param("Restart the VM (if it runs) so the new XML takes effect.", kind="flag", short="-r"),
    },
    cli=False, cli_reason="`pvc vm modify` is written by hand: it can open $EDITOR on the current XML.",
)
def modify_vm(core: Cluster, vm: str, xml: str, restart: bool = False) -> str:
    """Replace the libvirt XML of a VM.

    The UUID must stay the same; a new <name> renames the VM (refused when the name is taken).
    With restart, a running VM is restarted so the change takes effect; otherwise it applies at
    the VM's next start.
    """
    doc = _checked_document(xml)

    def attempt() -> str:
        current = find_vm(core, vm, ("state", "xml", "rbdlist"))
        if doc.uuid != current.uuid:
            raise InvalidArgument(f"The new XML has UUID {quote(doc.uuid)}, but VM {quote(current.name)} has "
                                  f"{quote(current.uuid)}; the UUID cannot change.")
        restarting = restart and current.state == "start"
        ops: list[Any] = [_put(current, "state", "restart")] if restarting else _guard(current)
        if doc.name != current.name:
            root, names = _names_in_use(core)
            if doc.name in names:
                raise AlreadyExists(f"A VM named {quote(doc.name)} already exists (UUID {names[doc.name]}).")
            ops += [Set(schema.DOMAINS, root.value, root.version), Set(schema.domain(current.uuid), doc.name)]
        ops += [_put(current, "xml", xml), _put(current, "rbdlist", ",".join(doc.rbd_volumes))]
        _commit(core, ops, vm)
        renamed = f" (renamed from {quote(current.name)})" if doc.name != current.name else ""
        if restarting:
            return f"Modified VM {quote(doc.name)}{renamed}; restarting it."
        later = " It is not running; the change applies when it starts." if restart else \
            " Restart it for the change to take effect."
        return f"Modified VM {quote(doc.name)}{renamed}.{later if current.state != 'stop' or restart else ''}"

    return retrying(f"VM {quote(vm)}", attempt)


def _commit(core: Cluster, ops: list[Any], vm: str) -> None:
    """Write a VM's keys; a VM undefined since it was read is "not found", not a missing key."""
    try:
        core.store.commit(ops)
    except NotFound:
        raise NotFound(f"VM {quote(vm)} not found (it was undefined meanwhile); nothing was changed.") from None


def _guard(vm: Vm) -> list[Check]:
    """A check that the VM's state is still the one read, so a racing change fails the write."""
    version = vm.version("state")
    return [] if version is None else [Check(schema.domain_key(vm.uuid, "state"), version)]


def _put(vm: Vm, field: str, value: str) -> Create | Set:
    """Write one field of a VM at the version read (create it when a foreign tree lacks it)."""
    path = schema.domain_key(vm.uuid, field)
    version = vm.version(field)
    return Create(path, value) if version is None else Set(path, value, version)


@operation(
    "vm", "undefine", "DELETE", "/vm/<vm>",
    params={
        "vm": VM_ARG,
        "delete_disks": Param("Also remove the VM's RBD volumes.", kind="flag"),
    },
    variants=(
        Variant("undefine", {"delete_disks": False},
                "Stop a VM and remove it from the cluster; its disks are kept.\n\nThe VM's keys go in one "
                "transaction; its node's agent stops the domain when it sees them go."),
        Variant("remove", {"delete_disks": True},
                "Stop a VM and remove it and its RBD disks from the cluster.\n\nThe VM goes first (as undefine), "
                "then each volume of its disks (as `pvc storage ceph volume remove`); the message names the "
                "volumes removed and any that could not be. Refused, with nothing changed, when a disk is not a "
                "known volume or another VM uses it too.",
                destructive=True),
    ),
)
def undefine_vm(core: Cluster, vm: str, delete_disks: bool = False) -> str:
    """Forcibly stop a VM and remove it from the cluster; with delete_disks, also its RBD volumes.

    The VM's keys go in one transaction; its node's agent sees them go and stops the domain.
    With delete_disks the volumes of its disks (its rbdlist) are then removed one by one through
    the primary coordinator, after the domain has stopped; every disk is checked first (a
    volume pvc knows, used by no other VM), so a refusal changes nothing. A volume that Ceph
    refuses to remove afterwards fails the request with a message saying what was removed.
    """
    found = find_vm(core, vm, ("rbdlist", "state", "node") if delete_disks else ())
    volumes = _disks_to_remove(core, found) if delete_disks else []

    def attempt() -> str:
        try:
            # No check of the state: whatever it was asked meanwhile, the VM goes. A key added or
            # removed meanwhile fails the transaction; it is then read again.
            keys = core.store.subtree(schema.domain(found.uuid))
            core.store.commit([Delete(k) for k in reversed(keys)])
        except NotFound:
            if not core.store.exists(schema.domain(found.uuid)):
                raise NotFound(f"VM {quote(vm)} not found (it was undefined meanwhile).") from None
            raise Conflict("a key of the VM was removed meanwhile") from None
        return f"Undefined VM {quote(found.name)} ({found.uuid})."

    message = retrying(f"VM {quote(vm)}", attempt)
    if not delete_disks:
        return message
    if not volumes:
        return f"{message[:-1]}; it had no RBD disks to remove."
    _wait_domain_gone(core, found)
    from pvc.lib.ops.storage import remove_volume

    removed, failed = [], []
    for pool, volume in volumes:
        try:
            remove_volume(core, pool, volume)
            removed.append(f"{pool}/{volume}")
        except PvcError as e:
            failed.append(f"{quote(pool + '/' + volume)} ({e.message.rstrip('.')})")
    done = f"{message[:-1]} and removed its volume(s) {', '.join(quote(v) for v in removed)}" if removed else \
        f"{message[:-1]} but removed none of its volumes"
    if failed:
        raise CommandFailed(f"{done}; could not remove volume(s) {'; '.join(failed)}. Remove them with `pvc storage "
                            "ceph volume remove` once the cause is fixed.")
    return done + "."


def _disks_to_remove(core: Cluster, found: Vm) -> list[tuple[str, str]]:
    """The (pool, volume) of a VM's RBD disks, each checked: a volume in the tree, used by no
    other VM, and a primary coordinator to remove it; else the whole request is refused."""
    from pvc.lib import commands
    from pvc.lib.ceph_records import volume_users

    specs = list(dict.fromkeys(s.strip() for s in (found.value("rbdlist") or "").split(",") if s.strip()))
    def unknown(spec: str, why: str) -> InvalidState:
        return InvalidState(f"Cannot remove the disks of VM {quote(found.name)}: its disk {quote(spec)} is not a "
                            f"volume pvc knows ({why.rstrip('.')}). Nothing was removed; undefine the VM and remove "
                            "its volumes by hand.")

    keys = {}
    for spec in specs:
        pool, _, volume = spec.partition("/")
        try:
            keys[(pool, volume)] = schema.volume(pool, volume)
        except InvalidArgument as e:
            raise unknown(spec, e.message) from None
    present = core.store.get_many(list(keys.values())) if keys else {}
    for (pool, volume), key in keys.items():
        if present[key] is None:
            raise unknown(f"{pool}/{volume}", "no such volume in the cluster")
    out = list(keys)
    if out:
        users = volume_users(core)
        for pool, volume in out:
            others = [n for n in users.get(f"{pool}/{volume}", []) if n != found.name]
            if others:
                raise InvalidState(f"Cannot remove the disks of VM {quote(found.name)}: volume "
                                   f"{quote(pool + '/' + volume)} is also a disk of VM {', '.join(quote(n) for n in others)}. "
                                   "Nothing was removed.")
        commands.primary(core)  # no primary coordinator: refuse now, not with the VM gone
    return out


def _wait_domain_gone(core: Cluster, found: Vm) -> None:
    """Wait until the VM's node no longer reports its domain running (Ceph refuses to remove an
    image a running VM holds open); at most the command timeout, then the removal says why."""
    node = found.node
    if found.state == "stop" or not node:
        return
    try:
        key = schema.node_key(node, "runningdomains")
    except InvalidArgument:
        return

    def gone() -> bool:
        entry = core.store.get_many([key])[key]
        return entry is None or found.uuid not in entry.value.split()

    try:
        # Bounded like a command: a request must not hold a worker for the long --wait deadline.
        core.store.wait_for([key], gone, min(core.settings.wait_timeout, core.settings.command_timeout))
    except Timeout:
        pass  # Ceph's own refusal ("image still has watchers") then says what holds it


# --- state and node ---------------------------------------------------------------------------


@operation(
    "vm", "set-state", "POST", "/vm/<vm>/state",
    params={"vm": VM_ARG, "state": Param("The state to ask for.", kind="choice", choices=STATE_REQUESTS)},
    variants=(
        Variant("start", {"state": "start"},
                "Start a VM.\n\nA started VM changes nothing; a VM being migrated must settle first."),
        Variant("shutdown", {"state": "shutdown"},
                "Shut a running VM down gracefully (forced off after 90 s).\n\nA stopped VM changes nothing."),
        Variant("stop", {"state": "stop"},
                "Forcibly stop a VM.\n\nPossible in any state, also during a migration; a stopped VM changes "
                "nothing."),
        Variant("restart", {"state": "restart"},
                "Restart a running VM.\n\nA VM being restarted changes nothing."),
    ),
)
def set_vm_state(core: Cluster, vm: str, state: str) -> str:
    """Ask for a VM to be started, shut down, stopped or restarted.

    Shutdown and restart need a running VM. Asking for the state the VM is in changes nothing;
    a VM being migrated must finish first.
    """
    found = find_vm(core, vm, ("state",))
    name, current = quote(found.name), found.state
    if current == state or (state == "shutdown" and current == "stop"):
        return f"VM {name} is already in state {quote(current)}; nothing changed."
    if current == "migrate" and state != "stop":  # stopping is always possible, even a stuck migration
        raise InvalidState(f"VM {name} is being migrated; ask again once it has settled (or stop it).")
    if state in ("shutdown", "restart") and current != "start":
        raise InvalidState(f"VM {name} is not running (its state is {quote(current)}); it cannot {state}.")
    try:
        _commit(core, [_put(found, "state", state)], vm)
    except (Conflict, AlreadyExists):
        raise Conflict(f"VM {name} changed state meanwhile; nothing was changed, try again.") from None
    return {"start": f"Starting VM {name}.", "shutdown": f"Shutting down VM {name}.",
            "stop": f"Forcibly stopping VM {name}.", "restart": f"Restarting VM {name}."}[state]


@operation(
    "vm", "set-node", "POST", "/vm/<vm>/node",
    params={
        "vm": VM_ARG,
        "action": Param("migrate or unmigrate.", kind="choice", choices=NODE_ACTIONS),
        "node": NODE_OPT,
        "selector": SELECTOR_OPT,
        "permanent": Param("Do not remember the previous node (a move, not a migration).", kind="flag"),
        "force": Param("Migrate a VM that was migrated before, keeping its original previous node.",
                       kind="flag", short="-f"),
    },
    variants=(
        Variant("migrate", {"action": "migrate", "permanent": False},
                "Migrate a VM to another node, remembering where it came from.\n\nA running VM is live-migrated; "
                "a stopped one is only re-homed. The node is NODE if it exists, else the one chosen by SELECTOR "
                "(default: the cluster's). A VM migrated before needs --force, which keeps its original previous "
                "node so that unmigrate still leads home."),
        Variant("move", {"action": "migrate", "permanent": True},
                "Move a VM to another node for good.\n\nAs migrate, but the previous node is forgotten: the VM is "
                "not considered migrated.", omit=("force",)),
        Variant("unmigrate", {"action": "unmigrate"},
                "Return a migrated VM to the node it came from.\n\nA running VM is live-migrated back; a stopped "
                "one is only re-homed.", omit=("node", "selector", "permanent", "force")),
    ),
)
def set_vm_node(core: Cluster, vm: str, action: str, node: str | None = None, selector: str | None = None,
                permanent: bool = False, force: bool = False) -> str:
    """Move a VM to another node: live migration when it runs, re-homing when it is stopped.

    migrate uses NODE if it exists, else the node chosen by SELECTOR (default: the cluster's),
    and remembers the previous node; a VM migrated before needs force (its original previous
    node is kept). With permanent the previous node is forgotten. unmigrate sends a migrated VM
    back to its previous node.
    """
    def attempt() -> str:
        found = find_vm(core, vm, ("state", "node", "lastnode"))
        name, state, current, last = quote(found.name), found.state, found.node, found.last_node
        if state in BUSY_STATES:
            raise InvalidState(f"VM {name} is busy (state {quote(state)}); ask again once it has settled "
                               "(or stop it).")
        running = state == "start"
        if action == "unmigrate":
            if not last:
                raise InvalidState(f"VM {name} has not been migrated; there is no previous node to return to.")
            target, lastnode, note = last, "", ""
            check_target(core, target, running)
            message = f"Unmigrating VM {name} back to node {quote(target)}"
        else:
            if last and not force and not permanent:
                raise InvalidState(f"VM {name} has been migrated before (from {quote(last)}); unmigrate it first, "
                                   "or use force to migrate it again.")
            target, note = choose_node(core, node, selector, exclude=current, running=running)
            if permanent:
                lastnode = ""
                message = f"Permanently moving VM {name} to node {quote(target)}"
            else:
                # With force, the first previous node is kept, so unmigrate still leads home.
                lastnode = last if (force and last) else (current or "")
                if lastnode == target:
                    lastnode = ""  # back where it came from: no longer migrated
                message = f"Migrating VM {name} to node {quote(target)}"
        ops = [_put(found, "node", target), _put(found, "lastnode", lastnode)]
        ops += [_put(found, "state", "migrate")] if running else _guard(found)
        _commit(core, ops, vm)
        how = "" if running else f"; it is not running ({quote(state)}), so it is only re-homed"
        return f"{message}{note}{how}."

    return retrying(f"VM {quote(vm)}", attempt)
