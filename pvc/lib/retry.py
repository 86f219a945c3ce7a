"""The one retry loop of pvc: read, check, commit; when a concurrent writer won, read again.

An operation writes what it read at the versions it read (or with a guard on a parent key), so of
two writers that read the same data exactly one commit lands; the other fails with Conflict (or
AlreadyExists/NotFound for a key created or removed meanwhile) and tries again from its reads, a
bounded number of times. The read and check part is the ``attempt`` given to :func:`retrying`.

An attempt may raise AlreadyExists or NotFound on purpose, as its answer ("a network with VNI 5
already exists"); those must not be mistaken for a lost race. So an attempt commits through
:func:`commit`, which turns only the commit's own race errors into :class:`ReadAgain`.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from pvc.lib.errors import Conflict, PvcError
from pvc.lib.store import Op, Store

T = TypeVar("T")

#: How many times an attempt is made before a busy object is reported as a Conflict.
ATTEMPTS = 10


class ReadAgain(Conflict):
    """An attempt lost a race: :func:`retrying` reads again. (Outside it, it is a Conflict.)"""

    def __init__(self, message: str = "Somebody else changed the data in between; read again."):
        super().__init__(message)


def retrying(what: str, attempt: Callable[[], T], retry_on: tuple[type[PvcError], ...] = (Conflict,),
             attempts: int = ATTEMPTS) -> T:
    """The answer of ``attempt``, run again (up to ``attempts`` times in all) while it raises
    ReadAgain or one of ``retry_on``.

    :raises Conflict: "<what> kept changing concurrently; ..." after the last attempt.
    """
    for _ in range(attempts):
        try:
            return attempt()
        except ReadAgain:
            continue
        except retry_on:
            continue
    raise Conflict(f"{what} kept changing concurrently; nothing was changed, try again.")


def commit(store: Store, ops: Sequence[Op], *races: type[PvcError]) -> None:
    """Commit ``ops``; a failure of one of ``races`` (default: Conflict) means a concurrent writer
    got in between, and raises ReadAgain. Other errors pass unchanged."""
    try:
        store.commit(ops)
    except races or (Conflict,):
        raise ReadAgain() from None
