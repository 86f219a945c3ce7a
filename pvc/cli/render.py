"""Turning operation results into terminal output: JSON, or tables in the original's columns.

Colour is used only when stdout is a terminal and ``NO_COLOR`` is not set (no-color.org).
Renderers for tables are registered by name; an operation's declaration names its renderer.
"""

from __future__ import annotations

import json
import os
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
    """A plain table (no rules) with a bold header, as the original printed them."""
    from tabulate import tabulate  # at render time only: keeps `pvc --help` light

    return tabulate(rows, headers=[paint(h, "bold") for h in headers], tablefmt="plain", disable_numparse=True)


def fields(pairs: list[tuple[str, Any]], paint: Paint) -> str:
    """`Label: value` lines with aligned values and purple labels (the original's info views)."""
    width = max(len(label) for label, _ in pairs) + 2
    return "\n".join(paint(f"{label}:".ljust(width), "purple") + ("" if v is None else str(v)) for label, v in pairs)


@renderer("state")
def render_state(data: dict[str, Any], paint: Paint, long: bool) -> str:
    """`{name, <x>_state}` objects."""
    key = next(k for k in data if k != "name")
    return table(["Name", key.replace("_", " ").capitalize()], [[data["name"], data[key]]], paint)
