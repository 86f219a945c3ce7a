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

import random
import time
from typing import Callable, Sequence, TypeVar

from pvc.lib.errors import Conflict, PvcError
from pvc.lib.store import Op, Store

T = TypeVar("T")

#: How many times an attempt is made, at most, before a busy object is reported as a Conflict.
#: Sized for 50 writers racing on one object: each round lets at least one of them land, and the
#: backoff below spreads the others out, so a few dozen attempts are plenty (issue 11, item 8).
ATTEMPTS = 60

#: The backoff between attempts: "full jitter" (a uniform random wait between 0 and an exponential
#: cap), so writers that lost the same race do not come back at the same instant and lose again.
#: Without it, 20 ACL inserts at once on ZooKeeper left 7-8 "kept changing concurrently".
BACKOFF_FIRST = 0.005
BACKOFF_MAX = 0.25

#: However many attempts remain, no new attempt starts this long after the first one: an
#: operation never spends more than about this waiting for its turn.
RETRY_BUDGET = 15.0


class ReadAgain(Conflict):
    """An attempt lost a race: :func:`retrying` reads again. (Outside it, it is a Conflict.)"""

    def __init__(self, message: str = "Somebody else changed the data in between; read again."):
        super().__init__(message)


def backoff(attempt: int, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX) -> float:
    """The wait after the ``attempt``-th lost race (1 for the first): uniform in [0, first × 2^(n-1)],
    the bound capped at ``cap``."""
    return _jitter.uniform(0.0, min(cap, first * 2 ** min(attempt - 1, 30)))


#: Our own generator: the module-level one's state is shared with every other user of `random`.
_jitter = random.Random()


def retrying(what: str, attempt: Callable[[], T], retry_on: tuple[type[PvcError], ...] = (Conflict,),
             attempts: int = ATTEMPTS, budget: float = RETRY_BUDGET) -> T:
    """The answer of ``attempt``, run again (up to ``attempts`` times in all, and never starting a
    new one ``budget`` seconds after the first) while it raises ReadAgain or one of ``retry_on``,
    waiting a random, exponentially growing time (:func:`backoff`) before each new attempt.

    :raises Conflict: "<what> kept changing concurrently; ..." after the last attempt.
    """
    deadline = time.monotonic() + budget
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except (ReadAgain, *retry_on):
            pass
        if n == attempts:
            break
        wait = backoff(n)
        if time.monotonic() + wait > deadline:
            break
        time.sleep(wait)  # the backoff itself: lets the writer that won finish before we read again
    raise Conflict(f"{what} kept changing concurrently; nothing was changed, try again.")


def commit(store: Store, ops: Sequence[Op], *races: type[PvcError]) -> None:
    """Commit ``ops``; a failure of one of ``races`` (default: Conflict) means a concurrent writer
    got in between, and raises ReadAgain. Other errors pass unchanged."""
    try:
        store.commit(ops)
    except races or (Conflict,):
        raise ReadAgain() from None
