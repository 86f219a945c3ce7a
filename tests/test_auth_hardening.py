"""Issue 11, item 9: cookie sessions and the login form.

* A write with only the session cookie is served only from the server's own origin (Origin, else
  Referer); X-Api-Key requests are not affected; login and logout POSTs are checked too.
* The login form cannot be framed; the login POST takes its token from the body only.
* Failed authentications are throttled per client address (429 with Retry-After, before any
  comparison); successes never count; the throttle's table is bounded.

In-process tests drive the WSGI app (tests/wsgi.py: its Host is 127.0.0.1, on http's port 80);
the rest run a real cheroot server on 127.0.0.1, with clients sending from 127.0.0.1 and
127.0.0.2 (both loopback) to be two addresses.
"""

from __future__ import annotations

import http.client
import logging
import threading
from typing import Any, Callable, Iterator
from urllib.parse import urlencode, urlsplit

import pytest

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.server.auth import MAX_TRACKED, OVERFLOW, Authenticator, Throttle, Throttled, client_key, same_origin
from tests import attack_auth
from tests.test_api import assert_error
from tests.test_auth import API, OTHER, TOKEN, add_hv1, auth_settings, login, with_cookie
from tests.test_serve import Live, running
from tests.wsgi import Client, Response

SELF = "http://127.0.0.1"  # the test client's own origin
FOREIGN = [
    "http://127.0.0.1:8080",  # another port of the same host: SameSite=Strict does not stop it
    "https://127.0.0.1",  # another scheme
    "http://localhost",  # another host name
    "http://evil.example",
    "http://127.0.0.1.evil.example",
    "http://127.0.0.1@evil.example",
    "http://127.0.0.1/",  # not an origin's form (as a Referer's start it would be the own origin)
    "null",  # sandboxed frames, data: URLs, Referrer-Policy: no-referrer
    "",
    "http://127.0.0.1:99999",
    "garbage",
    SELF + ", http://evil.example",
]
STATE = "/nodes/hv1/domainstate"


def referer(origin: str) -> dict[str, str]:
    """The same foreign origin as a Referer header (none for a value that is only a malformed Origin)."""
    return {} if origin == "http://127.0.0.1/" else {"Referer": origin + "/some/page"}


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(store_path=str(tmp_path / "auth.sqlite"), wait_timeout=10.0)


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., tuple[Cluster, Any]]]:
    clusters: list[Cluster] = []

    def make(**changes: Any) -> tuple[Cluster, Any]:
        from pvc.server.app import create_app

        cluster = Cluster(auth_settings(settings, **changes))
        clusters.append(cluster)
        add_hv1(cluster)
        return cluster, create_app(cluster)

    yield make
    for cluster in clusters:
        cluster.close()


def flush(client: Client, **headers: str) -> Response:
    return client.post(API + "/node/hv1/domain-state", data={"domain-state": "flush"}, headers=headers)


def assert_forbidden(r: Response) -> None:
    assert_error(r, 403, "forbidden", "Cross-origin request refused")


# --- Origin on cookie-authenticated writes -------------------------------------------------------


@pytest.mark.parametrize("origin", FOREIGN)
def test_cross_origin_cookie_write_is_refused(make_app: Callable[..., tuple[Cluster, Any]], origin: str) -> None:
    cluster, app = make_app()
    _, cookie = login(app)
    assert_forbidden(flush(with_cookie(app, cookie), Origin=origin))
    # Without an Origin, the Referer says where the request comes from.
    assert_forbidden(flush(with_cookie(app, cookie), **referer(origin)))
    assert cluster.store.get(STATE).value == "ready"  # nothing done
    # Reads with the cookie are served from anywhere (a browser keeps their answers from other origins).
    assert with_cookie(app, cookie).get(API + "/node/hv1", headers={"Origin": origin}).status == 200


def test_cookie_write_without_origin_or_referer_is_refused(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    cluster, app = make_app()
    _, cookie = login(app)
    r = flush(with_cookie(app, cookie))
    assert_forbidden(r)
    assert f"{SELF}:80" in r.json()["message"] and "X-Api-Key" in r.json()["message"]
    for method, path in (("PUT", API + "/network/x"), ("DELETE", API + "/network/x"), ("POST", API + "/vm")):
        assert_forbidden(with_cookie(app, cookie).request(method, path, headers={"Origin": "http://127.0.0.1:1"}))
    assert cluster.store.get(STATE).value == "ready"


@pytest.mark.parametrize("headers", [{"Origin": SELF}, {"Origin": SELF + ":80"}, {"Origin": "HTTP://127.0.0.1"},
                                     {"Referer": SELF + "/api/v1/auth/login"}, {"Referer": SELF + ":80/x?y#z"},
                                     {"Origin": "http://pvc.example:7370", "Host": "PVC.example:7370"},
                                     {"Origin": "http://[::1]:7370", "Host": "[::1]:7370"}])
def test_same_origin_cookie_write_is_served(make_app: Callable[..., tuple[Cluster, Any]], headers: dict[str, str]) -> None:
    cluster, app = make_app()
    _, cookie = login(app)
    r = flush(with_cookie(app, cookie), **headers)
    assert r.status == 200, r.body
    assert cluster.store.get(STATE).value == "flush"


def test_origin_must_match_the_host_header(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    cluster, app = make_app()
    _, cookie = login(app)
    for host in ("127.0.0.1:7370", "evil.example", "", "a b", "x/y", "127.0.0.1:http"):
        assert_forbidden(flush(with_cookie(app, cookie), Origin=SELF, Host=host))
    assert cluster.store.get(STATE).value == "ready"


def test_api_key_writes_are_not_affected(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    cluster, app = make_app()
    r = flush(Client(app), **{"X-Api-Key": TOKEN, "Origin": "http://evil.example"})
    assert r.status == 200, r.body
    cluster.store.write({STATE: "ready"})
    _, cookie = login(app)
    # A cookie and a valid key: the key authenticates, wherever the request comes from.
    assert flush(with_cookie(app, cookie), **{"X-Api-Key": OTHER, "Origin": "http://evil.example"}).status == 200
    cluster.store.write({STATE: "ready"})
    # A cookie and a wrong key, cross-origin: the key is checked, and fails.
    r = flush(with_cookie(app, cookie), **{"X-Api-Key": "wrong", "Origin": "http://evil.example"})
    assert_error(r, 401, "authentication")
    assert cluster.store.get(STATE).value == "ready"


def test_origin_under_tls_is_https(make_app: Callable[..., tuple[Cluster, Any]], tmp_path: Any) -> None:
    cluster, app = make_app(ssl_enabled=True, ssl_cert_file=str(tmp_path / "c.pem"), ssl_key_file=str(tmp_path / "k.pem"))
    _, cookie = login(app)
    assert_forbidden(flush(with_cookie(app, cookie), Origin=SELF))  # http://127.0.0.1 is another origin
    assert_forbidden(flush(with_cookie(app, cookie), Origin="https://127.0.0.1:80"))
    assert cluster.store.get(STATE).value == "ready"
    assert flush(with_cookie(app, cookie), Origin="https://127.0.0.1:80", Host="127.0.0.1:80").status == 200
    cluster.store.write({STATE: "ready"})
    assert flush(with_cookie(app, cookie), Origin="https://127.0.0.1", Host="127.0.0.1:443").status == 200


def test_same_origin_rule() -> None:
    def verdict(**headers: str) -> bool | None:
        environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}
        return same_origin(environ, secure=False)

    assert verdict(Host="h:81") is None  # names no origin
    assert verdict(Host="h:81", Origin="http://h:81") is True
    assert verdict(Host="h:81", Origin="http://h:81", Referer="http://evil/") is True  # Origin wins
    assert verdict(Host="h:81", Origin="http://evil", Referer="http://h:81/") is False
    assert verdict(Host="h:81", Referer="http://user:pw@h:81/p") is True
    assert verdict(Host="h:81", Referer="ftp://h:81/") is False
    assert verdict(Host="h:81", Referer="/relative") is False
    assert verdict(Origin="http://h:81") is False  # no Host header: no origin to compare with


# --- login and logout ----------------------------------------------------------------------------


def test_login_form_cannot_be_framed(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    _, app = make_app()
    r = Client(app).get(API + "/auth/login")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.headers["X-Frame-Options"] == "DENY"
    csp = {d.split()[0]: d.split()[1:] for d in r.headers["Content-Security-Policy"].split(";")}
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["default-src"] == ["'none'"] and csp["form-action"] == ["'self'"]
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Cache-Control"] == "no-store"
    # A Referrer-Policy of no-referrer would make browsers send "Origin: null" on the form's POST.
    assert r.headers.get("Referrer-Policy", "") != "no-referrer"


@pytest.mark.parametrize("origin", FOREIGN)
def test_cross_origin_login_is_refused(make_app: Callable[..., tuple[Cluster, Any]], origin: str) -> None:
    _, app = make_app()
    client = Client(app)
    r = client.post(API + "/auth/login", data={"token": TOKEN}, headers={"Origin": origin})
    assert_forbidden(r)
    assert not r.cookies and not client.cookies
    if referer(origin):
        r = client.post(API + "/auth/login", data={"token": TOKEN}, headers=referer(origin))
        assert_forbidden(r)
        assert not r.cookies


def test_login_from_the_own_origin_or_from_curl(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    _, app = make_app()
    for headers in ({"Origin": SELF}, {"Referer": SELF + API + "/auth/login"}, {}):
        r = Client(app).post(API + "/auth/login", data={"token": TOKEN}, headers=headers)
        assert r.status == 200 and r.cookies, (headers, r.body)
        assert r.headers["Cache-Control"] == "no-store"


def test_cross_origin_logout_is_refused(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    cluster, app = make_app()
    _, cookie = login(app)
    client = with_cookie(app, cookie)
    assert_forbidden(client.post(API + "/auth/logout", headers={"Origin": "http://127.0.0.1:8080"}))
    assert flush(with_cookie(app, cookie), Origin=SELF).status == 200  # the session still works
    r = client.post(API + "/auth/logout", headers={"Origin": SELF})
    assert r.status == 200
    assert_error(flush(with_cookie(app, cookie), Origin=SELF), 401, "authentication")


@pytest.mark.parametrize("query", [{"token": TOKEN}, {"token": "wrong"}, {"token": ""}])
def test_token_in_the_login_query_string_is_refused(make_app: Callable[..., tuple[Cluster, Any]],
                                                    query: dict[str, str]) -> None:
    _, app = make_app()
    client = Client(app)
    for kw in ({}, {"data": {"token": TOKEN}}, {"json": {"token": TOKEN}}):
        r = client.post(API + "/auth/login?" + urlencode(query), **kw)
        body = assert_error(r, 400, "invalid_argument", "query string", "request body")
        assert TOKEN not in r.text and body["status"] == 400
        assert not r.cookies and not client.cookies
    # The token in the body alone is what logs in.
    assert client.post(API + "/auth/login", data={"token": TOKEN}).status == 200


# --- throttling of failed authentications --------------------------------------------------------


def test_failed_keys_are_throttled(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    cluster, app = make_app()
    client = Client(app)
    _, cookie = login(app)
    for _ in range(3):  # successes never count
        for _ in range(20):
            assert client.get(API + "/node", headers={"X-Api-Key": TOKEN}).status == 200
    for i in range(10):
        assert_error(client.get(API + "/node", headers={"X-Api-Key": f"guess-{i}"}), 401, "authentication")
    for headers in ({"X-Api-Key": "guess-10"}, {"X-Api-Key": TOKEN}):
        # Beyond the limit no key is compared: the right one is refused like a wrong one, so a
        # refusal tells nothing about the token.
        r = client.get(API + "/node", headers=headers)
        body = assert_error(r, 429, "throttled", "Too many failed authentications")
        assert 1 <= int(r.headers["Retry-After"]) <= 6 and body["status"] == 429
        r = client.post(API + "/auth/login", data={"token": headers["X-Api-Key"]})
        assert_error(r, 429, "throttled")
        assert not r.cookies
        r = flush(client, **headers)
        assert_error(r, 429, "throttled")
    assert cluster.store.get(STATE).value == "ready"
    # A valid session is no token guess: it is still served.
    assert with_cookie(app, cookie).get(API + "/node").status == 200
    # Requests with no key at all are not failures, and still answer 401.
    assert_error(client.get(API + "/node"), 401, "authentication")


def test_failed_logins_count_too(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    _, app = make_app(auth_failures_per_minute=3)
    client = Client(app)
    for guess in ("a", "b"):
        assert_error(client.post(API + "/auth/login", data={"token": guess}), 401, "authentication")
    assert_error(client.get(API + "/node", headers={"X-Api-Key": "c"}), 401, "authentication")
    assert_error(client.post(API + "/auth/login", json={"token": "d"}), 429, "throttled")
    # A login without any token offered is no guess, and is answered as before.
    r = client.post(API + "/auth/login", data={})
    assert_error(r, 401, "authentication")


def test_concurrent_guesses_cannot_overrun_the_limit(make_app: Callable[..., tuple[Cluster, Any]]) -> None:
    _, app = make_app()
    statuses: list[int] = []
    lock = threading.Lock()

    def guess(n: int) -> None:
        client = Client(app)
        for i in range(10):
            status = client.get(API + "/node", headers={"X-Api-Key": f"g{n}-{i}"}).status
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(statuses) == 80
    assert statuses.count(401) == 10 and statuses.count(429) == 70


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_rate_and_retry_after() -> None:
    clock = Clock()
    throttle = Throttle(10, clock=clock)
    for _ in range(10):
        throttle.reserve("a")
    with pytest.raises(Throttled) as refused:
        throttle.reserve("a")
    assert refused.value.retry_after == 6 and refused.value.headers == {"Retry-After": "6"}
    throttle.reserve("b")  # another address has its own budget
    clock.now += 5.9
    with pytest.raises(Throttled) as refused:
        throttle.reserve("a")
    assert refused.value.retry_after == 1
    clock.now += 0.1
    throttle.reserve("a")  # one failure every 6 s: 10 a minute
    with pytest.raises(Throttled):
        throttle.reserve("a")
    # A released slot (a success) is given back.
    clock.now += 6
    key = throttle.reserve("a")
    throttle.release(key)
    throttle.reserve("a")
    # A minute after its last failure, an address is forgotten.
    clock.now += 60
    throttle.reserve("c")
    assert len(throttle) == 1


def test_throttle_memory_is_bounded(settings: Settings) -> None:
    """A flood of addresses: at most MAX_TRACKED kept apart, the rest share one entry; no
    address's count is reset by the flood."""
    auth = Authenticator(auth_settings(settings))
    for _ in range(10):
        assert not auth.verify("wrong", "192.0.2.1")
    with pytest.raises(Throttled):
        auth.verify("wrong", "192.0.2.1")
    refused = 0
    for n in range(3 * MAX_TRACKED):
        try:
            assert not auth.verify("wrong", f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
        except Throttled:
            refused += 1
    assert len(auth.throttle) <= MAX_TRACKED + 1
    # Beyond the table, new addresses share the overflow entry's budget of 10 a minute.
    assert refused == 3 * MAX_TRACKED - (MAX_TRACKED - 1) - 10
    with pytest.raises(Throttled):
        auth.verify("wrong", "192.0.2.1")  # still throttled
    with pytest.raises(Throttled):
        auth.verify(TOKEN, "203.0.113.7")  # a new address now shares the overflow entry
    assert OVERFLOW in auth.throttle._tat
    # Successes leave nothing behind.
    fresh = Authenticator(auth_settings(settings))
    for n in range(1000):
        assert fresh.verify(TOKEN, f"10.1.{n >> 8}.{n & 255}")
    assert len(fresh.throttle) == 0


def test_client_addresses() -> None:
    def key(addr: str | None) -> str:
        return client_key({"REMOTE_ADDR": addr} if addr is not None else {})

    assert key("192.0.2.1") == "192.0.2.1" and key("::ffff:192.0.2.1") == "192.0.2.1"
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("fe80::1%eth0") == "fe80::/64"
    assert key(None) == "-" and key("unix-socket") == "unix-socket"


# --- a real server --------------------------------------------------------------------------------


def raw(live: Live, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
        source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(live.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.headers), r.read()
    finally:
        conn.close()


@pytest.fixture
def live_auth(settings: Settings) -> Iterator[Live]:
    with running(auth_settings(settings)) as live:
        add_hv1(live.core)
        yield live


def test_real_server_throttles_per_address(live_auth: Live, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pvc.access"):
        for i in range(10):
            assert raw(live_auth, "GET", API + "/node", headers={"X-Api-Key": f"x{i}"}, source="127.0.0.2")[0] == 401
        status, headers, _ = raw(live_auth, "GET", API + "/node", headers={"X-Api-Key": TOKEN}, source="127.0.0.2")
        assert status == 429 and int(headers["Retry-After"]) >= 1
        # Another address is not affected.
        assert raw(live_auth, "GET", API + "/node", headers={"X-Api-Key": TOKEN}, source="127.0.0.1")[0] == 200
        assert raw(live_auth, "GET", API + "/node", headers={"X-Api-Key": "y"}, source="127.0.0.1")[0] == 401
        # A token in the login query string: refused, and never logged.
        status, _, body = raw(live_auth, "POST", f"{API}/auth/login?token={TOKEN}")
        assert status == 400, body
    assert TOKEN not in caplog.text and "token=" not in caplog.text
    assert " 429 " in caplog.text


def test_real_server_origin_check(live_auth: Live) -> None:
    port = urlsplit(live_auth.url).port
    body = urlencode({"token": TOKEN}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, headers, _ = raw(live_auth, "POST", API + "/auth/login", body, form)
    assert status == 200
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    write = urlencode({"domain-state": "flush"}).encode()
    for origin in (f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", f"http://localhost:{port}"):
        status, _, answer = raw(live_auth, "POST", API + "/node/hv1/domain-state", write,
                                {**form, "Cookie": cookie, "Origin": origin})
        assert status == 403, answer
    assert live_auth.core.store.get(STATE).value == "ready"
    status, _, answer = raw(live_auth, "POST", API + "/node/hv1/domain-state", write,
                            {**form, "Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"})
    assert status == 200, answer
    assert live_auth.core.store.get(STATE).value == "flush"


def test_attack_measures(live_auth: Live) -> None:
    """The replay's measures pass against a real server (tests/attack_auth.py)."""
    results = attack_auth.measure_all(live_auth.url, TOKEN)
    for result in results:
        assert result["passed"], result
    guessing = results[-1]
    assert guessing["compared"] <= 11 and guessing["refused"] > 0
    assert not live_auth.core.store.children("/networks")

