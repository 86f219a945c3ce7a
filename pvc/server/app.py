"""create_app: a fresh Bottle app with every operation route, auth and the HTTP contract.

One plugin enforces the contract for every route: authentication first, then the call, then
JSON out, with our errors mapped to statuses in one table (:mod:`pvc.server.errors`). Bottle's
own errors (unknown route, wrong method) are JSON too, never an HTML page.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

import bottle

from pvc import __version__
from pvc.lib.core import Cluster
from pvc.lib.errors import AuthenticationError, NotImplementedYet, PvcError
from pvc.lib.registry import load_all
from pvc.server.auth import COOKIE, HEADER, Authenticator, Refused, TokenInQuery, client_key
from pvc.server.errors import dumps, error_body, status_for
from pvc.server.openapi import add_openapi_route
from pvc.server.routes import CACHE_BYTES, JSON, PREFIX, add_routes, http_response
from pvc.server.values import parse_urlencoded, request_values

log = logging.getLogger("pvc.server")
access = logging.getLogger("pvc.access")

LOGIN_FORM = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>PVC API login</title></head>
<body><h1>PVC API login</h1>
<form method="post" action="/api/v1/auth/login">
<label>Token <input type="password" name="token" autocomplete="off" autofocus></label>
<button type="submit">Log in</button>
</form></body></html>
"""
#: Headers of the login form: it may not be framed (no clickjacking of the token field), it loads
#: nothing and runs nothing, and it posts only to this server.
LOGIN_FORM_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    # Not "no-referrer": with it, browsers send "Origin: null" on the form's own POST.
    "Referrer-Policy": "same-origin",
}


#: Routes the manual marks "todo v0.6": they answer 501 with a JSON message (behind auth, like
#: their neighbours), so a client learns it is not there rather than getting a 405.
PLANNED = {
    ("POST", "/vm/<vm>"): "Creating a VM from a template (the provisioner) is not implemented; "
                          "define the VM with POST /api/v1/vm instead.",
}

#: The root's status: 209 as the original, with a reason phrase (HTTP has none for 209).
ROOT_STATUS = "209 PVC API"


class ContractPlugin:
    """Authentication, error mapping and JSON for every route."""

    name = "pvc-contract"
    api = 2

    def __init__(self, auth: Authenticator, pretty: bool):
        self.auth = auth
        self.pretty = pretty

    def json(self, data: Any, status: int | str = 200, headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
        # Encoded at once (the str is dropped here), handed over in pieces when large.
        return http_response(dumps(data, self.pretty).encode(), JSON, status, headers)

    def apply(self, callback: Callable[..., Any], route: bottle.Route) -> Callable[..., Any]:
        public = route.config.get("pvc_public", False)
        mutating = route.method != "GET"

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # Order matters: credentials are checked on every request before the route's callback
            # (and so before the response cache in pvc.server.routes) is reached; every error
            # answer is built below from an exception, after the cache, and never kept by it.
            try:
                if not public:
                    request = bottle.request
                    self.auth.check(request.get_cookie(COOKIE), request.get_header(HEADER), request.environ)
                out = callback(*args, **kwargs)
            except bottle.HTTPResponse:
                raise
            except Refused as e:  # 400, 403, 429: refused whatever the method
                return self.json(error_body(e.message, e.status, e.kind), e.status, e.headers)
            except PvcError as e:
                status = status_for(e, mutating)
                return self.json(error_body(e.message, status, e.kind), status)
            except Exception:
                log.exception("Unexpected error in %s %s", bottle.request.method, bottle.request.path)
                return self.json(error_body("Internal server error; see the server log.", 500, "internal"), 500)
            if isinstance(out, (dict, list)):
                return self.json(out)
            return out

        return wrapper


def create_app(core: Cluster, cache_bytes: int = CACHE_BYTES) -> bottle.Bottle:
    """A new Bottle app serving the whole API for ``core``.

    When ``core`` reads through a read view (`pvc serve`), GET answers are kept encoded while
    what they read is unchanged (pvc.server.routes, at most ``cache_bytes`` bytes; 0 keeps
    none). ``app.config["pvc.responses"]`` holds the cache (``.cache``: None until the first
    GET, and without a view)."""
    settings = core.settings
    app = bottle.Bottle()
    auth = Authenticator(settings)
    plugin = ContractPlugin(auth, pretty=settings.debug)
    app.install(plugin)

    def error_handler(res: bottle.HTTPError) -> str:
        bottle.response.content_type = "application/json"
        if res.status_code == 404:
            message = f"Not found: {bottle.request.path}"
        elif res.status_code == 405:
            message = f"Method {bottle.request.method} not allowed on {bottle.request.path}"
        else:
            message = str(res.body) if res.status_code < 500 else "Internal server error; see the server log."
            if res.traceback:
                log.error("Unexpected error in %s %s:\n%s", bottle.request.method, bottle.request.path, res.traceback)
        return dumps(error_body(message, res.status_code, "http"), settings.debug)

    app.default_error_handler = error_handler  # type: ignore[method-assign]

    @app.get(PREFIX, pvc_public=True)
    def root() -> bottle.HTTPResponse:
        return plugin.json({"message": "PVC API version 1", "version": __version__}, ROOT_STATUS)

    def disabled() -> bottle.HTTPResponse | None:
        return None if auth.enabled else plugin.json({"message": "Authentication is disabled."})

    @app.get(PREFIX + "/auth/login", pvc_public=True)
    def login_form() -> Any:
        if not auth.enabled:
            return disabled()
        return bottle.HTTPResponse(LOGIN_FORM, 200, LOGIN_FORM_HEADERS)

    @app.post(PREFIX + "/auth/login", pvc_public=True)
    def login() -> Any:
        if not auth.enabled:
            return disabled()
        environ = bottle.request.environ
        # Another origin's page may not log this browser in (a client naming no origin, curl, may).
        auth.check_origin(environ, "a login", required=False)
        try:
            query = environ.get("QUERY_STRING", "").encode("latin-1")
            in_query = any(key == "token" for key, _ in parse_urlencoded(query, "query string"))
        except (UnicodeEncodeError, PvcError):
            in_query = False  # request_values refuses it below
        if in_query:
            raise TokenInQuery()
        token = request_values(bottle.request).get("token")
        if not isinstance(token, str) or not auth.verify(token, client_key(environ)):
            raise AuthenticationError("Authentication failed")
        res = plugin.json({"message": "Authenticated; the session lasts "
                                      f"{settings.session_lifetime} seconds."}, headers={"Cache-Control": "no-store"})
        res.set_cookie(COOKIE, auth.new_session(token), **auth.cookie_attributes())
        return res

    @app.route(PREFIX + "/auth/logout", method=["GET", "POST"], pvc_public=True)
    def logout() -> Any:
        if not auth.enabled:
            return disabled()
        if bottle.request.method == "POST":
            auth.check_origin(bottle.request.environ, "a logout", required=False)
        cookie = bottle.request.get_cookie(COOKIE)
        if cookie:
            auth.revoke(cookie)
        res = plugin.json({"message": "Logged out."})
        res.delete_cookie(COOKIE, path="/api/v1")
        return res

    for (method, path), message in PLANNED.items():
        def planned(message: str = message, **_: str) -> Any:
            raise NotImplementedYet(message)

        app.route(PREFIX + path, method=method, callback=planned)
    app.config["pvc.responses"] = add_routes(app, core, load_all(), cache=cache_bytes > 0, cache_bytes=cache_bytes)
    add_openapi_route(app, core)
    return app


def _loggable(text: str) -> str:
    """``text`` with control characters escaped, so a request cannot forge or split log lines."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def with_access_log(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """WSGI middleware writing one line per request: method, path, status, milliseconds.

    The path is logged without its query string, and no header is logged, so no token is."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["-"]

        def capture(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = line.split(" ", 1)[0]
            return start_response(line, headers, exc_info)

        try:
            return app(environ, capture)
        finally:
            access.info("%s %s %s %.1fms %s", environ.get("REQUEST_METHOD"), _loggable(environ.get("PATH_INFO", "")), status[0],
                        (time.perf_counter() - started) * 1000, environ.get("REMOTE_ADDR", "-"))

    return wsgi

