"""Exit codes of the `pvc` command: one table, resolved along the error's class hierarchy."""

from __future__ import annotations

import enum

import click

from pvc.lib.errors import (
    AlreadyExists,
    ConfigError,
    Conflict,
    InvalidArgument,
    InvalidState,
    NotFound,
    OutcomeUnknown,
    PvcError,
    Timeout,
    Unavailable,
    by_class,
)


class Exit(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2  # Click's own usage errors, bad values and configuration mistakes
    NOT_FOUND = 3
    CONFLICT = 4  # already exists, changed concurrently, wrong state
    UNAVAILABLE = 5  # the store cannot be reached
    TIMEOUT = 6
    OUTCOME_UNKNOWN = 7  # a write was sent but not answered: it may or may not have been applied
    INTERRUPTED = 130


EXIT_CODES: dict[type[PvcError], Exit] = {
    PvcError: Exit.FAILED,
    InvalidArgument: Exit.USAGE,
    ConfigError: Exit.USAGE,
    NotFound: Exit.NOT_FOUND,
    AlreadyExists: Exit.CONFLICT,
    Conflict: Exit.CONFLICT,
    InvalidState: Exit.CONFLICT,
    Unavailable: Exit.UNAVAILABLE,
    OutcomeUnknown: Exit.OUTCOME_UNKNOWN,
    Timeout: Exit.TIMEOUT,
}


def exit_code(error: PvcError) -> Exit:
    return by_class(EXIT_CODES, error) or Exit.FAILED


class CommandFailed(click.ClickException):
    """A PvcError on its way out of the CLI: `Error: <message>` on stderr and its exit code."""

    def __init__(self, error: PvcError):
        super().__init__(error.message)
        self.exit_code = int(exit_code(error))

    def format_message(self) -> str:
        # A configuration error lists one problem per line, each prefixed like the first.
        return self.message.replace("\n", "\nError: ")
