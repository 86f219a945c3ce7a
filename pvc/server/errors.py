"""HTTP statuses of our errors and the one JSON error body, each defined once.

The manual: an action (POST, PUT, DELETE) that fails for any reason answers 510. Reads answer
404 for an unknown object and 400 for a bad query value. Whatever the method, an unreachable store
is 503 and missing or wrong credentials 401.
"""

from __future__ import annotations

import json
from typing import Any

from pvc.lib.errors import (
    AlreadyExists,
    AuthenticationError,
    Conflict,
    InvalidArgument,
    InvalidState,
    NotFound,
    NotImplementedYet,
    OutcomeUnknown,
    PvcError,
    Timeout,
    Unavailable,
    by_class,
)

ACTION_FAILED = 510

#: Statuses for GET routes; actions use ACTION_FAILED except where ALWAYS says otherwise.
READ_STATUS: dict[type[PvcError], int] = {
    PvcError: 500,
    InvalidArgument: 400,
    NotFound: 404,
    AlreadyExists: 409,
    Conflict: 409,
    InvalidState: 409,
    Timeout: 504,
}
#: Statuses that do not depend on the method.
#: A write whose outcome is unknown is 503 too (the store did not answer), with its own error kind
#: "outcome_unknown" and a message saying how to check, never the plain "unavailable".
ALWAYS: dict[type[PvcError], int] = {
    Unavailable: 503,
    OutcomeUnknown: 503,
    AuthenticationError: 401,
    NotImplementedYet: 501,
}


def status_for(error: PvcError, mutating: bool) -> int:
    """The HTTP status of ``error`` on a route that changes data (``mutating``) or reads it."""
    fixed = by_class(ALWAYS, error)
    if fixed is not None:
        return fixed
    if mutating:
        return ACTION_FAILED
    return by_class(READ_STATUS, error) or 500


def error_body(message: str, status: int, kind: str) -> dict[str, Any]:
    """The one shape of every error answer."""
    return {"message": message, "error": kind, "status": status}


def dumps(data: Any, pretty: bool = False) -> str:
    if pretty:
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
