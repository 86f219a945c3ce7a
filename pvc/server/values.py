"""The values of a request, as the manual says: query string, form body (urlencoded or
multipart), or a JSON object body, for every method."""

from __future__ import annotations

import json
from typing import Any

import bottle

from pvc.lib.errors import InvalidArgument, quote

#: Largest request body read into memory (a VM's XML is the biggest value).
MAX_BODY = 16 * 1024 * 1024


def _add(values: dict[str, Any], key: str, value: Any) -> None:
    if key in values and values[key] != value:
        raise InvalidArgument(f"Value {quote(key)} is given more than once with different contents.")
    values[key] = value


def request_values(request: bottle.BaseRequest) -> dict[str, Any]:
    """Every value of the request by name; InvalidArgument for a malformed body."""
    values: dict[str, Any] = {}
    for key, value in request.query.decode().allitems():
        _add(values, key, value)
    length = request.content_length
    if length > MAX_BODY:
        raise InvalidArgument(f"The request body is larger than {MAX_BODY} bytes.")
    ctype = request.content_type.split(";")[0].strip().lower()
    if ctype == "application/json":
        raw = request.body.read()
        if raw.strip():
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise InvalidArgument(f"The JSON body is not valid JSON: {e}.") from None
            if not isinstance(data, dict):
                raise InvalidArgument("The JSON body must be an object of values.")
            for key, value in data.items():
                if isinstance(value, (dict, list)) or value is None:
                    raise InvalidArgument(f"Value {quote(key)} must be a string, a number or a boolean.")
                _add(values, key, value if isinstance(value, (str, bool)) else str(value))
    elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for key, value in request.POST.decode().allitems():
            if isinstance(value, bottle.FileUpload):  # `curl -F xml=@vm.xml`
                try:
                    value = value.file.read().decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidArgument(f"Uploaded value {quote(key)} is not UTF-8 text.") from None
            _add(values, key, value)
    return values
