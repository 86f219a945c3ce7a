"""The `limit` rule of the original's lists (its §2.8), kept because clients rely on it.

``.*`` is put in front unless the limit starts with ``^`` and appended unless it contains ``$``;
the result is matched from the start of each name. So ``hv1`` is a substring match, ``^hv`` a
prefix, ``hv1$`` a suffix and ``^hv1$`` an exact name.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, TypeVar

from pvc.lib.errors import InvalidArgument, quote

T = TypeVar("T")


def fuzzy(limit: str) -> Callable[[str], bool]:
    """A predicate telling whether a name matches ``limit``; InvalidArgument for a bad regex."""
    pattern = limit
    if not limit.startswith("^"):
        pattern = ".*" + pattern
    if "$" not in limit:
        pattern += ".*"
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise InvalidArgument(f"Invalid limit {quote(limit)}: {e}.") from None
    return lambda name: compiled.match(name) is not None


def select(names: Iterable[str], limit: str | None) -> list[str]:
    """The names that match ``limit`` (all of them without one), in their given order."""
    names = list(names)
    if limit is None or limit == "":
        return names
    matches = fuzzy(limit)
    return [n for n in names if matches(n)]


def select_any(items: Iterable[T], limit: str | None, *keys: Callable[[T], str | None]) -> list[T]:
    """The items of which any of ``keys`` matches ``limit``, each at most once, in their order.

    The original matched a VM's name and UUID (a network's description and VNI) one after the
    other and listed an item matching both twice; here an item is in or out."""
    items = list(items)
    if limit is None or limit == "":
        return items
    matches = fuzzy(limit)
    return [item for item in items if any((v := key(item)) is not None and matches(v) for key in keys)]
