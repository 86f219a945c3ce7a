"""Each operation is declared once, beside its function; the CLI and the HTTP routes derive from it.

A declaration holds only what the function's signature cannot say: the command's place in the
tree (group and verb), the HTTP method and path, and for each value its help, kind and choices.
Names, defaults and whether a value is required come from the signature itself. The Click
commands (:mod:`pvc.cli.build`) and the Bottle routes (:mod:`pvc.server.routes`) are built by
walking :data:`OPERATIONS`; both convert values with :func:`convert`.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from pvc.lib.errors import InvalidArgument, quote

TRUE_WORDS = ("", "1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
KINDS = ("str", "int", "float", "flag", "choice")
#: "document" results are text served as-is with the operation's content type (`vm dump`).
RESULTS = ("message", "list", "object", "document")

_REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One value of an operation."""

    help: str
    kind: str = "str"
    choices: tuple[str, ...] = ()
    #: Name of the HTTP value when it differs from the Python name (the manual's `domain-state`).
    http: str | None = None
    #: CLI: a positional argument instead of an --option.
    positional: bool = False
    #: CLI: a short option such as "-t".
    short: str | None = None
    #: CLI: more option names, such as the original's ("-i", "--ipnet") for ip4_network.
    cli_aliases: tuple[str, ...] = ()
    #: CLI: the value is read from the file named on the command line ("-" for stdin).
    cli_file: bool = False
    #: CLI: flags that each give a choice, such as the original's (("--in", "in"), ("--out", "out")).
    cli_flags: tuple[tuple[str, str], ...] = ()
    #: Name of a completer (see :func:`completer`) offering values in the shell.
    complete: str | None = None
    #: CLI: a function giving the value when the command line leaves it out (e.g. this host).
    cli_default: Callable[[], str] | None = None
    # Filled in from the function's signature:
    name: str = ""
    required: bool = False
    default: Any = None

    @property
    def http_name(self) -> str:
        return self.http or self.name

    @property
    def metavar(self) -> str:
        return self.name.upper()


@dataclass(frozen=True)
class Variant:
    """An extra CLI command for an operation with some values fixed (`pvc node flush` is the
    domain-state operation with ``state="flush"``)."""

    verb: str
    fixed: Mapping[str, Any]
    help: str
    aliases: tuple[str, ...] = ()
    #: A library function ``wait(core, **values, timeout=..., progress=..., before=...)`` offered
    #: as ``--wait``; ``progress`` takes lines to show while waiting.
    wait: Callable[..., str] | None = None
    #: With --wait, run before the operation; what it returns is ``wait``'s ``before`` (the state
    #: progress is reported against, read before the change can start).
    before: Callable[..., Any] | None = None
    #: Values this command does not offer (they keep their defaults).
    omit: tuple[str, ...] = ()
    #: Ask before running (``--yes`` skips); None: as the operation says.
    destructive: bool | None = None


@dataclass(frozen=True)
class Operation:
    """The declaration of one operation."""

    name: str
    group: tuple[str, ...]
    verb: str
    method: str
    #: Path under /api/v1 with Bottle wildcards named like the parameters; None: no HTTP route.
    path: str | None
    func: Callable[..., Any]
    params: tuple[Param, ...]
    result: str
    render: str | None = None
    destructive: bool = False
    variants: tuple[Variant, ...] = ()
    #: Why there is no route (http=False) or no command (cli=False); required with either.
    http_reason: str | None = None
    cli: bool = True
    cli_reason: str | None = None
    #: More paths serving the same operation (the manual's and the original's spelling).
    extra_paths: tuple[str, ...] = ()
    #: Content type of a "document" result.
    content_type: str = "application/json"

    @property
    def paths(self) -> tuple[str, ...]:
        return ((self.path,) if self.path else ()) + self.extra_paths

    @property
    def mutating(self) -> bool:
        return self.method != "GET"

    @property
    def help(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.help.split("\n", 1)[0]

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"<(\w+)>", self.path or ""))

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


#: Every declared operation, in declaration order.
OPERATIONS: dict[str, Operation] = {}
#: Value completers by name: ``fn(core, incomplete) -> list[str]``.
COMPLETERS: dict[str, Callable[[Any, str], list[str]]] = {}


def operation(
    group: str,
    verb: str,
    method: str = "GET",
    path: str | None = None,
    params: Mapping[str, Param] | None = None,
    result: str = "message",
    render: str | None = None,
    destructive: bool = False,
    variants: tuple[Variant, ...] = (),
    http_reason: str | None = None,
    cli: bool = True,
    cli_reason: str | None = None,
    extra_paths: tuple[str, ...] = (),
    content_type: str = "application/json",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the decorated function as an operation and file it in :data:`OPERATIONS`."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        groups = tuple(group.split())
        name = ".".join(groups + (verb,))
        declared = dict(params or {})
        signature = list(inspect.signature(func).parameters.values())[1:]  # the first is the core
        undeclared = [p.name for p in signature if p.name not in declared]
        unknown = sorted(set(declared) - {p.name for p in signature})
        if undeclared or unknown:
            raise TypeError(f"{name}: parameters {undeclared} are not declared, {unknown} are not in the signature")
        built = []
        for p in signature:
            spec = declared[p.name]
            if spec.kind not in KINDS or (spec.kind == "choice") != bool(spec.choices):
                raise TypeError(f"{name}: bad kind {spec.kind!r} for {p.name}")
            built.append(
                replace(spec, name=p.name, required=p.default is _REQUIRED, default=None if p.default is _REQUIRED else p.default)
            )
        if result not in RESULTS or method not in ("GET", "POST", "PUT", "DELETE"):
            raise TypeError(f"{name}: bad result {result!r} or method {method!r}")
        if path is None and not http_reason:
            raise TypeError(f"{name}: an operation without a route must say why (http_reason)")
        op = Operation(
            name=name,
            group=groups,
            verb=verb,
            method=method,
            path=path,
            func=func,
            params=tuple(built),
            result=result,
            render=render,
            destructive=destructive,
            variants=variants,
            http_reason=http_reason,
            cli=cli,
            cli_reason=cli_reason,
            extra_paths=extra_paths,
            content_type=content_type,
        )
        if not cli and not cli_reason:
            raise TypeError(f"{name}: an operation without a generated command must say why (cli_reason)")
        for route in op.paths:
            wildcards = re.findall(r"<(\w+)>", route)
            missing = [w for w in wildcards if w not in {p.name for p in op.params}]
            if missing:
                raise TypeError(f"{name}: path wildcards {missing} are not parameters")
            if set(wildcards) != set(op.path_params):
                raise TypeError(f"{name}: every path must have the same wildcards")
        for v in variants:
            bad = sorted((set(v.fixed) | set(v.omit)) - {p.name for p in op.params})
            if bad:
                raise TypeError(f"{name}: variant {v.verb} names unknown values {bad}")
        if name in OPERATIONS:
            raise TypeError(f"{name}: declared twice")
        OPERATIONS[name] = op
        func.operation = op  # type: ignore[attr-defined]
        return func

    return register


def completer(name: str) -> Callable[[Callable[[Any, str], list[str]]], Callable[[Any, str], list[str]]]:
    """Register a function that lists values of one kind (node names, ...) for shell completion."""

    def register(func: Callable[[Any, str], list[str]]) -> Callable[[Any, str], list[str]]:
        COMPLETERS[name] = func
        return func

    return register


def convert(param: Param, raw: Any) -> Any:
    """Turn a text value from the command line, a query string, a form or JSON into the
    parameter's type; InvalidArgument names the value and what is wrong with it."""
    label = f"Invalid value for {quote(param.http_name)}"
    if param.kind == "flag":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise InvalidArgument(f"{label}: {quote(raw)} is not one of 1, true, yes, on, 0, false, no, off.")
    if isinstance(raw, (dict, list)) or raw is None:
        raise InvalidArgument(f"{label}: expected a single value.")
    if param.kind == "int":
        return _integer(label, raw)
    if param.kind == "float":
        text = str(raw).strip(ASCII_SPACE)
        # float() also reads '١٠', '1_0', 'nan' and 'inf': only ASCII decimal notation here.
        if len(text) > MAX_NUMBER_CHARS or not _FLOAT.fullmatch(text):
            raise InvalidArgument(f"{label}: {_short(raw)} is not a number.")
        return float(text)
    text = str(raw)
    if param.kind == "choice" and text not in param.choices:
        raise InvalidArgument(f"{label}: {quote(text)} is not one of {', '.join(param.choices)}.")
    return text


#: Longest integer or number text read: longer is refused before any conversion (Python's int()
#: refuses more than 4,300 digits, and is quadratic below that).
MAX_NUMBER_CHARS = 40
#: Spaces around a number that are ignored (str.strip() would also take U+00A0 and the like).
ASCII_SPACE = " \t\r\n"
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)


def _short(raw: Any) -> str:
    text = str(raw)
    return quote(text if len(text) <= 40 else text[:40] + "…")


def _integer(label: str, raw: Any) -> int:
    """An integer given as ASCII digits with an optional leading '-' (and surrounding ASCII spaces).

    ``int()`` alone also reads other scripts' digits ('١٠') and underscores ('1_0') as 10, and
    whether a negative number makes sense is the operation's to say (it checks its range)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    text = str(raw).strip(ASCII_SPACE)
    if len(text) > MAX_NUMBER_CHARS or not _INTEGER.fullmatch(text):
        raise InvalidArgument(f"{label}: {_short(raw)} is not an integer.")
    return int(text)


def load_all() -> dict[str, Operation]:
    """Import every operation module so that :data:`OPERATIONS` is complete."""
    import importlib

    from pvc.lib.ops import MODULES

    for module in MODULES:
        importlib.import_module(f"pvc.lib.ops.{module}")  # the import registers the declarations
    return OPERATIONS
