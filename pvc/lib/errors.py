"""The one exception hierarchy of pvc.

Every failure the library reports is a :class:`PvcError` subclass. The frontends translate them in
one place each: HTTP statuses in :mod:`pvc.server.errors`, exit codes in :mod:`pvc.cli.errors`.
Both tables are resolved along the class's MRO, so a subclass inherits its parent's mapping.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


class PvcError(Exception):
    """Base of every error pvc raises on purpose."""

    #: A short machine-readable name, used in the JSON error body.
    kind = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(PvcError):
    """A value given by the caller is malformed, missing or out of range."""

    kind = "invalid_argument"


class NotFound(PvcError):
    """The named object (or key) does not exist."""

    kind = "not_found"


class AlreadyExists(PvcError):
    """An object (or key) that must be absent already exists."""

    kind = "already_exists"


class Conflict(PvcError):
    """Somebody else changed the data in between; nothing was written."""

    kind = "conflict"


class InvalidState(PvcError):
    """The object is not in a state that allows the operation."""

    kind = "invalid_state"


class Unavailable(PvcError):
    """The store cannot be reached (ZooKeeper down, session lost, file unreadable)."""

    kind = "unavailable"


class OutcomeUnknown(Unavailable):
    """A write was sent but its answer never came (the connection dropped, or the store did not
    answer within its deadline): the change may or may not have been applied, now or later.

    A subclass of Unavailable, so code that handles an unreachable store still handles it, with a
    kind, an HTTP answer and an exit code of its own: the caller must read the object again before
    retrying, because a timed-out transaction can still be applied after the answer was given
    (issue 11, item 5)."""

    kind = "outcome_unknown"

    #: What every such message ends with: what happened to the change, and how to find out.
    ADVICE = ("The change may or may not have been applied: read the object again to see whether it was "
              "before retrying.")


class Timeout(PvcError):
    """A wait or a request passed its deadline."""

    kind = "timeout"


class CommandFailed(PvcError):
    """A node agent ran a command (a Ceph change) and it failed; the message is the node's reason,
    such as Ceph's own error text. Nothing was written to the tree."""

    kind = "command_failed"


class NotImplementedYet(PvcError):
    """The manual names this endpoint for a later version (its "todo v0.6")."""

    kind = "not_implemented"


class AuthenticationError(PvcError):
    """The request carries no valid credentials (HTTP only)."""

    kind = "authentication"


class ConfigError(PvcError):
    """The configuration is wrong; ``problems`` holds one line per mistake."""

    kind = "config"

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def by_class(table: Mapping[type, T], error: BaseException) -> T | None:
    """The entry of ``table`` for the error's class or its nearest ancestor, None if none."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return None


def quote(value: object) -> str:
    """Quote a user-supplied value for a message, escaping control characters."""
    text = str(value)
    escaped = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return "'" + escaped.replace("'", "\\'") + "'"
