"""Token and session authentication, as DESIGN.md says.

* ``X-Api-Key`` carries a configured token on any route; it is compared exactly and in constant
  time with every configured token (the original let any substring in, its bug S1).
* ``POST /api/v1/auth/login`` with ``token`` sets a signed session cookie. The cookie holds an
  expiry, a random id and a keyed fingerprint of the token, never the token itself; it is
  re-checked on every request against the tokens configured now, so removing a token from the
  configuration ends its sessions. Logout clears the cookie and revokes its id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import threading
import time

from pvc.lib.config import Settings
from pvc.lib.errors import AuthenticationError

COOKIE = "pvc_session"
HEADER = "X-Api-Key"


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
    def check(self, cookie: str | None, api_key: str | None) -> None:
        """Raise AuthenticationError unless the request has a valid session or X-Api-Key."""
        if not self.enabled:
            return
        if cookie and self._session_id(cookie) is not None:
            return
        if api_key is None:
            raise AuthenticationError("Authentication required")
        if not self.token_ok(api_key):
            raise AuthenticationError("Authentication failed")
