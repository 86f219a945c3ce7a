"""A small in-process HTTP client for WSGI apps, checked by wsgiref's validator (as bottle's own
test tools do), so the app is exercised exactly as a server would call it."""

from __future__ import annotations

import io
import json as jsonlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: list[str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        return jsonlib.loads(self.body)


class Client:
    def __init__(self, app: Any):
        self.app = validator(app)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, query: dict | None = None, data: dict | None = None,
                json: Any = None, body: bytes | None = None, headers: dict | None = None,
                content_type: str | None = None) -> Response:
        parts = urlsplit(path)
        qs = parts.query or (urlencode(query) if query else "")
        if data is not None:
            body, content_type = urlencode(data).encode(), "application/x-www-form-urlencoded"
        elif json is not None:
            body, content_type = jsonlib.dumps(json).encode(), "application/json"
        body = body or b""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": parts.path,
            "QUERY_STRING": qs,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
        if content_type:
            environ["CONTENT_TYPE"] = content_type
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        if self.cookies:
            environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        setup_testing_defaults(environ)
        captured: dict[str, Any] = {}

        def start_response(status: str, response_headers: list, exc_info: Any = None) -> Any:
            captured["status"] = int(status.split()[0])
            captured["headers"] = response_headers
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            out = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        cookies = [v for k, v in captured["headers"] if k.lower() == "set-cookie"]
        for c in cookies:
            name, _, rest = c.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in c.lower() or value in ("", '""'):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Response(captured["status"], dict(captured["headers"]), out, cookies)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)
