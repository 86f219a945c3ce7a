"""The `limit` rule of the original's lists (its §2.8), kept because clients rely on it.

``.*`` is put in front unless the limit starts with ``^`` and appended unless it contains ``$``;
the result is matched from the start of each name. So ``hv1`` is a substring match, ``^hv`` a
prefix, ``hv1$`` a suffix and ``^hv1$`` an exact name.

A limit is a regex from the client, so it is bounded (issue 11, item 3): at most
:data:`MAX_LIMIT` characters, at most :data:`MAX_EXPANSION` pattern items once counted repeats
are multiplied out, and all the matching of one request at most ``timeout`` seconds of CPU (the
``regex_timeout`` setting); past any of these it is an InvalidArgument (400 on a GET).

Why the ``regex`` package with its ``timeout`` and not RE2 (linear time): the rule is the
original's, and the original matched with Python's ``re``. ``regex`` in its VERSION0 mode takes
that same syntax with the same meaning (backreferences, lookarounds, lazy repeats, inline flags),
so every limit that worked on the original works here and selects the same names; RE2 refuses
backreferences and lookarounds and differs in details (``\\Z``, ``\\b`` on non-ASCII text,
possessive and lazy forms), so some limits would change what they select or stop working. The
price is that a match may backtrack exponentially, which the timeout cuts short.

Measured facts this module relies on (regex 2024-2026, CPython 3.11):

- ``regex`` releases the GIL while it matches a ``str``: during a 3 s pathological match in one
  thread, `pvc serve` in the same process answered 2,659 ``GET /api/v1`` (p50 0.5 ms, at most
  16 ms), where with ``re`` a 27-character match held every thread for 7 s
  (tests/test_hardening_values.py, test_a_long_match_does_not_stop_the_server).
- Its timeout counts the *process's* CPU time (``clock()``), not wall time: under load a 0.1 s
  timeout can take longer in wall time, and other busy threads make it fire sooner. Either way
  the CPU one request can spend is bounded.
- Compiling is not bounded by the timeout and expands counted repeats: ``(?:a{1000}){1000}``
  takes a second and 280 MB to compile, ``a{4294967294}`` exhausts memory. Hence
  :data:`MAX_EXPANSION`, checked on the pattern's text before it is compiled.
- A timeout costs about 2.5 µs of CPU per match; one request's budget of 0.1 s covers some 35,000
  names (a list of 17,000 VMs: a name and a UUID each). Larger clusters raise ``regex_timeout``.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, TypeVar

from pvc.lib.errors import InvalidArgument, quote

T = TypeVar("T")

#: Longest limit accepted, in characters (names are at most 255 bytes; a list of names joined
#: with ``|`` is the longest sensible limit).
MAX_LIMIT = 1024
#: Largest size of a limit with its counted repeats multiplied out (``a{3}`` counts 3, nested
#: repeats multiply): `regex` compiles such repeats expanded, in time and memory of this size.
MAX_EXPANSION = 20_000
#: CPU seconds all the matching of one request may take, when the caller gives none (the
#: default of the ``regex_timeout`` setting, which callers pass from ``core.settings``).
DEFAULT_TIMEOUT = 0.1


def _shown(limit: str) -> str:
    return quote(limit if len(limit) <= 80 else limit[:80] + "…")


def expansion(pattern: str) -> int:
    """An upper bound of the size of ``pattern`` with its counted repeats written out.

    A plain scan of the text (escapes, character classes, groups, alternatives and ``{m,n}``):
    each item weighs 1, a group the sum of what it holds, and ``{m...}`` multiplies the weight of
    the item before it by ``m``. It never compiles anything, so its cost is linear."""
    stack: list[list[int]] = [[0, 0]]  # per open group: [total weight, weight of the last item]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        frame = stack[-1]
        if c == "\\":
            end = i + 2
            if i + 2 < n and pattern[i + 1] in "pPNxuUgkL" and pattern[i + 2] in "{<":
                close = pattern.find("}" if pattern[i + 2] == "{" else ">", i + 3)
                end = n if close < 0 else close + 1
            frame[0] += 1
            frame[1] = 1
            i = end
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\":
                    j += 1
                elif pattern.startswith("[:", j):
                    close = pattern.find(":]", j + 2)
                    j = close + 1 if close >= 0 else j
                j += 1
            frame[0] += 1
            frame[1] = 1
            i = j + 1
        elif c == "(":
            stack.append([0, 0])
            i += 1
        elif c == ")":
            if len(stack) > 1:
                inner = stack.pop()[0]
                stack[-1][0] += inner
                stack[-1][1] = inner
            i += 1
        elif c == "{":
            close = pattern.find("}", i + 1)
            low = pattern[i + 1:close].split(",", 1)[0].strip() if close > 0 else ""
            if close > 0 and low.isascii() and low.isdigit():
                count = int(low[:12])  # a longer count is refused by the bound anyway
                extra = frame[1] * (max(count, 1) - 1)
                frame[0] += extra
                frame[1] += extra
                i = close + 1
            else:
                frame[0] += 1
                frame[1] = 1
                i += 1
        elif c in "*+?|":
            i += 1
        else:
            frame[0] += 1
            frame[1] = 1
            i += 1
        if stack[-1][0] > MAX_EXPANSION:
            return stack[-1][0]
    return sum(f[0] for f in stack)


def fuzzy(limit: str, timeout: float = DEFAULT_TIMEOUT) -> Callable[[str], bool]:
    """A predicate telling whether a name matches ``limit``; InvalidArgument for a bad regex, one
    that is too long or too large, and once the predicate's calls together have taken more than
    ``timeout`` seconds of CPU."""
    if not isinstance(limit, str):
        raise InvalidArgument(f"Invalid limit {quote(limit)}: it must be text.")
    if len(limit) > MAX_LIMIT:  # before anything else looks at it
        raise InvalidArgument(f"Invalid limit: it is longer than {MAX_LIMIT} characters.")
    if expansion(limit) > MAX_EXPANSION:
        raise InvalidArgument(f"Invalid limit {_shown(limit)}: its counted repeats are too large (more than "
                              f"{MAX_EXPANSION} items written out).")
    pattern = limit
    if not limit.startswith("^"):
        pattern = ".*" + pattern
    if "$" not in limit:
        pattern += ".*"
    import regex  # on first use: `pvc --help` and completion do not load it

    try:
        compiled = regex.compile(pattern, regex.VERSION0)
    except regex.error as e:  # its position would count the ".*" added in front
        raise InvalidArgument(f"Invalid limit {_shown(limit)}: {e.msg}.") from None
    except (ValueError, OverflowError, RecursionError) as e:
        raise InvalidArgument(f"Invalid limit {_shown(limit)}: {e}.") from None
    clock = time.thread_time  # this request's own CPU: other requests' load does not count
    state = [float(timeout), clock()]  # CPU seconds left, and the clock when last looked at

    def matches(name: str) -> bool:
        now = clock()
        state[0] -= now - state[1]
        state[1] = now
        if state[0] <= 0:
            raise _timed_out(limit, timeout)
        try:
            return compiled.match(name, timeout=state[0]) is not None
        except TimeoutError:
            state[0] = 0.0
            raise _timed_out(limit, timeout) from None

    return matches


def _timed_out(limit: str, timeout: float) -> InvalidArgument:
    return InvalidArgument(f"Invalid limit {_shown(limit)}: matching it took longer than the {timeout:g} s allowed "
                           "(pvc.api.limits.regex_timeout); use a simpler regex.")


def select(names: Iterable[str], limit: str | None, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """The names that match ``limit`` (all of them without one), in their given order.

    ``timeout``: CPU seconds all the matching may take (``core.settings.regex_timeout``)."""
    names = list(names)
    if limit is None or limit == "":
        return names
    matches = fuzzy(limit, timeout)
    return [n for n in names if matches(n)]


def select_any(items: Iterable[T], limit: str | None, *keys: Callable[[T], str | None],
               timeout: float = DEFAULT_TIMEOUT) -> list[T]:
    """The items of which any of ``keys`` matches ``limit``, each at most once, in their order.

    The original matched a VM's name and UUID (a network's description and VNI) one after the
    other and listed an item matching both twice; here an item is in or out. ``timeout`` as for
    :func:`select`."""
    items = list(items)
    if limit is None or limit == "":
        return items
    matches = fuzzy(limit, timeout)
    return [item for item in items if any((v := key(item)) is not None and matches(v) for key in keys)]
