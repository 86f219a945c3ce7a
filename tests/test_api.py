"""The HTTP contract of `pvc serve`, in process (DESIGN.md "HTTP contract", api-manual.md).

Every test that touches the store runs on both engines through the ``client``/``core`` fixtures.
A few tests mount extra, unregistered operations on the real app (``add_routes`` with a test
Operation) to drive every error class and the flag rules through the real request pipeline.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Callable, Iterator

import bottle
import pytest

from pvc.lib import errors as pvc_errors
from pvc.lib import schema
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import PvcError
from pvc.lib.node_reports import report_domain_state
from pvc.lib.registry import Operation, Param
from pvc.server.app import create_app
from pvc.server.errors import error_body, status_for
from pvc.server.routes import add_routes
from pvc.server.values import MAX_BODY
from tests.wsgi import Client, Response
from tests.zkserver import free_port

API = "/api/v1"
NODE_KEYS = {
    "name", "daemon_state", "coordinator_state", "domain_state", "cpu_count", "kernel", "os", "arch", "load",
    "domains_count", "running_domains", "vcpu", "memory", "problem",
}


# --- helpers ------------------------------------------------------------------------------------


def multipart(values: dict[str, str], as_file: bool = False) -> tuple[bytes, str]:
    """A multipart/form-data body (as `curl -F name=value`, or `-F name=@file` with ``as_file``)."""
    boundary = "pvc-test-" + uuid.uuid4().hex
    parts = []
    for name, value in values.items():
        filename = f'; filename="{name}.txt"' if as_file else ""
        ctype = "Content-Type: text/plain\r\n" if as_file else ""
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n{ctype}\r\n{value}\r\n')
    body = "".join(parts) + f"--{boundary}--\r\n"
    return body.encode("utf-8"), f"multipart/form-data; boundary={boundary}"


HOW = ("query", "form", "multipart", "multipart-file", "json")


def send(client: Client, method: str, path: str, values: dict[str, Any], how: str, **kw: Any) -> Response:
    """Send ``values`` the way ``how`` says: query string, urlencoded form, multipart, JSON."""
    if how == "query":
        return client.request(method, path, query=values, **kw)
    if how == "form":
        return client.request(method, path, data=values, **kw)
    if how in ("multipart", "multipart-file"):
        body, ctype = multipart(values, as_file=how == "multipart-file")
        return client.request(method, path, body=body, content_type=ctype, **kw)
    if how == "json":
        return client.request(method, path, json=values, **kw)
    raise AssertionError(how)


def assert_error(r: Response, status: int, kind: str, *fragments: str) -> dict[str, Any]:
    """An error answer: the status, JSON, exactly {message, error, status}, message containing fragments."""
    assert r.status == status, (r.status, r.body)
    body = r.json()
    assert set(body) == {"message", "error", "status"}, body
    assert body["status"] == status and body["error"] == kind, body
    assert isinstance(body["message"], str) and body["message"], body
    for fragment in fragments:
        assert fragment in body["message"], body
    return body


def names(r: Response) -> list[str]:
    assert r.status == 200, (r.status, r.body)
    data = r.json()
    assert isinstance(data, list)
    return [n["name"] for n in data]


def value_of(core: Cluster, path: str) -> str | None:
    entry = core.store.get_many([path])[path]
    return None if entry is None else entry.value


@pytest.fixture
def plain_core(tmp_path: Any) -> Iterator[Cluster]:
    """An embedded cluster for tests whose routes do not touch the store."""
    cluster = Cluster(Settings(store_path=str(tmp_path / "plain.sqlite")))
    yield cluster
    cluster.close()


def op(name: str, method: str, path: str, func: Callable[..., Any], result: str, params: dict[str, Param]) -> Operation:
    """An unregistered operation (the global registry is left alone) for add_routes."""
    built = tuple(
        Param(p.help, kind=p.kind, choices=p.choices, http=p.http, name=n, required=p.default is None and p.kind != "flag",
              default=p.default)
        for n, p in params.items()
    )
    return Operation(name=name, group=("test",), verb=name, method=method, path=path, func=func, params=built, result=result)


# --- general ------------------------------------------------------------------------------------


def test_root_answers_209_json(client: Client) -> None:
    r = client.get(API)
    assert r.status == 209
    assert r.json()["message"] == "PVC API version 1"


def test_unknown_routes_are_404_json(client: Client) -> None:
    for path in ("/", "/nope", API + "/nope", API + "/node/hv1/nope", API + "/node/a/b/c", "/api/v2/node"):
        for method in ("GET", "POST"):
            r = client.request(method, path)
            assert_error(r, 404, "http", "Not found")
            assert r.headers["Content-Type"].startswith("application/json")
            assert b"<html" not in r.body.lower()


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("DELETE", API + "/node", {"GET"}),
        ("POST", API + "/node", {"GET"}),
        ("PUT", API + "/node/hv1", {"GET"}),
        ("DELETE", API + "/node/hv1/coordinator-state", {"GET", "POST"}),
        ("PUT", API + "/node/hv1/domain-state", {"GET", "POST"}),
        ("POST", API + "/node/hv1/daemon-state", {"GET"}),
        ("POST", API, {"GET"}),
        ("PUT", API + "/auth/login", {"GET", "POST"}),
    ],
)
def test_wrong_method_is_405_json(client: Client, method: str, path: str, allowed: set[str]) -> None:
    r = client.request(method, path)
    assert_error(r, 405, "http", method)
    assert b"<html" not in r.body.lower()
    assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}


# --- node lists ---------------------------------------------------------------------------------


def test_empty_node_list_is_empty_array(client: Client) -> None:
    r = client.get(API + "/node")
    assert r.status == 200
    assert r.json() == []


def test_node_list_is_sorted_with_the_original_shape(client: Client, add_node: Callable[..., str]) -> None:
    for n in ("hv2", "hv10", "hv1", "a-node"):
        add_node(n, coordinator=n == "hv1", memalloc=2048, vcpualloc=3, cpuload=0.5)
    r = client.get(API + "/node")
    assert names(r) == ["a-node", "hv1", "hv10", "hv2"]
    hv1 = r.json()[1]
    assert set(hv1) == NODE_KEYS
    assert hv1["name"] == "hv1"
    assert (hv1["daemon_state"], hv1["coordinator_state"], hv1["domain_state"]) == ("run", "secondary", "ready")
    assert r.json()[0]["coordinator_state"] == "client"
    assert (hv1["cpu_count"], hv1["kernel"], hv1["os"], hv1["arch"]) == (8, "6.1.0-amd64", "GNU/Linux", "x86_64")
    assert hv1["memory"] == {"total": 32000, "used": 8000, "free": 24000, "allocated": 2048}
    assert hv1["vcpu"] == {"total": 8, "allocated": 3}
    assert hv1["load"] == 0.5 and hv1["domains_count"] == 0 and hv1["running_domains"] == []


@pytest.mark.parametrize(
    "limit,expected",
    [
        ("hv1", ["hv1", "hv10"]),  # substring
        ("v1", ["hv1", "hv10"]),
        ("^hv", ["hv1", "hv10", "hv2"]),  # prefix
        ("^hv1$", ["hv1"]),  # exact
        ("1$", ["hv1", "node1"]),  # suffix
        ("h.1", ["hv1", "hv10"]),  # regex metacharacters are live
        ("^v1", []),
        ("nothing", []),
        ("", ["hv1", "hv10", "hv2", "node1"]),
    ],
)
def test_node_list_limit_is_the_fuzzy_regex(client: Client, add_node: Callable[..., str], limit: str,
                                            expected: list[str]) -> None:
    for n in ("hv10", "node1", "hv2", "hv1"):
        add_node(n)
    assert names(client.get(API + "/node", query={"limit": limit})) == expected


def test_limit_may_come_from_a_json_body_on_get(client: Client, add_node: Callable[..., str]) -> None:
    add_node("hv1")
    add_node("other")
    assert names(client.get(API + "/node", json={"limit": "^hv"})) == ["hv1"]


@pytest.mark.parametrize("limit", ["(", "[a-", "*x", "hv1)"])
def test_invalid_limit_regex_is_400(client: Client, add_node: Callable[..., str], limit: str) -> None:
    add_node("hv1")
    assert_error(client.get(API + "/node", query={"limit": limit}), 400, "invalid_argument", "Invalid limit")


def test_unknown_value_on_get_is_400(client: Client) -> None:
    assert_error(client.get(API + "/node", query={"limt": "x"}), 400, "invalid_argument", "Unknown value 'limt'")
    assert_error(client.get(API + "/node/hv1", query={"limit": "x"}), 400, "invalid_argument", "Unknown value 'limit'")


# --- node elements ------------------------------------------------------------------------------


def test_node_element_is_an_exact_array_of_one(client: Client, add_node: Callable[..., str]) -> None:
    for n in ("hv1", "hv10", "xhv1"):
        add_node(n)
    r = client.get(API + "/node/hv1")
    assert names(r) == ["hv1"]
    assert set(r.json()[0]) == NODE_KEYS
    assert names(client.get(API + "/node/hv10")) == ["hv10"]


@pytest.mark.parametrize("name", ["hv", "v1", "hv1$", "^hv1$", "h.1", "nope", "HV1"])
def test_node_element_is_not_fuzzy(client: Client, add_node: Callable[..., str], name: str) -> None:
    add_node("hv1")
    assert_error(client.get(f"{API}/node/{name}"), 404, "not_found")
    for state in ("daemon-state", "coordinator-state", "domain-state"):
        assert_error(client.get(f"{API}/node/{name}/{state}"), 404, "not_found")


def test_bad_node_names_are_rejected(client: Client) -> None:
    assert_error(client.get(API + "/node/.."), 400, "invalid_argument")
    assert_error(client.post(API + "/node/../domain-state", data={"domain-state": "flush"}), 510, "invalid_argument")


def test_state_gets_answer_one_object(client: Client, add_node: Callable[..., str]) -> None:
    add_node("hv1", coordinator=True)
    add_node("hv2", daemon_state="stop", domain_state="flushed")
    for node, daemon, coordinator, domain in (("hv1", "run", "secondary", "ready"), ("hv2", "stop", "client", "flushed")):
        r = client.get(f"{API}/node/{node}/daemon-state")
        assert (r.status, r.json()) == (200, {"name": node, "daemon_state": daemon})
        r = client.get(f"{API}/node/{node}/coordinator-state")
        assert (r.status, r.json()) == (200, {"name": node, "coordinator_state": coordinator})
        r = client.get(f"{API}/node/{node}/domain-state")
        assert (r.status, r.json()) == (200, {"name": node, "domain_state": domain})


# --- node actions -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
def test_coordinator_state_values_from_every_source(client: Client, core: Cluster, add_node: Callable[..., str],
                                                    how: str) -> None:
    add_node("hv1", coordinator=True)
    path = API + "/node/hv1/coordinator-state"
    r = send(client, "POST", path, {"coordinator-state": "primary"}, how)
    assert (r.status, r.json()) == (200, {"message": "Setting node 'hv1' as the primary coordinator."})
    assert value_of(core, schema.PRIMARY_NODE) == "hv1"
    r = send(client, "POST", path, {"coordinator-state": "primary"}, how)
    assert r.status == 200 and "nothing changed" in r.json()["message"]
    assert value_of(core, schema.PRIMARY_NODE) == "hv1"
    r = send(client, "POST", path, {"coordinator-state": "secondary"}, how)
    assert (r.status, r.json()) == (200, {"message": "Setting node 'hv1' as a secondary coordinator."})
    assert value_of(core, schema.PRIMARY_NODE) == schema.NO_PRIMARY


@pytest.mark.parametrize("how", HOW)
def test_domain_state_values_from_every_source(client: Client, core: Cluster, add_node: Callable[..., str],
                                               how: str) -> None:
    add_node("hv1")
    path = API + "/node/hv1/domain-state"
    key = schema.node_key("hv1", "domainstate")
    r = send(client, "POST", path, {"domain-state": "ready"}, how)
    assert r.status == 200 and "already ready; nothing changed" in r.json()["message"]
    assert value_of(core, key) == "ready"
    r = send(client, "POST", path, {"domain-state": "flush"}, how)
    assert (r.status, r.json()) == (200, {"message": "Flushing node 'hv1' of running VMs."})
    assert value_of(core, key) == "flush"
    assert client.get(path).json() == {"name": "hv1", "domain_state": "flush"}
    report_domain_state(core, "hv1", "flushed")
    r = send(client, "POST", path, {"domain-state": "ready"}, how)
    assert (r.status, r.json()) == (200, {"message": "Restoring node 'hv1' to active service."})
    assert value_of(core, key) == "unflush"


@pytest.mark.parametrize("state", ["coordinator-state", "domain-state"])
@pytest.mark.parametrize("how", HOW)
def test_action_value_errors_are_510(client: Client, core: Cluster, add_node: Callable[..., str], state: str,
                                     how: str) -> None:
    add_node("hv1", coordinator=True)
    path = f"{API}/node/hv1/{state}"
    before = {k: value_of(core, k) for k in (schema.PRIMARY_NODE, schema.node_key("hv1", "domainstate"))}
    if how == "query":  # an empty body: the value is simply missing
        assert_error(client.post(path), 510, "invalid_argument", f"Missing value '{state}'")
    else:
        assert_error(send(client, "POST", path, {"other": "1"}, how), 510, "invalid_argument", "Unknown value 'other'")
    assert_error(send(client, "POST", path, {state: "bogus"}, how), 510, "invalid_argument",
                 f"Invalid value for '{state}'", "'bogus' is not one of")
    # The value's name is the manual's, not the library's parameter name.
    assert_error(send(client, "POST", path, {"state": "flush"}, how), 510, "invalid_argument", "Unknown value 'state'")
    assert_error(send(client, "POST", path, {state: "Primary"}, how), 510, "invalid_argument")
    assert {k: value_of(core, k) for k in before} == before  # nothing was written


def test_missing_value_with_an_empty_body_is_510(client: Client, add_node: Callable[..., str]) -> None:
    add_node("hv1", coordinator=True)
    for state in ("coordinator-state", "domain-state"):
        for kw in ({}, {"data": {}}, {"json": {}}):
            assert_error(client.post(f"{API}/node/hv1/{state}", **kw), 510, "invalid_argument",
                         f"Missing value '{state}'")


def test_coordinator_state_failures_are_510(client: Client, core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1")  # a hypervisor, not a coordinator
    add_node("hv2", coordinator=True, daemon_state="stop")
    data = {"coordinator-state": "primary"}
    assert_error(client.post(API + "/node/hv1/coordinator-state", data=data), 510, "invalid_state", "not a coordinator")
    assert_error(client.post(API + "/node/hv2/coordinator-state", data=data), 510, "invalid_state", "not running")
    assert_error(client.post(API + "/node/nope/coordinator-state", data=data), 510, "not_found", "'nope'")
    assert value_of(core, schema.PRIMARY_NODE) == schema.NO_PRIMARY


def test_domain_state_of_an_unknown_node_is_510(client: Client) -> None:
    assert_error(client.post(API + "/node/nope/domain-state", data={"domain-state": "flush"}), 510, "not_found", "'nope'")


def test_a_value_given_twice_differently_is_refused(client: Client, core: Cluster, add_node: Callable[..., str]) -> None:
    add_node("hv1")
    path = API + "/node/hv1/domain-state"
    r = client.post(path + "?domain-state=flush", data={"domain-state": "ready"})
    assert_error(r, 510, "invalid_argument", "more than once")
    assert value_of(core, schema.node_key("hv1", "domainstate")) == "ready"
    r = client.post(path + "?domain-state=flush", data={"domain-state": "flush"})  # same contents: fine
    assert r.status == 200


@pytest.mark.parametrize(
    "body,fragment",
    [(b"{not json", "not valid JSON"), (b'["domain-state"]', "must be an object"),
     (b'{"domain-state": {"a": 1}}', "must be a string"), (b'{"domain-state": null}', "must be a string")],
)
def test_malformed_json_bodies_are_510(client: Client, add_node: Callable[..., str], body: bytes, fragment: str) -> None:
    add_node("hv1")
    r = client.post(API + "/node/hv1/domain-state", body=body, content_type="application/json")
    assert_error(r, 510, "invalid_argument", fragment)


def _bad_requests() -> list[tuple[str, dict[str, Any], str]]:
    """(name, request keywords, message fragment) of requests whose values cannot be read."""
    part, ctype = multipart({"name": "x"})
    file_part, file_ctype = multipart({"name": "x"}, as_file=True)
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        ("query-%ff", {"path_suffix": "?name=%ff"}, "query string is not valid UTF-8"),
        ("query-key-%ff", {"path_suffix": "?%ff=1"}, "query string is not valid UTF-8"),
        ("form-%ff", {"body": b"name=%ff", "content_type": "application/x-www-form-urlencoded"},
         "form body is not valid UTF-8"),
        ("form-raw-ff", {"body": b"name=\xff", "content_type": "application/x-www-form-urlencoded"},
         "form body is not valid UTF-8"),
        ("json-deep", {"body": deep, "content_type": "application/json"}, "nested too deeply"),
        ("json-deep-value", {"body": b'{"name": ' + deep + b"}", "content_type": "application/json"},
         "nested too deeply"),
        ("multipart-no-boundary", {"body": b"garbage", "content_type": "multipart/form-data"}, "multipart body"),
        ("multipart-garbage", {"body": b"garbage", "content_type": "multipart/form-data; boundary=x"},
         "multipart body"),
        ("multipart-truncated", {"body": part[:-20], "content_type": ctype}, "multipart body"),
        ("multipart-huge-boundary", {"body": part, "content_type": "multipart/form-data; boundary=" + "b" * 70_000},
         "multipart body"),
        ("multipart-charset", {"body": part, "content_type": ctype + "; charset=nonesuch"}, "multipart body"),
        ("multipart-value-ff", {"body": part.replace(b"x\r\n", b"\xff\r\n"), "content_type": ctype},
         "multipart body"),
        ("multipart-name-ff", {"body": part.replace(b'name="name"', b'name="\xff"'), "content_type": ctype},
         "multipart body"),
        ("multipart-file-ff", {"body": file_part.replace(b"x\r\n", b"\xff\r\n"), "content_type": file_ctype},
         "not UTF-8 text"),
    ]


BAD_REQUESTS = _bad_requests()


@pytest.mark.parametrize("name,kw,fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unreadable_values_are_invalid_arguments(raising_client: Client, flag_client: Client, method: str, name: str,
                                                 kw: dict[str, Any], fragment: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Bad UTF-8, JSON nested too deeply, a broken multipart body: 400 on a GET, 510 on an action,
    always JSON, and nothing logged (no traceback)."""
    kw = dict(kw)
    suffix = kw.pop("path_suffix", "")
    client, path = (raising_client, API + "/test-raise") if method == "GET" else (flag_client, API + "/test-flags")
    with caplog.at_level(logging.DEBUG, logger="pvc"):
        r = client.request(method, path + suffix, **kw)
    assert_error(r, 400 if method == "GET" else 510, "invalid_argument", fragment)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING], caplog.text


def test_too_large_body_is_an_invalid_argument(flag_client: Client) -> None:
    r = flag_client.post(API + "/test-flags", body=b"x" * (MAX_BODY + 1), content_type="application/json")
    assert_error(r, 510, "invalid_argument", f"larger than {MAX_BODY} bytes")


@pytest.mark.parametrize("how", HOW)
def test_large_values_from_every_body(flag_client: Client, how: str) -> None:
    """Values larger than Bottle's 100 KiB in-memory default (a VM's XML) are read from every body,
    without create_app changing Bottle's global limits."""
    big = "<domain>" + "é" * 150_000 + "</domain>"
    if how == "query":
        big = big[:2000]
    r = send(flag_client, "POST", API + "/test-flags", {"name": big, "force": "yes"}, how)
    assert (r.status, r.json()) == (200, {"name": big, "force": True})
    assert bottle.BaseRequest.MEMFILE_MAX == 102400


def test_uninitialised_cluster_is_a_clear_error(settings: Settings) -> None:
    if settings.engine == "embedded":  # the embedded store is born initialised
        with Cluster(settings) as cluster:
            assert Client(create_app(cluster)).get(API + "/node").json() == []
        return
    with Cluster(settings) as cluster:  # a fresh chroot without `pvc init`
        r = Client(create_app(cluster)).get(API + "/node")
        body = assert_error(r, status_for(pvc_errors.InvalidState("x"), False), "invalid_state", "pvc init")
        assert body["status"] != 200


# --- error classes and the status table ---------------------------------------------------------


def _error_classes() -> list[type[PvcError]]:
    found: list[type[PvcError]] = [PvcError]
    for cls in found:
        found.extend(c for c in cls.__subclasses__() if c.__module__ == pvc_errors.__name__ and c not in found)
    return found


ERROR_CLASSES = _error_classes()


class _SubNotFound(pvc_errors.NotFound):
    kind = "sub_not_found"


def _make(cls: type[PvcError], message: str) -> PvcError:
    return cls([message]) if cls is pvc_errors.ConfigError else cls(message)


def test_status_table_matches_the_design() -> None:
    """What DESIGN.md fixes: actions fail with 510, reads with 400/404, always 503 and 401."""
    expected_read = {pvc_errors.InvalidArgument: 400, pvc_errors.NotFound: 404, pvc_errors.Unavailable: 503,
                     pvc_errors.OutcomeUnknown: 503, pvc_errors.AuthenticationError: 401,
                     pvc_errors.NotImplementedYet: 501}
    for cls in ERROR_CLASSES:
        e = _make(cls, "x")
        if cls in (pvc_errors.Unavailable, pvc_errors.OutcomeUnknown, pvc_errors.AuthenticationError,
                   pvc_errors.NotImplementedYet):
            assert status_for(e, True) == expected_read[cls], cls
        else:
            assert status_for(e, True) == 510, cls
        read = status_for(e, False)
        assert 400 <= read <= 599 and read != 510, (cls, read)
        if cls in expected_read:
            assert read == expected_read[cls], cls
    # Resolved along the class hierarchy: a subclass inherits its parent's status.
    assert status_for(_SubNotFound("x"), False) == 404
    assert status_for(_SubNotFound("x"), True) == 510
    assert status_for(pvc_errors.Timeout("x"), False) == 504
    assert status_for(pvc_errors.Conflict("x"), False) == 409
    assert error_body("m", 510, "k") == {"message": "m", "error": "k", "status": 510}


@pytest.fixture
def raising_client(plain_core: Cluster) -> Client:
    """The real app plus GET and POST routes that raise the error class named by `kind`."""
    by_kind = {cls.__name__: cls for cls in ERROR_CLASSES + [_SubNotFound]}

    def boom(core: Cluster, kind: str) -> Any:
        if kind == "RuntimeError":
            raise RuntimeError("secret internals")
        raise _make(by_kind[kind], f"Raised {kind} on purpose.")

    app = create_app(plain_core)
    param = Param("Error class.")
    add_routes(app, plain_core, {
        "test.raise-get": op("raise-get", "GET", "/test-raise", boom, "object", {"kind": param}),
        "test.raise-post": op("raise-post", "POST", "/test-raise", boom, "message", {"kind": param}),
    })
    return Client(app)


@pytest.mark.parametrize("cls", ERROR_CLASSES + [_SubNotFound], ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_every_error_class_through_a_real_request(raising_client: Client, cls: type[PvcError], method: str) -> None:
    r = raising_client.request(method, API + "/test-raise", query={"kind": cls.__name__})
    expected = status_for(_make(cls, "x"), method != "GET")
    body = assert_error(r, expected, cls.kind)
    assert body == {"message": f"Raised {cls.__name__} on purpose.", "error": cls.kind, "status": expected}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unexpected_exception_is_500_json_and_logged(raising_client: Client, method: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pvc.server"):
        r = raising_client.request(method, API + "/test-raise", query={"kind": "RuntimeError"})
    body = assert_error(r, 500, "internal")
    assert b"secret internals" not in r.body and b"Traceback" not in r.body
    assert body["message"] == "Internal server error; see the server log."
    logged = [rec for rec in caplog.records if rec.name == "pvc.server" and rec.exc_info]
    assert len(logged) == 1 and "/api/v1/test-raise" in logged[0].getMessage()
    assert isinstance(logged[0].exc_info[1], RuntimeError)


def test_unavailable_store_is_503_for_reads_and_actions() -> None:
    """ZooKeeper configured but nothing listening: 503 JSON, quickly, for GET and POST alike."""
    settings = Settings(coordinators=(f"127.0.0.1:{free_port()}",), zk_chroot="/nowhere", store_timeout=0.5)
    with Cluster(settings) as cluster:
        client = Client(create_app(cluster))
        assert_error(client.get(API + "/node"), 503, "unavailable", "unreachable")
        assert_error(client.get(API + "/node/hv1/domain-state"), 503, "unavailable")
        assert_error(client.post(API + "/node/hv1/domain-state", data={"domain-state": "flush"}), 503, "unavailable")
        assert client.get(API).status == 209  # the root does not need the store


# --- flags --------------------------------------------------------------------------------------


@pytest.fixture
def flag_client(plain_core: Cluster) -> Client:
    """The real app plus a POST route with a flag `force` (default false) and a string `name`."""

    def echo(core: Cluster, name: str = "n", force: bool = False) -> dict[str, Any]:
        return {"name": name, "force": force}

    app = create_app(plain_core)
    add_routes(app, plain_core, {"test.flags": op("flags", "POST", "/test-flags", echo, "object", {
        "name": Param("A name.", default="n"),
        "force": Param("A flag.", kind="flag", default=False),
    })})
    return Client(app)


@pytest.mark.parametrize("raw,expected", [
    ("", True), ("1", True), ("true", True), ("yes", True), ("on", True), ("TRUE", True), ("Yes", True),
    ("0", False), ("false", False), ("no", False), ("off", False), ("OFF", False),
])
@pytest.mark.parametrize("how", ["query", "form", "multipart", "json"])
def test_flag_words(flag_client: Client, raw: str, expected: bool, how: str) -> None:
    r = send(flag_client, "POST", API + "/test-flags", {"force": raw}, how)
    assert (r.status, r.json()) == (200, {"name": "n", "force": expected})


def test_flag_presence_and_json_types(flag_client: Client) -> None:
    path = API + "/test-flags"
    assert flag_client.post(path).json() == {"name": "n", "force": False}  # absent: the default
    assert flag_client.post(path + "?force").json() == {"name": "n", "force": True}  # bare key
    assert flag_client.post(path + "?force=&name=x").json() == {"name": "x", "force": True}
    assert flag_client.post(path, json={"force": True}).json()["force"] is True
    assert flag_client.post(path, json={"force": False}).json()["force"] is False
    assert flag_client.post(path, json={"force": 1}).json()["force"] is True
    assert flag_client.post(path, json={"force": 0}).json()["force"] is False


@pytest.mark.parametrize("raw", ["maybe", "2", "truee", "-"])
def test_bad_flag_word_is_510(flag_client: Client, raw: str) -> None:
    assert_error(flag_client.post(API + "/test-flags", query={"force": raw}), 510, "invalid_argument",
                 "Invalid value for 'force'")


def test_responses_are_json_text(client: Client, add_node: Callable[..., str]) -> None:
    add_node("hv1")
    for r in (client.get(API), client.get(API + "/node"), client.get(API + "/node/hv1/domain-state"),
              client.get(API + "/node/nope"), client.post(API + "/node/hv1/domain-state", data={"domain-state": "flush"})):
        assert r.headers["Content-Type"].startswith("application/json")
        json.loads(r.body)


def test_debug_pretty_prints_json(settings: Settings) -> None:
    with Cluster(settings.replace(debug=True)) as cluster:
        if settings.engine == "zookeeper":
            from pvc.lib.ops.cluster import init_cluster

            init_cluster(cluster)
        client = Client(create_app(cluster))
        for r, status in ((client.get(API), 209), (client.get(API + "/nope"), 404), (client.get(API + "/node/x"), 404)):
            assert r.status == status
            assert r.text.startswith("{\n  ") and r.text.endswith("}\n"), r.text
            json.loads(r.body)
    with Cluster(settings) as cluster:  # compact otherwise
        assert b"\n" not in Client(create_app(cluster)).get(API).body
