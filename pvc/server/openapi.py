"""The OpenAPI 3.1 description of the API, generated from the operation declarations.

Every operation route (:data:`pvc.lib.registry.OPERATIONS`), the general routes of
:mod:`pvc.server.app` and the manual's planned routes are described: paths, methods, values with
their types and choices, the answers and the error statuses of the contract. The shapes of the
objects the reads return are declared here, next to nothing else that spells them: tests check
them against the ``*_object`` functions (a field added there and not here fails), and a test
compares the described routes with the app's routes, so the description cannot drift.

``GET /api/v1/openapi.json`` serves it without authentication, like ``GET /api/v1``: it says
nothing about the cluster (it is the same for every cluster of one pvc version and states what
the README publishes), a client needs it to learn how to authenticate, and it is built once
when the app is made, so serving it costs an unauthenticated client no more than ``GET /api/v1``.

One module on purpose: the schemas, the parameters and the paths are one translation of the
registry, and the test that keeps them equal to the routes reads them as one document.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import bottle

from pvc import __version__
from pvc.lib.config import Settings
from pvc.lib.errors import AuthenticationError, NotImplementedYet
from pvc.lib.registry import FALSE_WORDS, TRUE_WORDS, Operation, Param, load_all
from pvc.server.auth import COOKIE, HEADER, CrossOrigin, Throttled, TokenInQuery
from pvc.server.errors import ACTION_FAILED, ALWAYS, READ_STATUS, dumps
from pvc.server.routes import PREFIX

OPENAPI_PATH = PREFIX + "/openapi.json"
OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """A closed object: every property present, no other (so a field added to an ``*_object``
    function without its schema here fails the shape tests and the fuzzing)."""
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": list(properties),
                           "additionalProperties": False}
    if description:
        out["description"] = description
    return out


STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STR_N = {"type": ["string", "null"]}
INT_N = {"type": ["integer", "null"]}
NUM_N = {"type": ["number", "null"]}
STR_LIST = {"type": "array", "items": STR}

#: The objects of the reads, as :func:`pvc.lib.node_records.node_object`,
#: :func:`pvc.lib.vm_records.vm_object`, :func:`pvc.lib.ops.network.network_object`,
#: :func:`pvc.lib.ops.lease.lease_object`, ``pvc.lib.ops.acl._acl_object`` and
#: :mod:`pvc.lib.ceph_records` (``osd_object``, ``pool_object``, ``volume_object``) build them.
OBJECT_SCHEMAS: dict[str, dict[str, Any]] = {
    "Node": _obj({
        "name": STR,
        "daemon_state": STR_N,
        "coordinator_state": STR_N,
        "domain_state": STR_N,
        "cpu_count": INT_N,
        "kernel": STR_N,
        "os": STR_N,
        "arch": STR_N,
        "load": NUM_N,
        "domains_count": INT_N,
        "running_domains": STR_LIST,
        "vcpu": _obj({"total": INT_N, "allocated": INT_N}),
        "memory": _obj({"total": INT_N, "allocated": INT_N, "used": INT_N, "free": INT_N}, "MiB."),
        "problem": STR_N,
    }, "A node in the original's shape; missing values are null."),
    "Vm": _obj({
        "name": STR,
        "uuid": STR,
        "state": STR_N,
        "node": STR_N,
        "last_node": STR,
        "migrated": STR,
        "failed_reason": STR,
        "description": STR_N,
        "memory": {**NUM_N, "description": "MiB, whatever unit the XML uses."},
        "vcpu": INT_N,
        "vcpu_topology": {**STR_N, "description": "sockets/cores/threads"},
        "networks": {"type": "array", "items": _obj({"type": STR_N, "mac": STR_N, "source": STR_N, "model": STR_N})},
        "type": STR_N,
        "arch": STR_N,
        "machine": STR_N,
        "console": STR_N,
        "emulator": STR_N,
        "features": STR_LIST,
        "disks": {"type": "array", "items": _obj({"type": STR_N, "name": STR_N, "dev": STR_N, "bus": STR_N})},
        "controllers": {"type": "array", "items": _obj({"type": STR_N, "model": STR_N})},
        "xml": STR_N,
    }, "A VM in the original's shape; parts missing from its XML are null or []."),
    "Network": _obj({
        "vni": {"type": ["integer", "string"], "description": "A number (text only in a tree written by other tools)."},
        "description": STR_N,
        "type": STR_N,
        "domain": STR_N,
        "ip4": _obj({"network": STR_N, "gateway": STR_N, "dhcp_flag": BOOL, "dhcp_start": STR_N, "dhcp_end": STR_N}),
        "ip6": _obj({"network": STR_N, "gateway": STR_N, "dhcp_flag": BOOL}),
    }, "A virtual network in the original's shape; unset values are null."),
    "Lease": _obj({
        "mac_address": STR,
        "ip4_address": STR_N,
        "hostname": STR_N,
        "timestamp": {**INT_N, "description": "Expiry of a dynamic lease (epoch seconds, 0: never); null for a "
                                               "static reservation."},
        "static": BOOL,
    }, "A DHCP lease or static reservation."),
    "Acl": _obj({
        "description": STR,
        "direction": {"type": "string", "enum": ["in", "out"]},
        "order": INT_N,
        "rule": STR_N,
    }, "A firewall rule of a network."),
    "Osd": _obj({
        "id": INT,
        "node": {**STR_N, "description": "The node the OSD was created on (pvc's; the original kept it in the tree)."},
        "device": {**STR_N, "description": "Its device or file (pvc's, as node)."},
        "stats": {"type": "object", "description": "What its node last published (the original's fields from `ceph "
                                                   "osd dump`, `osd df` and `osd status`); {} before that."},
    }, "A Ceph OSD in the original's shape."),
    "Pool": _obj({
        "name": STR,
        "pgs": {**INT_N, "description": "Its placement groups (pvc's; the original kept them in the tree)."},
        "stats": {"type": "object", "description": "Its `rados df` figures as the primary last published them "
                                                   "(id, size_bytes, num_objects, ...); {} before that."},
    }, "A Ceph RBD pool in the original's shape."),
    "Volume": _obj({
        "name": STR,
        "pool": STR,
        "stats": {"type": "object", "description": "`rbd info --format json` of its last change, with `size` "
                                                   "humanised as the original did (10G, 1024M)."},
    }, "A Ceph RBD volume in the original's shape."),
}

#: The original's snapshot "object": a string.
SNAPSHOT = {"type": "string", "pattern": "^[^/@]+/[^/@]+@[^/@]+$", "description": "pool/volume@snapshot"}
CEPH_FIGURES = _obj({"ceph_data": STR, "primary_node": STR_N, "type": {"type": "string", "enum": ["status", "utilization"]}},
                    "The text the primary coordinator published: `ceph status` or `rados df`.")
OSD_FLAG = {"type": ["integer", "null"], "enum": [0, 1, None]}

#: The answer of each read, by operation name: a list of objects, or one small object.
RESULT_SCHEMAS: dict[str, dict[str, Any]] = {
    "node.list": {"type": "array", "items": _ref("Node")},
    "node.info": {"type": "array", "items": _ref("Node"), "minItems": 1, "maxItems": 1},
    "node.daemon-state": _obj({"name": STR, "daemon_state": STR_N}),
    "node.coordinator-state": _obj({"name": STR, "coordinator_state": STR_N}),
    "node.domain-state": _obj({"name": STR, "domain_state": STR_N}),
    "vm.list": {"type": "array", "items": _ref("Vm")},
    "vm.info": {"type": "array", "items": _ref("Vm"), "minItems": 1, "maxItems": 1},
    "vm.state": _obj({"name": STR, "state": STR_N}),
    "vm.node": _obj({"name": STR, "node": STR_N, "last_node": STR}),
    "network.list": {"type": "array", "items": _ref("Network")},
    "network.info": {"type": "array", "items": _ref("Network"), "minItems": 1, "maxItems": 1},
    "network.lease.list": {"type": "array", "items": _ref("Lease")},
    # A MAC address may have both a reservation and a dynamic lease.
    "network.lease.info": {"type": "array", "items": _ref("Lease"), "minItems": 1, "maxItems": 2},
    "network.acl.list": {"type": "array", "items": _ref("Acl")},
    # Without a direction: the rule of that description in each direction.
    "network.acl.info": {"type": "array", "items": _ref("Acl"), "minItems": 1, "maxItems": 2},
    "storage.ceph.status": CEPH_FIGURES,
    "storage.ceph.df": CEPH_FIGURES,
    "storage.ceph.osd.list": {"type": "array", "items": _ref("Osd")},
    "storage.ceph.osd.info": {"type": "array", "items": _ref("Osd"), "minItems": 1, "maxItems": 1},
    "storage.ceph.osd.state": _obj({"id": INT, "in": OSD_FLAG, "up": OSD_FLAG}),
    "storage.ceph.pool.list": {"type": "array", "items": _ref("Pool")},
    "storage.ceph.pool.info": {"type": "array", "items": _ref("Pool"), "minItems": 1, "maxItems": 1},
    "storage.ceph.volume.list": {"type": "array", "items": _ref("Volume")},
    "storage.ceph.volume.info": {"type": "array", "items": _ref("Volume"), "minItems": 1, "maxItems": 1},
    "storage.ceph.volume.snapshot.list": {"type": "array", "items": SNAPSHOT},
    "storage.ceph.volume.snapshot.info": {"type": "array", "items": SNAPSHOT, "minItems": 1, "maxItems": 1},
}

ERROR_SCHEMA = _obj({
    "message": STR,
    "error": {**STR, "description": "The kind of error (invalid_argument, not_found, ...)."},
    "status": {**INT, "description": "The HTTP status, repeated."},
}, "Every error answer.")
MESSAGE_SCHEMA = {"type": "object", "properties": {"message": STR}, "required": ["message"]}

ERROR_TEXT = {
    400: "A value of the query is invalid (a name, a `limit` regex, a choice); at login, a token in the query "
         "string.",
    401: "Authentication required or failed.",
    CrossOrigin.status: "A write authenticated by a session cookie alone (or a login or logout) from another origin.",
    Throttled.status: "Too many failed authentications from this client address; Retry-After says when to try again.",
    404: "The object does not exist.",
    409: "The cluster has no root tree yet (`pvc init`), or the object is in the way.",
    500: "A bug; the server's log has the traceback.",
    501: "Not implemented (the manual's \"todo v0.6\").",
    503: "The store cannot be reached.",
    504: "A wait passed its deadline.",
    ACTION_FAILED: "The action failed (a bad or missing value, an unknown object, a wrong state, ...); "
                   "nothing was changed.",
}

VALUES_NOTE = ("Values may be given as a form body (`application/x-www-form-urlencoded` or "
               "`multipart/form-data`), as a JSON object body, or in the query string; a value the "
               "operation does not take is refused.")
FLAG_NOTE = f"True: {', '.join(repr(w) for w in TRUE_WORDS)}; false: {', '.join(FALSE_WORDS)}."


def _settings(core_or_settings: Any) -> Settings:
    return core_or_settings if isinstance(core_or_settings, Settings) else core_or_settings.settings


def openapi_path(path: str) -> str:
    """A Bottle rule (``/node/<node>``) as an OpenAPI path template (``/node/{node}``)."""
    return re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", path)


def value_schema(param: Param) -> dict[str, Any]:
    """The JSON schema of one value of an operation, from its kind and choices."""
    if param.kind == "choice":
        return {"type": "string", "enum": list(param.choices)}
    if param.kind == "int":
        return {"type": "integer"}
    if param.kind == "float":
        return {"type": "number"}
    if param.kind == "flag":
        return {"type": "boolean"}
    return {"type": "string"}


#: A name in a path: what pvc.lib.schema.validate_name allows at the least (a value that cannot
#: be a path segment would reach another route).
PATH_NAME = {"type": "string", "minLength": 1, "pattern": "^[^/]+$", "not": {"enum": [".", ".."]}}


def _describe(param: Param) -> str:
    text = param.help
    if param.kind == "flag":
        text += f" {FLAG_NOTE}"
    return text


def _errors(statuses: list[int]) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in sorted(set(statuses))}


def _auth_statuses(mutating: bool, auth: bool) -> list[int]:
    """What authentication can answer on a protected route: 401, 429 once a client address has
    failed too often (even with a right token), 403 for a cross-origin write (with a cookie alone,
    or with authentication disabled)."""
    if not auth:
        return [CrossOrigin.status] if mutating else []
    return [ALWAYS[AuthenticationError], Throttled.status] + ([CrossOrigin.status] if mutating else [])


def _statuses(mutating: bool, auth: bool) -> list[int]:
    """The error statuses any operation route can give: from the tables of pvc.server.errors."""
    planned = ALWAYS.get(NotImplementedYet)
    always = [s for cls, s in ALWAYS.items() if s != planned and cls is not AuthenticationError]
    reads = [ACTION_FAILED] if mutating else list(READ_STATUS.values())
    return always + reads + _auth_statuses(mutating, auth) + [500]


def _request_body(params: list[Param]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {p.http_name: {**value_schema(p), "description": _describe(p)} for p in params},
        "additionalProperties": False,
    }
    required = [p.http_name for p in params if p.required]
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {FORM: {"schema": schema}, JSON: {"schema": schema}}}


def operation_object(op: Operation, path: str, auth: bool, alias: int = 0) -> dict[str, Any]:
    """The OpenAPI operation object of ``op`` on one of its paths."""
    help_text = op.help
    body = help_text.split("\n", 1)[1].strip() if "\n" in help_text else ""
    values = [p for p in op.params if p.name not in op.path_params]
    out: dict[str, Any] = {
        "operationId": op.name if not alias else f"{op.name}.{alias + 1}",
        "summary": op.summary,
        "tags": [op.group[0]] if op.group else [],
        "x-pvc-operation": op.name,
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "description": op.param(name).help,
         "schema": PATH_NAME if op.param(name).kind == "str" else value_schema(op.param(name))}
        for name in re.findall(r"<(\w+)", path)
    ]
    if op.mutating:
        if values:
            out["requestBody"] = _request_body(values)
            body = f"{body}\n\n{VALUES_NOTE}".strip()
    else:
        parameters += [{"name": p.http_name, "in": "query", "required": p.required, "description": _describe(p),
                        "schema": value_schema(p)} for p in values]
    if body:
        out["description"] = body
    if parameters:
        out["parameters"] = parameters
    if op.result == "message":
        ok = {"description": "Done.", "content": {JSON: {"schema": _ref("Message")}}}
    elif op.result == "document":
        ok = {"description": "The document.", "content": {op.content_type: {"schema": {"type": "string"}}}}
    else:
        schema = RESULT_SCHEMAS.get(op.name) or ({"type": "array"} if op.result == "list" else {"type": "object"})
        ok = {"description": "The data.", "content": {JSON: {"schema": schema}}}
    out["responses"] = {"200": ok, **_errors(_statuses(op.mutating, auth))}
    return out


def _general(auth: bool) -> dict[str, dict[str, Any]]:
    """The routes of pvc.server.app that are not operations: (path → method → operation)."""
    from pvc.server.app import PLANNED, ROOT_STATUS  # app imports this module

    public: dict[str, Any] = {"security": []} if auth else {}
    message = {"content": {JSON: {"schema": _ref("Message")}}}
    disabled = "Authentication is disabled (a message says so)." if not auth else None
    token_body = {
        "required": True,
        "content": {media: {"schema": {"type": "object", "properties": {"token": {
            "type": "string", "description": "One of the configured tokens."}}, "required": ["token"],
            "additionalProperties": False}} for media in (FORM, JSON)},
    }
    paths: dict[str, dict[str, Any]] = {
        PREFIX: {"get": {
            "operationId": "root", "summary": "The API's name and version.", "tags": ["general"], **public,
            "responses": {ROOT_STATUS.split()[0]: {"description": "PVC API version 1.", "content": {JSON: {"schema": {
                "type": "object", "properties": {"message": STR, "version": STR}, "required": ["message", "version"],
                "additionalProperties": False}}}}, **_errors([500])},
        }},
        OPENAPI_PATH: {"get": {
            "operationId": "openapi", "summary": "This description of the API (OpenAPI 3.1).", "tags": ["general"],
            **public,
            "responses": {"200": {"description": "The OpenAPI document.", "content": {JSON: {"schema": {
                "type": "object"}}}}, **_errors([500])},
        }},
        PREFIX + "/auth/login": {
            "get": {
                "operationId": "auth.login-form", "summary": "A small login form.", "tags": ["auth"], **public,
                "responses": {"200": {
                    "description": disabled or "The login form (HTML).",
                    "content": {"text/html": {"schema": STR}} if auth else message["content"],
                }, **_errors([500])},
            },
            "post": {
                "operationId": "auth.login", "tags": ["auth"], **public,
                "summary": "Log in with a token: the answer sets a signed, HttpOnly session cookie.",
                **({"requestBody": token_body} if auth else {}),
                "responses": {"200": {"description": disabled or "Logged in; the cookie is set.", **message},
                              **_errors([TokenInQuery.status, ACTION_FAILED, 500] + _auth_statuses(True, auth)
                                        if auth else [500])},
            },
        },
        PREFIX + "/auth/logout": {
            method: {
                "operationId": f"auth.logout{'' if method == 'get' else '-post'}", "tags": ["auth"], **public,
                "summary": "End the session of the cookie sent, and clear the cookie.",
                "responses": {"200": {"description": disabled or "Logged out.", **message},
                              **_errors([500] + ([CrossOrigin.status] if auth and method == "post" else []))},
            } for method in ("get", "post")
        },
    }
    for (method, path), text in PLANNED.items():
        params = [{"name": name, "in": "path", "required": True, "schema": PATH_NAME}
                  for name in re.findall(r"<(\w+)", path)]
        paths.setdefault(PREFIX + openapi_path(path), {})[method.lower()] = {
            "operationId": f"planned.{method.lower()}{openapi_path(path).replace('/', '.')}",
            "summary": "Planned by the manual; not implemented.", "description": text, "tags": ["planned"],
            "parameters": params,
            "responses": _errors([ALWAYS[NotImplementedYet], 500] + _auth_statuses(method != "GET", auth)),
        }
    return paths


def openapi_document(core_or_settings: Any) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API served for a cluster (its core) or settings."""
    auth = _settings(core_or_settings).auth_enabled
    paths: dict[str, dict[str, Any]] = _general(auth)
    for op in load_all().values():
        for i, path in enumerate(op.paths):
            item = paths.setdefault(PREFIX + openapi_path(path), {})
            item[op.method.lower()] = operation_object(op, path, auth, i)
    statuses = sorted(set(ERROR_TEXT) & {int(s) for item in paths.values() for o in item.values()
                                          for s in o["responses"]})
    components: dict[str, Any] = {
        "schemas": {**OBJECT_SCHEMAS, "Message": MESSAGE_SCHEMA, "Error": ERROR_SCHEMA},
        "responses": {f"E{s}": {"description": ERROR_TEXT[s], "content": {JSON: {"schema": _ref("Error")}}}
                      for s in statuses},
    }
    if Throttled.status in statuses:
        components["responses"][f"E{Throttled.status}"]["headers"] = {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}}
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "PVC API",
            "version": __version__,
            "description": inspect.cleandoc("""
                The HTTP API of pvc, the management layer of a PVC hypervisor cluster. Reads are GET
                with their values in the query string and answer JSON data (lists sorted by name,
                `[]` when nothing matches; element reads an array of one, or 404). Actions are
                POST, PUT and DELETE with their values in a form or JSON body (or the query
                string) and answer 200 `{"message": ...}`, or 510 when they fail for any reason,
                having changed nothing. Every error is JSON `{"message", "error", "status"}`.
                `limit` is the original's fuzzy regex: a substring match unless it starts with
                `^` or contains `$`."""),
        },
        "paths": dict(sorted(paths.items())),
        "components": components,
    }
    if auth:
        components["securitySchemes"] = {
            "api_key": {"type": "apiKey", "in": "header", "name": HEADER,
                        "description": "One of the configured tokens, on any route."},
            "session": {"type": "apiKey", "in": "cookie", "name": COOKIE,
                        "description": f"The session cookie set by POST {PREFIX}/auth/login."},
        }
        document["security"] = [{"api_key": []}, {"session": []}]
    return document


def add_openapi_route(app: bottle.Bottle, core: Any) -> None:
    """Serve the document at GET /api/v1/openapi.json, without authentication (see above)."""
    settings = _settings(core)
    body = dumps(openapi_document(settings), settings.debug)

    def openapi() -> bottle.HTTPResponse:
        return bottle.HTTPResponse(body, 200, {"Content-Type": JSON})

    app.route(OPENAPI_PATH, method="GET", callback=openapi, name="openapi", pvc_public=True)
