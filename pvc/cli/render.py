"""Turning operation results into terminal output: JSON, or tables in the original's columns.

Colour is used only when stdout is a terminal and ``NO_COLOR`` is not set (no-color.org).
Renderers for tables are registered by name; an operation's declaration names its renderer.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

FORMATS = ("table", "json", "json-pretty")

# The original's palette (its §5.3).
COLOURS = {
    "red": "\033[91m",
    "green": "\033[92m",
    "yellow": "\033[93m",
    "blue": "\033[94m",
    "purple": "\033[95m",
    "cyan": "\033[96m",
    "bold": "\033[1m",
}
RESET = "\033[0m"


def use_colour(stream: Any = None) -> bool:
    """True when writing to a terminal and NO_COLOR is unset or empty."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Paint:
    """Wraps text in ANSI colours, or leaves it alone when colour is off."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: Any, *colours: str) -> str:
        text = "" if text is None else str(text)
        if not self.enabled or not colours:
            return text
        return "".join(COLOURS[c] for c in colours) + text + RESET


@dataclass(frozen=True)
class Renderer:
    """A table renderer: ``fn(data, paint, long) -> str``; ``long`` adds a -l/--long option and
    ``raw`` (``raw(data) -> str``) a -r/--raw option printing bare names."""

    fn: Callable[..., str]
    long: bool = False
    raw: Callable[[Any], str] | None = None
    #: ``context(core, data, long)``: more data the table needs (e.g. which networks exist),
    #: passed to ``fn`` as ``context=``; read only for tables, never for JSON.
    context: Callable[[Any], Any] | None = None


RENDERERS: dict[str, Renderer] = {}


def renderer(name: str, long: bool = False, raw: Callable[[Any], str] | None = None,
             context: Callable[[Any], Any] | None = None) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def register(fn: Callable[..., str]) -> Callable[..., str]:
        RENDERERS[name] = Renderer(fn, long, raw, context)
        return fn

    return register


def render(data: Any, fmt: str, name: str | None, colour: bool, long: bool = False, core: Any = None) -> str:
    """The text to print for ``data`` in format ``fmt``."""
    if fmt == "json":
        return json.dumps(data, sort_keys=True)
    if fmt == "json-pretty":
        return json.dumps(data, sort_keys=True, indent=2)
    if name is None:
        return json.dumps(data, sort_keys=True, indent=2)
    view = RENDERERS[name]
    if view.context is not None:
        return view.fn(data, Paint(colour), long, context=view.context(core, data, long))
    return view.fn(data, Paint(colour), long)


def table(headers: list[str], rows: list[list[Any]], paint: Paint) -> str:
    """A plain table (no rules) with a bold header, as the original printed them: tabulate's
    ``tablefmt="plain", disable_numparse=True``, made here for the cells views give (see
    :func:`plain_table`), by tabulate itself for any other."""
    painted = [paint(h, "bold") for h in headers]
    text = plain_table(painted, rows)
    if text is not None:
        return text
    from tabulate import tabulate  # only for unusual cells: importing it costs more than a 1,000-row table

    return tabulate(rows, headers=painted, tablefmt="plain", disable_numparse=True)


#: The colour codes Paint writes; tabulate does not count them in a cell's width either.
_SGR = re.compile(r"\x1b\[[0-9]+m")
_PRINTABLE = re.compile(r"[ -~]*")


def _plain_cell(value: Any) -> tuple[str, int] | None:
    """A cell's text and visible width as tabulate shows it, or None when tabulate must decide."""
    if value is None:
        return "", 0
    kind = type(value)
    if kind is int or kind is float:
        text = f"{value}"
        return text, len(text)
    if kind is not str:
        return None
    visible = _SGR.sub("", value) if "\x1b" in value else value
    # Printable ASCII only (one column a character, one line), no surrounding spaces (tabulate
    # strips them), and no cell of colour codes alone (tabulate types those as empty).
    if not _PRINTABLE.fullmatch(visible) or visible != visible.strip() or (not visible and value):
        return None
    return value, len(visible)


def plain_table(headers: list[str], rows: list[list[Any]]) -> str | None:
    """What ``tabulate(rows, headers, tablefmt="plain", disable_numparse=True)`` gives, for cells
    of printable ASCII text (with Paint's colours), numbers and None; None for anything else.

    With number parsing off, tabulate aligns every column to the left, as wide as its widest
    cell and at least its header plus two, joins columns with two spaces and strips each line's
    end (tests/test_cli_lazy.py compares the two)."""
    columns = len(headers)
    header_cells = [_plain_cell(h) for h in headers]
    if any(c is None for c in header_cells):
        return None
    widths = [width + 2 for _, width in header_cells]  # type: ignore[misc]
    body = []
    for row in rows:
        if len(row) != columns:
            return None
        cells = []
        for i, value in enumerate(row):
            cell = _plain_cell(value)
            if cell is None:
                return None
            if cell[1] > widths[i]:
                widths[i] = cell[1]
            cells.append(cell)
        body.append(cells)
    lines = []
    for cells in [header_cells, *body]:
        lines.append("  ".join(text + " " * (width - visible)
                               for (text, visible), width in zip(cells, widths)).rstrip())  # type: ignore[misc]
    return "\n".join(lines)


def fields(pairs: list[tuple[str, Any]], paint: Paint) -> str:
    """`Label: value` lines with aligned values and purple labels (the original's info views)."""
    width = max(len(label) for label, _ in pairs) + 2
    return "\n".join(paint(f"{label}:".ljust(width), "purple") + ("" if v is None else str(v)) for label, v in pairs)


@renderer("state")
def render_state(data: dict[str, Any], paint: Paint, long: bool) -> str:
    """`{name, <x>_state}` objects."""
    key = next(k for k in data if k != "name")
    return table(["Name", key.replace("_", " ").capitalize()], [[data["name"], data[key]]], paint)
