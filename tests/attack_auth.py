"""Issue 11, item 9: the attacks on cookie sessions and the login form, replayed against a running
`pvc serve` with authentication enabled (``url`` is its API URL, e.g. http://127.0.0.1:7370/api/v1,
and ``token`` one of its tokens).

Each ``measure_*`` function returns a dict: ``item`` (9), ``attack``, ``before`` (the figure from
the issue), ``after`` (what this server does now, measured), ``passed`` and the raw figures. Only
127.0.0.1-style loopback traffic is meant; every loop is bounded by a count and a deadline.

The guessing measure spends the failure budget of the address it sends from for a minute: by
default it sends from 127.0.0.9 when the server is on 127.0.0.1 (all of 127/8 is loopback on
Linux), so the other measures, which log in with the right token, are not throttled by it.
"""

from __future__ import annotations

import http.client
import json
import math
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

ITEM = 9


class _Conn:
    """One keep-alive HTTP connection to the server of ``url``, optionally from ``source``."""

    def __init__(self, url: str, source: str | None = None, timeout: float = 10.0):
        parts = urlsplit(url)
        self.prefix = parts.path.rstrip("/")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
        source_address = (source, 0) if source else None
        if parts.scheme == "https":
            import ssl

            context = ssl._create_unverified_context()  # a replay against a self-signed test server
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, source_address=source_address, context=context)
        else:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout, source_address=source_address)
        self.origin = f"{parts.scheme}://{parts.netloc}"

    def request(self, method: str, path: str, values: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        body = urlencode(values).encode() if values is not None else None
        sent = dict(headers or {})
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, self.prefix + path, body=body, headers=sent)
        r = self.conn.getresponse()
        return r.status, r.headers, r.read()

    def close(self) -> None:
        self.conn.close()


def _session(url: str, token: str) -> str:
    """Log in (form body, no Origin: as curl does) and return the session cookie as a header value."""
    conn = _Conn(url)
    try:
        status, headers, body = conn.request("POST", "/auth/login", {"token": token})
        if status != 200:
            raise RuntimeError(f"login failed: {status} {body[:200]!r}")
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        return cookie
    finally:
        conn.close()


def _default_source(url: str) -> str | None:
    return "127.0.0.9" if urlsplit(url).hostname == "127.0.0.1" else None


def measure_token_guessing(url: str, seconds: float = 3.0, limit: int = 10, source: str | None = "default",
                           max_requests: int = 20_000) -> dict[str, Any]:
    """Wrong X-Api-Key guesses as fast as one keep-alive connection goes, for ``seconds``: how many
    were compared (401) and how many refused unchecked (429), and how fast. ``limit`` is the
    server's auth_failures_per_minute (default 10)."""
    source = _default_source(url) if source == "default" else source
    conn = _Conn(url, source)
    compared = refused = other = 0
    retry_after: str | None = None
    started = time.monotonic()
    try:
        for _ in range(max_requests):
            if time.monotonic() - started >= seconds:
                break
            status, headers, _ = conn.request("GET", "/node", headers={"X-Api-Key": secrets.token_hex(8)})
            if status == 401:
                compared += 1
            elif status == 429:
                refused += 1
                retry_after = headers.get("Retry-After")
            else:
                other += 1
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    sent = compared + refused + other
    # Allowed: the burst, plus what the minute's rate gives back while the attack runs.
    allowed = limit + math.ceil(elapsed * limit / 60) + 1
    return {
        "item": ITEM, "attack": "token guessing with X-Api-Key (one client address)",
        "before": "~1,000 guesses a second compared, never throttled",
        "after": (f"{sent / elapsed:.0f} guesses/s sent for {elapsed:.1f} s: {compared} compared "
                  f"({compared / elapsed:.2f}/s; {limit}/min sustained), {refused} refused with 429 "
                  f"(Retry-After {retry_after})"),
        "passed": refused > 0 and compared <= allowed and other == 0 and retry_after is not None,
        "sent": sent, "compared": compared, "refused": refused, "other": other, "seconds": elapsed,
        "compared_per_second": compared / elapsed,
    }


def measure_cross_origin_write(url: str, token: str, other_port: int = 8080) -> dict[str, Any]:
    """A write carrying only the session cookie, sent as a page of another port of the same host
    would (``Origin: http://<host>:<other_port>``): does it land? The write creates a bridged
    network with a random description; it is looked for, and removed, with X-Api-Key."""
    cookie = _session(url, token)
    conn = _Conn(url)
    parts = urlsplit(url)
    foreign = f"{parts.scheme}://{parts.hostname}:{other_port}"
    name = "csrf-probe-" + secrets.token_hex(4)
    vni = str(3000 + secrets.randbelow(1000))
    key = {"X-Api-Key": token}
    try:
        status, _, body = conn.request("POST", "/network", {"vni": vni, "description": name, "nettype": "bridged"},
                                       {"Cookie": cookie, "Origin": foreign})
        landed = conn.request("GET", f"/network/{name}", headers=key)[0] == 200
        if landed:
            conn.request("DELETE", f"/network/{name}", headers=key)
        # The same write from the server's own origin is still served (and then removed).
        own_status, _, _ = conn.request("POST", "/network", {"vni": vni, "description": name, "nettype": "bridged"},
                                        {"Cookie": cookie, "Origin": conn.origin})
        if conn.request("GET", f"/network/{name}", headers=key)[0] == 200:
            conn.request("DELETE", f"/network/{name}", headers=key)
    finally:
        conn.close()
    error = json.loads(body).get("error") if body.startswith(b"{") else None
    return {
        "item": ITEM, "attack": f"cookie-only write with Origin {foreign}",
        "before": "accepted (200) and applied from any Origin",
        "after": f"{status} {error}, {'applied' if landed else 'nothing applied'}; same-origin write {own_status}",
        "passed": status == 403 and not landed and own_status == 200,
        "status": status, "landed": landed, "same_origin_status": own_status,
    }


def measure_login_form(url: str, token: str, other_port: int = 8080) -> dict[str, Any]:
    """The login form's anti-framing headers, a token in the login POST's query string, and a
    login or logout POSTed by a page of another origin."""
    conn = _Conn(url)
    parts = urlsplit(url)
    foreign = f"{parts.scheme}://{parts.hostname}:{other_port}"
    try:
        _, headers, _ = conn.request("GET", "/auth/login")
        frame_options = headers.get("X-Frame-Options")
        csp = headers.get("Content-Security-Policy") or ""
        query_status, query_headers, _ = conn.request("POST", "/auth/login?" + urlencode({"token": token}))
        query_cookie = query_headers.get("Set-Cookie") is not None
        login_status, login_headers, _ = conn.request("POST", "/auth/login", {"token": token}, {"Origin": foreign})
        cross_cookie = login_headers.get("Set-Cookie") is not None
        cookie = _session(url, token)
        logout_status, _, _ = conn.request("POST", "/auth/logout", headers={"Cookie": cookie, "Origin": foreign})
        still_valid = conn.request("GET", "/node", headers={"Cookie": cookie})[0] == 200
    finally:
        conn.close()
    framed = frame_options != "DENY" or "frame-ancestors 'none'" not in csp
    return {
        "item": ITEM, "attack": "login form: framing, token in the query string, cross-origin login/logout",
        "before": "frameable (no X-Frame-Options or CSP); ?token= accepted (200, cookie set); "
                  "cross-origin login accepted",
        "after": (f"X-Frame-Options {frame_options}, CSP {csp!r}; ?token= → {query_status}"
                  f"{' with a cookie' if query_cookie else ', no cookie'}; cross-origin login → {login_status}"
                  f"{' with a cookie' if cross_cookie else ', no cookie'}; cross-origin logout → {logout_status}, "
                  f"session {'still valid' if still_valid else 'ended'}"),
        "passed": (not framed and query_status == 400 and not query_cookie and login_status == 403
                   and not cross_cookie and logout_status == 403 and still_valid),
        "frame_options": frame_options, "csp": csp, "query_status": query_status, "cross_login_status": login_status,
        "cross_logout_status": logout_status,
    }


def measure_all(url: str, token: str, limit: int = 10) -> list[dict[str, Any]]:
    """Every item-9 measure, the guessing one last (it spends an address's failure budget)."""
    return [measure_cross_origin_write(url, token), measure_login_form(url, token),
            measure_token_guessing(url, limit=limit)]


if __name__ == "__main__":  # python -m tests.attack_auth URL TOKEN
    import sys

    for result in measure_all(sys.argv[1], sys.argv[2]):
        print(f"[{'pass' if result['passed'] else 'FAIL'}] {result['attack']}\n  before: {result['before']}\n"
              f"  after:  {result['after']}")
