"""The OpenAPI document (pvc/server/openapi.py): valid OpenAPI 3.1, the same routes as the app, the
object shapes of the *_object functions, and served at /api/v1/openapi.json without a token."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from pvc.lib import schema
from pvc.lib.ceph_records import Volume, osd_object, pool_object, volume_object
from pvc.lib.config import Settings, Token
from pvc.lib.core import Cluster
from pvc.lib.node_records import node_object
from pvc.lib.ops.acl import _acl_object, add_acl
from pvc.lib.ops.lease import add_lease, lease_object
from pvc.lib.ops.network import add_network, network_object
from pvc.lib.registry import load_all
from pvc.lib.schema import NODE_FIELDS
from pvc.lib.store import Entry
from pvc.lib.vm_records import Vm, vm_object
from pvc.server.app import create_app
from pvc.server.openapi import OBJECT_SCHEMAS, OPENAPI_PATH, RESULT_SCHEMAS, add_openapi_route, openapi_document
from pvc.server.routes import route_table
from tests.vm_fixtures import minimal_xml, new_uuid, pretty_xml, vm_xml
from tests.wsgi import Client

TOKEN = "openapi-token-1"


def auth_settings(tmp_path: Any) -> Settings:
    return Settings(store_path=str(tmp_path / "pvc.sqlite"), auth_enabled=True, tokens=(Token(TOKEN),))


def spec_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def app_routes(app: Any) -> set[tuple[str, str]]:
    return {(r.method, re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", r.rule)) for r in app.routes}


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of ``schema`` whose $refs resolve in ``document``'s components."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


@pytest.mark.parametrize("auth", [False, True], ids=["open", "auth"])
def test_the_document_is_valid_openapi(auth: bool) -> None:
    document = openapi_document(Settings(auth_enabled=auth, tokens=(Token(TOKEN),) if auth else ()))
    validate(document)  # openapi-spec-validator: raises on any error
    assert document["openapi"].startswith("3.1")
    assert ("securitySchemes" in document["components"]) is auth
    if auth:
        schemes = document["components"]["securitySchemes"]
        assert schemes["api_key"] == {**schemes["api_key"], "type": "apiKey", "in": "header", "name": "X-Api-Key"}
        assert schemes["session"]["in"] == "cookie"
        public = {(m.upper(), p) for p, item in document["paths"].items() for m, o in item.items()
                  if o.get("security") == []}
        assert public == {("GET", "/api/v1"), ("GET", OPENAPI_PATH), ("GET", "/api/v1/auth/login"),
                          ("POST", "/api/v1/auth/login"), ("GET", "/api/v1/auth/logout"),
                          ("POST", "/api/v1/auth/logout")}


def test_the_document_has_exactly_the_routes_of_the_app(tmp_path: Any) -> None:
    """The spec cannot drift from the routes: every route of the app is described, nothing more."""
    core = Cluster(Settings(store_path=str(tmp_path / "pvc.sqlite")))
    try:
        app = create_app(core)
        if ("GET", OPENAPI_PATH) not in app_routes(app):  # until create_app adds it itself
            add_openapi_route(app, core)
        document = openapi_document(core)
        assert spec_routes(document) == app_routes(app)
    finally:
        core.close()
    operations = load_all()
    described = {o["x-pvc-operation"]: (m.upper(), p) for p, item in document["paths"].items()
                 for m, o in item.items() if "x-pvc-operation" in o}
    assert set(described) == {op.name for op in operations.values() if op.path}
    table = {(m, re.sub(r"<(\w+)>", r"{\1}", p)) for m, p, _ in route_table(operations)}
    assert table <= spec_routes(document)


def test_every_value_is_described_with_its_type_and_choices() -> None:
    document = openapi_document(Settings())
    for op in load_all().values():
        for path in op.paths:
            o = document["paths"]["/api/v1" + re.sub(r"<(\w+)>", r"{\1}", path)][op.method.lower()]
            assert o["summary"] == op.summary and o["summary"]
            params = {p["name"]: p for p in o.get("parameters", [])}
            body = o.get("requestBody", {}).get("content", {})
            if body:
                assert body["application/x-www-form-urlencoded"] == body["application/json"]
                props = body["application/json"]["schema"]["properties"]
                required = set(body["application/json"]["schema"].get("required", []))
                assert body["application/json"]["schema"]["additionalProperties"] is False
                assert "query string" in o["description"]
            else:
                props, required = {}, set()
            for p in op.params:
                if p.name in op.path_params:
                    assert params[p.name]["in"] == "path" and params[p.name]["required"]
                    continue
                if op.mutating:
                    schema = props[p.http_name]
                    assert (p.http_name in required) == p.required
                else:
                    assert params[p.http_name]["in"] == "query"
                    assert params[p.http_name]["required"] == p.required
                    schema = params[p.http_name]["schema"]
                expected = {"str": "string", "int": "integer", "float": "number", "flag": "boolean",
                            "choice": "string"}[p.kind]
                assert schema["type"] == expected, (op.name, p.name)
                assert schema.get("enum") == (list(p.choices) if p.kind == "choice" else None)
            # Every error status of the contract, as the error shape.
            codes = set(o["responses"])
            assert codes >= ({"510", "503", "500"} if op.mutating else {"400", "404", "409", "503", "500"})
            assert "401" not in codes  # authentication is off in these settings
    assert openapi_document(Settings(auth_enabled=True, tokens=(Token(TOKEN),)))["paths"]["/api/v1/node"]["get"][
        "responses"]["401"] == {"$ref": "#/components/responses/E401"}


def test_every_read_has_a_declared_answer() -> None:
    reads = {op.name for op in load_all().values() if op.path and op.result in ("list", "object")}
    assert set(RESULT_SCHEMAS) == reads


# --- the object shapes are those of the *_object functions ----------------------------------------


def _node_values() -> dict[str, str]:
    values = {f: "1" for f in NODE_FIELDS}
    values.update(daemonstate="run", routerstate="primary", domainstate="ready", staticdata="8 6.1.0 GNU/Linux x86_64",
                  cpuload="0.5", runningdomains="a b", problem="no hypervisor")
    return values


def _vm(xml: str | None, **fields: str) -> Vm:
    entries = {f: Entry(v, 0) for f, v in fields.items()}
    if xml is not None:
        entries["xml"] = Entry(xml, 0)
    return Vm(new_uuid(), "web1", entries)


SAMPLES: dict[str, list[Any]] = {
    "Node": [node_object("hv1", _node_values()), node_object("hv1", {}),
             node_object("hv1", {"staticdata": "x y", "cpuload": "bad", "memtotal": "nope"})],
    "Vm": [vm_object(_vm(vm_xml("web1", new_uuid()), state="start", node="hv1", lastnode="hv2", failedreason="x")),
           vm_object(_vm(pretty_xml("web1", new_uuid()))), vm_object(_vm(minimal_xml("web1", new_uuid()))),
           vm_object(_vm(vm_xml("web1", new_uuid(), memory="1536", unit="KiB"))),
           vm_object(_vm("<not xml")), vm_object(_vm(None))],
    "Network": [network_object("100", {"": "mgmt", "nettype": "managed", "domain": "x.local", "ip4_network": "10.0.0.0/24",
                                       "ip4_gateway": "10.0.0.1", "dhcp4_flag": "True", "dhcp4_start": "10.0.0.10",
                                       "dhcp4_end": "10.0.0.20", "ip6_network": "None", "ip6_gateway": "None",
                                       "dhcp6_flag": "False"}),
                network_object("7", {}), network_object("odd", {"": "x"})],
    "Lease": [lease_object("52:54:00:00:00:01", {"ipaddr": "10.0.0.5", "hostname": "h", "expiry": "1700000000"}, False),
              lease_object("52:54:00:00:00:01", {}, True), lease_object("52:54:00:00:00:01", {"expiry": "x"}, False)],
    "Acl": [_acl_object("in", "ssh", {"order": Entry("0", 1), "rule": Entry("tcp dport 22 accept", 0)}),
            _acl_object("out", "x", {}), _acl_object("in", "y", {"order": Entry("bad", 0), "rule": None})],
    "Osd": [osd_object("0", {"node": "hv1", "device": "/dev/sdb", "stats": '{"up": 1, "in": 1, "pgs": 64}'}),
            osd_object("12", {}), osd_object("3", {"stats": "not json"})],
    "Pool": [pool_object("vms", {"pgs": "128", "stats": '{"id": 1, "size_bytes": 0}'}), pool_object("p", {}),
             pool_object("p", {"pgs": "x", "stats": "[1]"})],
    "Volume": [volume_object(Volume("vms", "v"), '{"size": 1073741824, "format": 2}'), volume_object(Volume("p", "v"), None)],
}


@pytest.mark.parametrize("name", sorted(OBJECT_SCHEMAS))
def test_object_schemas_match_the_object_functions(name: str) -> None:
    document = openapi_document(Settings())
    check = validator(document, {"$ref": f"#/components/schemas/{name}"})
    for sample in SAMPLES[name]:
        errors = sorted(check.iter_errors(sample), key=str)
        assert not errors, (name, sample, [e.message for e in errors])
    # Closed objects: a field added to the function and not to the schema is refused.
    assert list(check.iter_errors({**SAMPLES[name][0], "surprise": 1}))


def test_real_answers_match_the_declared_schemas(nodes: Cluster) -> None:
    """Every read of a populated cluster, through the app, answers in its declared shape."""
    core = nodes
    from pvc.lib.ops.vm import define_vm

    define_vm(core, vm_xml("web1", new_uuid()), node="hv1")
    add_network(core, 100, "mgmt", "managed", ip4_network="10.0.0.0/24", ip4_gateway="10.0.0.1", dhcp4=True,
                dhcp4_start="10.0.0.100", dhcp4_end="10.0.0.199")
    add_lease(core, "100", "52:54:00:00:00:01", "10.0.0.5", "h1")
    add_acl(core, "100", "ssh", "in", "tcp dport 22 accept")
    from tests.test_ops_storage import seed

    seed(core)  # OSDs, pools, volumes and snapshots as the agents write them, and the primary's figures
    core.store.write({schema.CEPH: "health: HEALTH_OK", schema.CEPH_RADOSDF: "POOL_NAME USED", schema.PRIMARY_NODE: "hv1"})
    client = Client(create_app(core))
    document = openapi_document(core)
    values = {"node": "hv1", "vm": "web1", "network": "100", "lease": "52:54:00:00:00:01", "acl": "ssh", "osd": "0",
              "pool": "vms", "volume": "web1_disk0", "snapshot": "snap1"}
    seen = 0
    for path, item in document["paths"].items():
        if "get" not in item or path in ("/api/v1", OPENAPI_PATH) or "/auth/" in path:
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        r = client.request("GET", url)
        assert r.status == 200, (url, r.body)
        content = item["get"]["responses"]["200"]["content"]
        if "application/json" not in content:
            assert r.headers["Content-Type"].split(";")[0] in content
            continue
        body = r.json()
        assert body, url
        errors = list(validator(document, content["application/json"]["schema"]).iter_errors(body))
        assert not errors, (url, [e.message for e in errors])
        seen += 1
    assert seen >= 25
    # An error answer is the error shape.
    r = client.request("GET", "/api/v1/node/nope")
    error = document["components"]["responses"]["E404"]["content"]["application/json"]["schema"]
    assert r.status == 404 and not list(validator(document, error).iter_errors(r.json()))


# --- served -------------------------------------------------------------------------------------


def test_served_without_a_token(tmp_path: Any) -> None:
    core = Cluster(auth_settings(tmp_path))
    try:
        app = create_app(core)
        if ("GET", OPENAPI_PATH) not in app_routes(app):
            add_openapi_route(app, core)
        client = Client(app)
        r = client.request("GET", OPENAPI_PATH)
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert r.json() == openapi_document(core)
        assert "securitySchemes" in r.json()["components"]
        # The other routes are still protected.
        assert client.request("GET", "/api/v1/node").status == 401
        assert client.request("GET", "/api/v1/node", headers={"X-Api-Key": TOKEN}).status == 200
        assert client.request("POST", OPENAPI_PATH).status == 405
    finally:
        core.close()
