"""The values of a request, as the manual says: query string, form body (urlencoded or
multipart), or a JSON object body, for every method.

Whatever is wrong with them (bad UTF-8, a body too large or malformed, JSON nested too deeply, a
broken multipart body) is an InvalidArgument, which the contract turns into 400 on a GET and 510
on an action; never a 500 and never a traceback in the log.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import bottle

from pvc.lib.errors import InvalidArgument, quote

#: Largest request body read into memory (a VM's XML is the biggest value).
MAX_BODY = 16 * 1024 * 1024
#: The environ key where :func:`take_chunked_body` leaves the reason a request body could not be
#: taken, for :func:`request_values` to refuse the request with.
BODY_ERROR = "pvc.body_error"
TOO_LARGE = f"The request body is larger than {MAX_BODY} bytes."
#: Piece size for reading a body the server has de-chunked. cheroot's reader copies its pending
#: data on every read, so both very small and very large reads of a chunked body cost time
#: quadratic in the chunk sizes; 16 KiB pieces keep either way linear enough.
PIECE = 16 * 1024
#: A chunked body refused for its size is still read (and dropped) up to this much further, so
#: that the client reads the answer and the connection stays usable; run.py bounds every request
#: body at MAX_BODY + DRAIN in the server itself.
DRAIN = 1024 * 1024


class _Request(bottle.BaseRequest):
    """Bottle's request, keeping bodies and multipart values up to MAX_BODY in memory.

    With Bottle's default (MEMFILE_MAX, 100 KiB, a global left alone) larger ones spill to
    temporary files that nothing closes, and the multipart parser refuses more than that in all."""

    MEMFILE_MAX = MAX_BODY + 1


def take_chunked_body(environ: dict[str, Any]) -> None:
    """Turn a chunked request into the same request with a Content-Length, in place.

    cheroot de-chunks the body (and says so with ``wsgi.input_terminated``) but leaves
    ``Transfer-Encoding: chunked`` in the environ, so Bottle would de-chunk it a second time: it
    fails every such request, reading byte by byte in quadratic time. Here the body is read once,
    at most MAX_BODY + 1 bytes of it, into memory. A body that is too large (the rest is read and
    dropped, up to DRAIN more bytes), that cannot be read, or that the server left chunked, is
    recorded under BODY_ERROR for :func:`request_values` to refuse, as it refuses the same body
    sent with a Content-Length: after routing and authentication, with the contract's status."""
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    del environ["HTTP_TRANSFER_ENCODING"]
    parts: list[bytes] = []
    if not environ.get("wsgi.input_terminated"):
        environ[BODY_ERROR] = "This server does not take chunked request bodies."
    else:
        stream = environ["wsgi.input"]
        size = 0
        try:
            while size <= MAX_BODY and (part := stream.read(PIECE)):
                parts.append(part)
                size += len(part)
            if size > MAX_BODY:
                parts = []
                environ[BODY_ERROR] = TOO_LARGE
                while size <= MAX_BODY + DRAIN and (part := stream.read(PIECE)):
                    size += len(part)
        except Exception as e:  # the client's stream: bad chunk framing, the server's bound, a timeout
            parts = []
            reason = e.args[0] if e.args and isinstance(e.args[0], str) else type(e).__name__
            environ.setdefault(BODY_ERROR, f"The chunked request body cannot be read: {reason!r}.")
    body = b"".join(parts)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _unicode(where: str, text: str) -> str:
    """``text`` unless it holds a lone surrogate (JSON's ``"\\ud800"``): such a string is not
    Unicode text, cannot be encoded as UTF-8, and so could never be stored or compared."""
    found = None if text.isascii() else _SURROGATE.search(text)
    if found:
        raise InvalidArgument(f"{where} is not valid Unicode text: it holds a lone surrogate "
                              f"(U+{ord(found.group()):04X}).")
    return text


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused as form values are when a name is given twice with different
    contents (Python's json keeps the last one silently), or when a name or text is not Unicode."""
    values: dict[str, Any] = {}
    for key, value in pairs:
        _unicode(f"The JSON name {quote(key[:80])}", key)
        if isinstance(value, str):
            _unicode(f"Value {quote(key)}", value)
        _add(values, key, value)
    return values


def _add(values: dict[str, Any], key: str, value: Any) -> None:
    if key in values and values[key] != value:
        raise InvalidArgument(f"Value {quote(key)} is given more than once with different contents.")
    values[key] = value


def _text(raw: bytes) -> str:
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")


def parse_urlencoded(raw: bytes, where: str) -> list[tuple[str, str]]:
    """``name=value&...`` pairs (a bare ``name`` has the value ""), percent-decoded as UTF-8."""
    pairs = []
    try:
        for pair in raw.split(b"&"):
            if pair:
                key, _, value = pair.partition(b"=")
                pairs.append((_text(key), _text(value)))
    except UnicodeDecodeError:
        raise InvalidArgument(f"The {where} is not valid UTF-8.") from None
    return pairs


def _body(request: bottle.BaseRequest) -> bytes:
    try:
        return request.body.read(MAX_BODY + 1)
    except bottle.HTTPError as e:
        raise InvalidArgument(f"The request body cannot be read: {e.body}") from None


def request_values(request: bottle.BaseRequest) -> dict[str, Any]:
    """Every value of the request by name; InvalidArgument for a malformed request."""
    # The only place a body is read: after routing and authentication, so an unauthenticated
    # request's body is never read at all.
    take_chunked_body(request.environ)
    request = _Request(request.environ)
    values: dict[str, Any] = {}
    try:
        query = request.environ.get("QUERY_STRING", "").encode("latin-1")  # the bytes sent (PEP 3333)
    except UnicodeEncodeError:
        raise InvalidArgument("The query string is not valid UTF-8.") from None
    for key, value in parse_urlencoded(query, "query string"):
        _add(values, key, value)
    problem = request.environ.get(BODY_ERROR)
    if problem:
        raise InvalidArgument(problem)
    if request.content_length > MAX_BODY:
        raise InvalidArgument(TOO_LARGE)
    ctype = request.content_type.split(";")[0].strip().lower()
    if ctype == "application/json":
        raw = _body(request)
        if raw.strip():
            try:
                data = json.loads(raw, object_pairs_hook=_json_object)
            except (ValueError, UnicodeDecodeError) as e:
                raise InvalidArgument(f"The JSON body is not valid JSON: {e}.") from None
            except RecursionError:
                raise InvalidArgument("The JSON body is nested too deeply.") from None
            if not isinstance(data, dict):
                raise InvalidArgument("The JSON body must be an object of values.")
            for key, value in data.items():
                if isinstance(value, (dict, list)) or value is None:
                    raise InvalidArgument(f"Value {quote(key)} must be a string, a number or a boolean.")
                _add(values, key, value if isinstance(value, (str, bool)) else str(value))
    elif ctype == "application/x-www-form-urlencoded":
        for key, value in parse_urlencoded(_body(request), "form body"):
            _add(values, key, value)
    elif ctype == "multipart/form-data":
        try:
            form = request.POST.allitems()
        except bottle.HTTPError as e:  # MultipartError: 400 with Bottle's message
            reason = str(e.body).removeprefix("MultipartError: ")
            raise InvalidArgument(f"The multipart body is malformed: {reason}.") from None
        except (ValueError, LookupError) as e:  # UnicodeDecodeError, or an unknown charset
            raise InvalidArgument(f"The multipart body cannot be decoded: {e}.") from None
        for key, value in form:
            if isinstance(value, bottle.FileUpload):  # `curl -F xml=@vm.xml`
                try:
                    value = value.file.read().decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidArgument(f"Uploaded value {quote(key)} is not UTF-8 text.") from None
            _add(values, key, value)
    return values
