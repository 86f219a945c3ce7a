"""Issue 11, item 8: writers racing on one object all land, on both engines.

Before: the retry of pvc/lib/retry.py came straight back (no backoff, 10 attempts), so of 20
ACL inserts at once on ZooKeeper 7-8 failed with "kept changing concurrently". Each writer here is
a thread with its own store session (as separate `pvc serve` workers or processes would be), all
released at once by a barrier."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pvc.lib import schema
from pvc.lib.core import Cluster
from pvc.lib.errors import Conflict
from pvc.lib.ops.acl import add_acl, list_acls
from pvc.lib.retry import BACKOFF_MAX, ReadAgain, backoff, retrying
from tests.test_ops_acl import make_network


def insert_at_once(core: Cluster, vni: str, count: int) -> tuple[list[BaseException], float]:
    """``count`` threads, each with its own session, insert one ACL each (distinct names) at the
    same instant; returns their errors and the time from the start line to the last answer."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []
    done: list[float] = []

    def worker(i: int) -> None:
        try:
            with Cluster(core.settings) as own:
                own.store.exists(schema.NETWORKS)  # connected before the start line
                barrier.wait(60)
                add_acl(own, vni, f"rule-{i:02d}", "in", f"tcp dport {1000 + i} accept")
                done.append(time.monotonic())
        except BaseException as e:  # handed to the test
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    barrier.wait(60)
    started = time.monotonic()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    return errors, (max(done) - started if done else 0.0)


@pytest.mark.parametrize("count", [20, 50])
def test_concurrent_acl_inserts_all_land(core: Cluster, count: int) -> None:
    vni = make_network(core)
    errors, took = insert_at_once(core, vni, count)
    print(f"{core.settings.engine}: {count} concurrent inserts, {count - len(errors)} landed in {took:.2f} s")
    assert errors == [], [str(e) for e in errors[:3]]
    listed = list_acls(core, vni, direction="in")
    assert sorted(a["description"] for a in listed) == [f"rule-{i:02d}" for i in range(count)]
    assert sorted(a["order"] for a in listed) == list(range(count))  # dense, no duplicates
    assert took < 25.0


def test_backoff_is_jittered_exponential_and_capped() -> None:
    for n in range(1, 40):
        waits = [backoff(n) for _ in range(200)]
        bound = min(BACKOFF_MAX, 0.005 * 2 ** (n - 1))
        assert all(0.0 <= w <= bound for w in waits)
        assert len(set(waits)) > 150  # jittered: racing writers do not come back together
    assert max(backoff(30) for _ in range(200)) > BACKOFF_MAX / 2  # it does grow to the cap


def test_retrying_is_bounded_in_time() -> None:
    calls: list[float] = []

    def always_loses() -> Any:
        calls.append(time.monotonic())
        raise ReadAgain()

    started = time.monotonic()
    with pytest.raises(Conflict, match="kept changing concurrently"):
        retrying("The thing", always_loses, attempts=1000, budget=1.0)
    took = time.monotonic() - started
    assert took <= 1.0 + 0.1, took  # never starts an attempt past the budget
    assert 5 < len(calls) < 1000  # it backed off rather than spinning
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert max(gaps) > 0.05  # the waits grew

    calls.clear()
    with pytest.raises(Conflict):
        retrying("The thing", always_loses, attempts=3, budget=60)
    assert len(calls) == 3
