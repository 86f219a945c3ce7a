"""Registry → Bottle: one route per operation, built inside create_app.

Each route gathers the path wildcards and the request values, rejects values the operation does
not take, converts them with the registry's converters (the same as the CLI's), calls the library
function and returns its data; the plugin in :mod:`pvc.server.app` turns that into JSON.
"""

from __future__ import annotations

from typing import Any, Callable

import bottle

from pvc.lib.core import Cluster
from pvc.lib.errors import InvalidArgument, quote
from pvc.lib.registry import Operation, convert
from pvc.server.values import request_values

PREFIX = "/api/v1"


def route_callback(op: Operation, core: Cluster) -> Callable[..., Any]:
    takes = {p.http_name: p for p in op.params if p.name not in op.path_params}

    def callback(**url_args: str) -> Any:
        values = request_values(bottle.request)
        unknown = sorted(set(values) - set(takes))
        if unknown:
            accepted = ", ".join(sorted(takes)) or "no values"
            raise InvalidArgument(f"Unknown value {quote(unknown[0])}; this route takes {accepted}.")
        kwargs = {name: convert(op.param(name), raw) for name, raw in url_args.items()}
        for http_name, p in takes.items():
            if http_name in values:
                kwargs[p.name] = convert(p, values[http_name])
            elif p.required:
                raise InvalidArgument(f"Missing value {quote(http_name)}: {p.help}")
        result = op.func(core, **kwargs)
        if op.result == "document":
            return bottle.HTTPResponse(result, 200, {"Content-Type": op.content_type})
        return {"message": result} if op.result == "message" else result

    return callback


def add_routes(app: bottle.Bottle, core: Cluster, operations: dict[str, Operation]) -> None:
    for op in operations.values():
        callback = route_callback(op, core)
        for path in op.paths:
            # Only the main path carries the name: bottle's URL builder wants one rule per name.
            name = op.name if path == op.path else None
            app.route(PREFIX + path, method=op.method, callback=callback, name=name, pvc_operation=op)


def route_table(operations: dict[str, Operation]) -> list[tuple[str, str, str]]:
    """(method, path, operation) for every operation route, as `pvc serve --routes` lists them."""
    return [(op.method, PREFIX + path, op.name) for op in operations.values() for path in op.paths]
