"""Network ACL operations: the manual's firewall rule endpoints of a virtual network.

Each rule lives at /networks/<vni>/firewall_rules/<in|out>/<description> (value "") with the
children `order` (integer text) and `rule` (one nft rule). The order of a direction is always
0..n-1: inserting or removing a rule renumbers the others in the same commit (original §4.8, with
numeric instead of string sorting, its bug L14).

Concurrent writers to one direction are kept apart by the direction key itself: every commit that
adds, removes or renumbers rules also rewrites that key at the version read before the rules were
read, so of two writers that read the same rules exactly one wins; the other re-reads and retries.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.dhcp_leases import children
from pvc.lib.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, quote
from pvc.lib.match import select
from pvc.lib.ops.network import NETWORK_ARG, resolve_vni
from pvc.lib.registry import Param, operation
from pvc.lib.retry import ReadAgain, commit, retrying
from pvc.lib.store import Create, Delete, Entry, Op, Set

DIRECTIONS = schema.ACL_DIRECTIONS
#: Bound on the rule text; an nft rule line is far shorter.
MAX_RULE_BYTES = 4096
#: Unicode categories refused in a rule: controls (newlines included), format characters,
#: surrogates and the line/paragraph separators.
_BAD_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")

DIRECTION_HELP = "Direction of the rule: in or out."
#: The original's `--in` / `--out` (its §5.2), the same as `--direction in|out`.
DIRECTION_FLAGS = (("--in", "in"), ("--out", "out"))


def _direction(direction: str | None) -> str:
    if direction is None:
        raise InvalidArgument("Missing direction: it must be 'in' or 'out'.")
    if direction not in DIRECTIONS:
        raise InvalidArgument(f"Invalid direction {quote(direction)}: it must be 'in' or 'out'.")
    return direction


def validate_rule(rule: object) -> str:
    """Return ``rule`` if it is one nft rule on a single line, else raise InvalidArgument.

    The daemon writes the rule verbatim into an nft file loaded as root (the original's bug S9),
    so a newline or a ';' would add statements of the caller's choice.
    """
    if not isinstance(rule, str) or not rule.strip():
        raise InvalidArgument(f"Invalid rule {quote(rule if isinstance(rule, str) else '')}: it must not be empty.")
    if "\n" in rule or "\r" in rule:
        raise InvalidArgument(f"Invalid rule {quote(rule)}: it must be a single line.")
    if ";" in rule:
        raise InvalidArgument(f"Invalid rule {quote(rule)}: it must not contain ';' (one rule, not several).")
    if any(unicodedata.category(c) in _BAD_CATEGORIES for c in rule):
        raise InvalidArgument(f"Invalid rule {quote(rule)}: it must not contain control characters.")
    if len(rule.encode("utf-8")) > MAX_RULE_BYTES:
        raise InvalidArgument(f"Invalid rule {quote(rule[:40] + '...')}: it is longer than {MAX_RULE_BYTES} bytes.")
    return rule


def _order(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_rules(core: Cluster, vni: str, directions: tuple[str, ...], fields: tuple[str, ...] = schema.ACL_FIELDS
                ) -> dict[str, list[tuple[str, dict[str, Entry | None]]]]:
    """The rules of each direction in their order: (description, {field: entry}) pairs.

    Rules are sorted by their numeric order; a rule whose order is missing or not a number (a
    hand-edited tree) goes last, by description."""
    names = {d: children(core, schema.acl_direction(vni, d)) for d in directions}
    paths = [schema.acl_key(vni, d, n, f) for d in directions for n in names[d] for f in fields]
    entries = core.store.get_many(paths) if paths else {}
    found = {}
    for d in directions:
        rules = [(n, {f: entries[schema.acl_key(vni, d, n, f)] for f in fields}) for n in names[d]]

        def key(item: tuple[str, dict[str, Entry | None]]) -> tuple[int, int, str]:
            entry = item[1].get("order")
            number = _order(entry.value if entry else None)
            return (0, number, item[0]) if number is not None else (1, 0, item[0])

        found[d] = sorted(rules, key=key)
    return found


def _acl_object(direction: str, description: str, fields: dict[str, Entry | None]) -> dict[str, Any]:
    order, rule = fields.get("order"), fields.get("rule")
    return {
        "description": description,
        "direction": direction,
        "order": _order(order.value) if order else None,
        "rule": rule.value if rule else None,
    }


def _renumber(vni: str, direction: str, rules: list[tuple[str, dict[str, Entry | None]] | None]) -> list[Op]:
    """Writes giving ``rules`` the orders 0..n-1 in their list order (only those that differ);
    a None entry holds the place of the rule being added, which is written by the caller."""
    ops: list[Op] = []
    for i, item in enumerate(rules):
        if item is None:
            continue
        name, fields = item
        entry = fields["order"]
        path = schema.acl_key(vni, direction, name, "order")
        if entry is None:
            ops.append(Create(path, str(i)))
        elif entry.value != str(i):
            ops.append(Set(path, str(i), entry.version))
    return ops


@operation("network acl", "list", "GET", "/network/<network>/acl", result="list", render="acl_list",
           params={
               "network": NETWORK_ARG,
               "limit": Param("Show only rules whose description matches this fuzzy regex.", positional=True),
               "direction": Param("Show only the rules of this direction: in or out.", kind="choice",
                                  choices=DIRECTIONS, cli_flags=DIRECTION_FLAGS),
           })
def list_acls(core: Cluster, network: str, limit: str | None = None, direction: str | None = None
              ) -> list[dict[str, Any]]:
    """List the firewall rules (ACLs) of a network.

    Rules are sorted by direction (in, then out) and by their order. LIMIT is the original's fuzzy
    regex on the description: a substring unless it starts with ^ or contains $.
    """
    directions = DIRECTIONS if direction is None else (_direction(direction),)
    vni = resolve_vni(core, network)
    rules = _read_rules(core, vni, directions)
    out = []
    for d in directions:
        wanted = set(select([n for n, _ in rules[d]], limit, timeout=core.settings.regex_timeout))
        out += [_acl_object(d, n, fields) for n, fields in rules[d] if n in wanted]
    return out


@operation("network acl", "info", "GET", "/network/<network>/acl/<acl>", result="list", render="acl_list",
           params={
               "network": NETWORK_ARG,
               "acl": Param("Description of the rule (exact).", positional=True),
               "direction": Param("Show only the rule of this direction: in or out.", kind="choice",
                                  choices=DIRECTIONS, cli_flags=DIRECTION_FLAGS),
           })
def get_acl(core: Cluster, network: str, acl: str, direction: str | None = None) -> list[dict[str, Any]]:
    """Show one firewall rule of a network (exact description).

    A description is unique within a direction, so without DIRECTION the answer may hold the
    rule of each direction.
    """
    directions = DIRECTIONS if direction is None else (_direction(direction),)
    schema.validate_name("ACL description", acl)
    vni = resolve_vni(core, network)
    rules = _read_rules(core, vni, directions)
    found = [_acl_object(d, n, fields) for d in directions for n, fields in rules[d] if n == acl]
    if not found:
        where = f"direction {quote(direction)} of " if direction else ""
        raise NotFound(f"No firewall rule exists matching description {quote(acl)} in {where}network {quote(network)}.")
    return found


def _direction_key(core: Cluster, vni: str, direction: str, network: str) -> tuple[list[Op], Entry | None]:
    """The guard on a direction: rewrite its key at the version read now, or create it (with its
    parent) when an older tree lacks it. The version is read before the rules."""
    rules_path = schema.network_key(vni, "firewall_rules")
    dir_path = schema.acl_direction(vni, direction)
    entries = core.store.get_many([schema.network(vni), rules_path, dir_path])
    if entries[schema.network(vni)] is None:
        raise NotFound(f"Network {quote(network)} not found.")
    entry = entries[dir_path]
    if entry is not None:
        return [Set(dir_path, entry.value, entry.version)], entry
    ops: list[Op] = [] if entries[rules_path] is not None else [Create(rules_path, "")]
    return ops + [Create(dir_path, "")], None


@operation("network acl", "add", "POST", "/network/<network>/acl",
           params={
               "network": NETWORK_ARG,
               "description": Param("Description of the rule, unique within its direction.", short="-d"),
               "direction": Param(DIRECTION_HELP, kind="choice", choices=DIRECTIONS, cli_flags=DIRECTION_FLAGS),
               "rule": Param("The nft rule, one line (for example 'tcp dport 22 accept').", short="-r"),
               "order": Param("Position of the rule, 0 first (default: last).", kind="int", short="-o"),
           })
def add_acl(core: Cluster, network: str, description: str, direction: str, rule: str, order: int | None = None) -> str:
    """Add a firewall rule (ACL) to a network.

    The rule goes to position ORDER of its direction (0 is first); without ORDER, or with one past
    the end, it goes last. The rules at and after that position move down by one, in the same
    write. RULE is one nft rule: a single line, without ';' or control characters.
    """
    _direction(direction)
    schema.validate_name("ACL description", description)
    validate_rule(rule)
    if order is not None and (isinstance(order, bool) or not isinstance(order, int) or order < 0):
        raise InvalidArgument(f"Invalid order {quote(order)}: it must be a whole number, 0 or more.")
    vni = resolve_vni(core, network)

    def attempt() -> str:
        guard, _ = _direction_key(core, vni, direction, network)
        rules = _read_rules(core, vni, (direction,), ("order",))[direction]
        if any(n == description for n, _ in rules):
            raise AlreadyExists(f"A rule with description {quote(description)} already exists in direction "
                                f"{quote(direction)} of network {quote(network)}.")
        position = len(rules) if order is None or order > len(rules) else order
        renumber = _renumber(vni, direction, [*rules[:position], None, *rules[position:]])
        # A concurrent writer got there first: read again (a removed network says so then).
        commit(core.store, guard + [
            Create(schema.acl(vni, direction, description), ""),
            Create(schema.acl_key(vni, direction, description, "order"), str(position)),
            Create(schema.acl_key(vni, direction, description, "rule"), rule),
        ] + renumber, Conflict, AlreadyExists, NotFound)
        return f"Firewall rule {quote(description)} added successfully!"

    return retrying(f"The {quote(direction)} rules of network {quote(network)}", attempt)


@operation("network acl", "remove", "DELETE", "/network/<network>/acl/<acl>", destructive=True,
           params={
               "network": NETWORK_ARG,
               "acl": Param("Description of the rule.", positional=True),
               "direction": Param(DIRECTION_HELP, kind="choice", choices=DIRECTIONS, cli_flags=DIRECTION_FLAGS),
           })
def remove_acl(core: Cluster, network: str, acl: str, direction: str) -> str:
    """Remove a firewall rule (ACL) from a network.

    The remaining rules of the direction are renumbered 0..n-1 in the same write.
    """
    _direction(direction)
    schema.validate_name("ACL description", acl)
    vni = resolve_vni(core, network)
    path = schema.acl(vni, direction, acl)

    def attempt() -> str:
        guard, entry = _direction_key(core, vni, direction, network)
        rules = _read_rules(core, vni, (direction,), ("order",))[direction] if entry is not None else []
        if not any(n == acl for n, _ in rules):
            raise NotFound(f"No firewall rule exists matching description {quote(acl)} in direction "
                           f"{quote(direction)} of network {quote(network)}.")
        try:
            keys = core.store.subtree(path)
        except NotFound:
            raise ReadAgain() from None  # removed meanwhile; the next read says so
        remaining = [(n, fields) for n, fields in rules if n != acl]
        commit(core.store, guard + [Delete(k) for k in reversed(keys)] + _renumber(vni, direction, remaining),
               Conflict, NotFound)
        return f"Firewall rule {quote(acl)} removed successfully!"

    return retrying(f"The {quote(direction)} rules of network {quote(network)}", attempt)
