"""Token and session authentication, as DESIGN.md says.

* ``X-Api-Key`` carries a configured token on any route; it is compared exactly and in constant
  time with every configured token (the original let any substring in, its bug S1).
* ``POST /api/v1/auth/login`` with ``token`` sets a signed session cookie. The cookie holds an
  expiry, a random id and a keyed fingerprint of the token, never the token itself; it is
  re-checked on every request against the tokens configured now, so removing a token from the
  configuration ends its sessions. Logout clears the cookie and revokes its id.
* A request that changes something (any method but GET and HEAD) and is authenticated by its
  session cookie only must come from this server's own origin, as its ``Origin`` header (or,
  without one, its ``Referer``) says: SameSite=Strict keeps the cookie from other sites, but not
  from another port of the same host. Login and logout POSTs are checked the same way, except that
  a client which sends neither header (curl) may log in. ``X-Api-Key`` involves no cookie, so a
  request it authenticates is not checked.
* Failed authentications (an offered token that is wrong, on any route or at login) are throttled
  per client address (:class:`Throttle`): beyond ``auth_failures_per_minute`` the answer is 429
  *before* any token is compared, so no faster guessing is possible; successes never count.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any, Mapping
from urllib.parse import urlsplit

from pvc.lib.config import Settings
from pvc.lib.errors import AuthenticationError

COOKIE = "pvc_session"
HEADER = "X-Api-Key"
#: Methods that change nothing: a session cookie is enough for them from anywhere.
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: Most client addresses the throttle keeps apart; beyond, new addresses share one entry.
MAX_TRACKED = 10_000
#: The key of that shared entry (no address looks like it).
OVERFLOW = "*"
WINDOW = 60.0


class Refused(Exception):
    """A request refused before it is served, answered as ``{"message", "error", "status"}``.

    Not a PvcError on purpose: its status does not depend on the method (the contract's 510 for a
    failed action would be wrong here), and pvc/server/errors.py has no entry for it."""

    status = 400
    kind = "invalid_argument"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class CrossOrigin(Refused):
    """A cookie-authenticated write, a login or a logout from another origin: 403."""

    status = 403
    kind = "forbidden"


class Throttled(Refused):
    """Too many failed authentications from one client address: 429 with Retry-After."""

    status = 429
    kind = "throttled"

    def __init__(self, retry_after: int):
        super().__init__(f"Too many failed authentications from this address; try again in {retry_after} "
                         f"second{'s' if retry_after != 1 else ''}.", {"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class TokenInQuery(Refused):
    """A login POST with ``token`` in its query string: 400, and the token is not even looked at."""

    def __init__(self) -> None:
        super().__init__("The token is taken from the request body only (a form or a JSON object), never from "
                         "the query string, where it would end up in logs and histories.")


# -- origins --------------------------------------------------------------------------------------

_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(:[0-9]{1,5})?")
_ORIGIN = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(:[0-9]{1,5})?", re.IGNORECASE)

Origin = tuple[str, str, int]


def _origin(scheme: str, host: str) -> Origin | None:
    try:
        parts = urlsplit(f"{scheme}://{host}")
        port = parts.port
    except ValueError:  # a port out of range, a broken IPv6 literal
        return None
    if not parts.hostname:
        return None
    return scheme.lower(), parts.hostname.lower(), port if port is not None else (443 if scheme.lower() == "https" else 80)


def server_origin(environ: Mapping[str, Any], secure: bool) -> Origin | None:
    """This server's origin as the request's Host header names it, with the scheme of the server
    (https under TLS); None without a well-formed Host header."""
    host = environ.get("HTTP_HOST", "")
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        return None
    return _origin("https" if secure else "http", host)


def request_origin(environ: Mapping[str, Any]) -> Origin | None | bool:
    """The origin a request says it comes from: its ``Origin`` header, else its ``Referer``'s
    scheme, host and port. False when the header is there but names no usable origin (``null``,
    garbage), None when neither header is there."""
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None:
        match = _ORIGIN.fullmatch(origin.strip()) if isinstance(origin, str) else None
        if not match:
            return False
        return _origin(match.group(1), match.group(2) + (match.group(3) or "")) or False
    referer = environ.get("HTTP_REFERER")
    if referer is None:
        return None
    try:
        parts = urlsplit(referer.strip())
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https") or not _HOST.fullmatch(parts.netloc.rpartition("@")[2]):
        return False
    return _origin(parts.scheme, parts.netloc.rpartition("@")[2]) or False


def same_origin(environ: Mapping[str, Any], secure: bool) -> bool | None:
    """True if the request comes from this server's origin, False if from another (or one that
    cannot be told), None if it names none at all (no Origin and no Referer header)."""
    seen = request_origin(environ)
    if seen is None:
        return None
    expected = server_origin(environ, secure)
    return seen is not False and expected is not None and seen == expected


def _show(origin: Origin | None) -> str:
    if origin is None:
        return "this server"
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


# -- throttling -----------------------------------------------------------------------------------


def client_key(environ: Mapping[str, Any]) -> str:
    """The throttle's key for the request's client: its address; an IPv6 address by its /64 (one
    host usually has a whole /64 to pick from); an IPv4-mapped IPv6 address as the IPv4 one."""
    addr = environ.get("REMOTE_ADDR") or "-"
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return str(addr)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Throttle:
    """At most ``per_minute`` failures per client key in any minute (with a burst of as many).

    Each key has a "theoretical arrival time" (the generic cell rate algorithm): a failure moves it
    on by 60 s / per_minute, and an attempt that would move it more than a minute past now is
    refused. An attempt *reserves* its slot before the token is compared and gives it back when the
    token was right, so concurrent guesses cannot overrun the limit, and a refused attempt learns
    nothing. The table keeps at most ``capacity`` keys, least recently failed first out once their
    time has passed; when it is full of live keys, new keys share one entry (:data:`OVERFLOW`), so
    a flood of addresses costs bounded memory and resets nobody's count."""

    def __init__(self, per_minute: int, capacity: int = MAX_TRACKED, clock: Any = time.monotonic):
        self.interval = WINDOW / per_minute
        self.capacity = capacity
        self._clock = clock
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tat)

    def reserve(self, client: str) -> str:
        """Take a failure slot for ``client`` (the key it was taken under is returned, for
        :meth:`release`); Throttled if it has none left."""
        with self._lock:
            now = self._clock()
            while self._tat:  # forget keys whose failures are all more than a minute old
                key, tat = next(iter(self._tat.items()))
                if tat > now:
                    break
                del self._tat[key]
            key = client if client in self._tat or len(self._tat) < self.capacity else OVERFLOW
            tat = max(self._tat.get(key, now), now) + self.interval
            if tat - now > WINDOW:
                raise Throttled(max(1, math.ceil(tat - now - WINDOW)))
            self._tat[key] = tat
            self._tat.move_to_end(key)
            return key

    def release(self, key: str) -> None:
        """Give back a slot taken by :meth:`reserve`: the attempt succeeded."""
        with self._lock:
            tat = self._tat.get(key)
            if tat is None:
                return
            tat -= self.interval
            if tat <= self._clock():
                del self._tat[key]
            else:
                self._tat[key] = tat


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (from a JSON escape) is kept, and so matches no token."""
    return text.encode("utf-8", "surrogatepass")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Authenticator:
    def __init__(self, settings: Settings):
        self.enabled = settings.auth_enabled
        self.lifetime = settings.session_lifetime
        self.secure = settings.ssl_enabled
        # Without a configured key, sessions are signed with a key of this process only: they
        # end when it restarts, which is safe, if less convenient.
        key = settings.secret_key or secrets.token_urlsafe(48)
        self._key = key.encode("utf-8")
        tokens = [_utf8(t.token) for t in settings.tokens]
        # Offered tokens are compared through their keyed digests: equal lengths, so the time a
        # comparison takes does not even tell the length of a token.
        self._token_digests = [self._mac(b"check", t) for t in tokens]
        self._fingerprints = [self._fingerprint(t).encode("ascii") for t in tokens]
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()
        self.throttle = Throttle(settings.auth_failures_per_minute)

    def _mac(self, *parts: bytes) -> bytes:
        return hmac.new(self._key, b"\0".join(parts), hashlib.sha256).digest()

    def _fingerprint(self, token: bytes) -> str:
        return _b64(self._mac(b"token", token)[:18])

    def token_ok(self, offered: str) -> bool:
        """True if ``offered`` equals a configured token; every token is compared, in constant time."""
        digest = self._mac(b"check", _utf8(offered))
        ok = False
        for token in self._token_digests:
            ok |= hmac.compare_digest(digest, token)
        return ok and bool(offered)

    def verify(self, offered: str, client: str = "-") -> bool:
        """:meth:`token_ok`, throttled for ``client``: Throttled (before any comparison) when it
        has failed too often; a failure counts, a success does not."""
        key = self.throttle.reserve(client)
        ok = self.token_ok(offered)
        if ok:
            self.throttle.release(key)
        return ok

    # -- sessions -----------------------------------------------------------------------------
    def new_session(self, token: str) -> str:
        """The cookie value for a login with ``token`` (which must already be checked)."""
        # Rounded up: the session lasts at least its lifetime (truncating cut up to a second off).
        expiry = str(math.ceil(time.time() + self.lifetime))
        sid = secrets.token_urlsafe(16)
        body = f"{expiry}.{sid}.{self._fingerprint(_utf8(token))}"
        return f"{body}.{_b64(self._mac(b'session', body.encode('ascii')))}"

    def _session_id(self, cookie: str) -> str | None:
        """The id of a valid session cookie, else None (a cookie that is not ASCII is not valid)."""
        try:
            expiry, sid, fingerprint, signature = cookie.encode("ascii").split(b".")
            expected = _b64(self._mac(b"session", b".".join((expiry, sid, fingerprint)))).encode("ascii")
            if not hmac.compare_digest(signature, expected):
                return None
            if int(expiry) <= time.time():
                return None
        except (ValueError, UnicodeEncodeError):
            return None
        known = False
        for current in self._fingerprints:
            known |= hmac.compare_digest(fingerprint, current)
        if not known:
            return None
        session = sid.decode("ascii")
        with self._lock:
            if session in self._revoked:
                return None
        return session

    def revoke(self, cookie: str) -> None:
        sid = self._session_id(cookie)
        if sid is None:
            return
        now = time.time()
        with self._lock:
            self._revoked = {s: t for s, t in self._revoked.items() if t > now}  # forget expired ids
            self._revoked[sid] = int(cookie.split(".", 1)[0])  # until the cookie itself expires

    def cookie_attributes(self) -> dict[str, object]:
        attrs: dict[str, object] = {"httponly": True, "samesite": "strict", "path": "/api/v1", "max_age": self.lifetime}
        if self.secure:
            attrs["secure"] = True
        return attrs

    # -- per request --------------------------------------------------------------------------
    def check(self, cookie: str | None, api_key: str | None, environ: Mapping[str, Any] | None = None) -> None:
        """Raise AuthenticationError unless the request has a valid session or X-Api-Key.

        With the request's ``environ``: a wrong key counts as a failure of its client address
        (Throttled beyond the limit), and a request that changes something (not GET or HEAD)
        with a session cookie alone is refused with CrossOrigin unless it comes from this
        server's origin: a browser sends the cookie on another page's behalf too."""
        environ = environ or {}
        if not self.enabled:
            # No credential to forge, so a page of any other site could make the browser of
            # someone on this host change the cluster: a write that names a foreign origin is
            # refused. Scripts and the CLI send no Origin and are not affected.
            if environ.get("REQUEST_METHOD", "GET") not in SAFE_METHODS and same_origin(environ, self.secure) is False:
                raise CrossOrigin("Cross-origin request refused: authentication is disabled, so a request that "
                                  f"changes something must come from {_show(server_origin(environ, self.secure))} "
                                  "or name no origin (as scripts and the CLI do).")
            return
        if cookie and self._session_id(cookie) is not None:
            if environ.get("REQUEST_METHOD", "GET") in SAFE_METHODS or same_origin(environ, self.secure):
                return
            if api_key is None:
                raise CrossOrigin("Cross-origin request refused: a request that changes something with a session "
                                  f"cookie must come from {_show(server_origin(environ, self.secure))} (its Origin "
                                  f"or Referer header says where it comes from); other clients send {HEADER}.")
        if api_key is None:
            raise AuthenticationError("Authentication required")
        if not self.verify(api_key, client_key(environ)):
            raise AuthenticationError("Authentication failed")

    def check_origin(self, environ: Mapping[str, Any], what: str, required: bool) -> None:
        """CrossOrigin unless the request comes from this server's origin; one naming no origin
        at all passes unless ``required``."""
        verdict = same_origin(environ, self.secure)
        if verdict is False or (verdict is None and required):
            raise CrossOrigin(f"Cross-origin request refused: {what} must come from "
                              f"{_show(server_origin(environ, self.secure))} (its Origin or Referer header).")
