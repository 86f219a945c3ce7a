"""Replays of the store attacks of issue 11 (items 5, 8 and 12), for the replay script.

Each ``measure_*()`` starts what it needs (ZooKeeper on loopback, a real cheroot server in this
process), runs a bounded attack, stops everything and returns a dict: ``item``, ``attack``,
``before`` (the figure from the issue), ``after`` (measured now) and ``passed``.

    python -m tests.attack_store          # prints the three results
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from typing import Any

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.errors import PvcError, Unavailable
from pvc.lib.ops.acl import list_acls
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.store import Create
from pvc.lib.store.zookeeper import ZooKeeperStore
from pvc.server.run import build_server, url_of
from tests.test_ops_acl import make_network
from tests.test_retry_backoff import insert_at_once
from tests.test_serve import API, call
from tests.test_zk_faults import Traffic, chroot_on
from tests.zkserver import ZooKeeperEnsemble, ZooKeeperServer


def measure_outcome_unknown(trials: int = 3, timeout: float = 1.0) -> dict[str, Any]:
    """Item 5: writes sent to a frozen ZooKeeper; what each was answered, and whether it landed."""
    kinds: dict[str, int] = {}
    landed = 0
    with tempfile.TemporaryDirectory() as d, ZooKeeperServer(d) as server:
        store = ZooKeeperStore([server.hosts], timeout=timeout)
        try:
            store.commit([Create("/attack", "")])
            for i in range(trials):
                assert server.process is not None
                os.kill(server.process.pid, signal.SIGSTOP)
                try:
                    try:
                        store.commit([Create(f"/attack/w{i}", "x")])
                        kinds["ok"] = kinds.get("ok", 0) + 1
                    except PvcError as e:
                        kinds[e.kind] = kinds.get(e.kind, 0) + 1
                finally:
                    os.kill(server.process.pid, signal.SIGCONT)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        landed += store.exists(f"/attack/w{i}")
                        break
                    except Unavailable:
                        time.sleep(0.1)  # waiting for the session to come back, bounded
        finally:
            store.close()
    return {
        "item": 5,
        "attack": f"a write to a frozen ZooKeeper ({trials} trials, deadline {timeout:g} s)",
        "before": "answered 503 'unavailable' ('did not answer within 5 s'), yet applied later (2 of 6)",
        "after": f"answers {kinds}; {landed} of {trials} landed after the resume",
        "passed": kinds == {"outcome_unknown": trials},
    }


def measure_acl_contention(counts: tuple[int, ...] = (20, 50)) -> dict[str, Any]:
    """Item 8: ``count`` ACL inserts at once (distinct names), each with its own ZooKeeper session."""
    results: dict[int, tuple[int, float]] = {}
    with tempfile.TemporaryDirectory() as d, ZooKeeperServer(d) as server:
        for count in counts:
            settings = Settings(coordinators=(server.hosts,), zk_chroot=chroot_on(server.hosts))
            with Cluster(settings) as setup:
                init_cluster(setup)
                vni = make_network(setup)
                errors, took = insert_at_once(setup, vni, count)
                stored = len(list_acls(setup, vni, direction="in"))
            results[count] = (min(count - len(errors), stored), took)
    return {
        "item": 8,
        "attack": "concurrent ACL inserts with distinct names on ZooKeeper",
        "before": "of 20 at once, 7-8 refused with 510 'kept changing concurrently'",
        "after": "; ".join(f"{n}/{c} landed in {t:.2f} s" for c, (n, t) in results.items()),
        "passed": all(n == c for c, (n, _) in results.items()),
    }


def measure_hung_server(deadline: float = 2.5, seconds: float = 8.0) -> dict[str, Any]:
    """Item 12: the server `pvc serve` is connected to is stopped (SIGSTOP) under steady traffic
    (a GET every 0.3 s from each of 3 clients) on a three-server ensemble."""
    with tempfile.TemporaryDirectory() as d, ZooKeeperEnsemble(d) as ens:
        settings = Settings(coordinators=tuple(ens.hosts.split(",")), zk_chroot=chroot_on(ens.hosts),
                            store_timeout=deadline, listen_port=0)
        cluster = Cluster(settings)
        init_cluster(cluster)
        server = build_server(cluster)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        try:
            url = url_of(server, cluster.settings)
            store = cluster.store
            assert isinstance(store, ZooKeeperStore)
            session = store.client.client_id[0]
            hung = ens.serving(session)
            assert hung is not None

            def get() -> bool:
                try:
                    return call(url, "GET", API + "/node", timeout=deadline * 3).status == 200
                except OSError:
                    return False

            with ens.frozen(hung):
                records = Traffic(get, interval=0.3).run(seconds)
                now_on = ens.serving(session)
        finally:
            server.stop()
            thread.join(15)
            cluster.close()
    failed = sum(not ok for _, _, ok in records)
    first_ok = min((end for _, end, ok in records if ok), default=None)
    after_first = sum(1 for s, _, ok in records if not ok and first_ok is not None and s > first_ok)
    moved = now_on is not None and now_on is not hung
    return {
        "item": 12,
        "attack": f"the connected server of 3 stopped for {seconds:g} s under steady traffic (deadline {deadline:g} s)",
        "before": "42 of 42 answers 503 for the whole 30 s freeze; never moved to the healthy servers",
        "after": (f"{failed} of {len(records)} answers not 200; served again "
                  f"{'never' if first_ok is None else f'{first_ok:.2f} s'} after the freeze; "
                  f"same session on another server: {moved}"),
        "passed": first_ok is not None and first_ok <= deadline + 1.5 and after_first == 0 and moved,
    }


if __name__ == "__main__":
    for measure in (measure_outcome_unknown, measure_acl_contention, measure_hung_server):
        result = measure()
        print(f"item {result['item']}: {result['attack']}\n  before: {result['before']}\n"
              f"  after:  {result['after']}\n  {'PASS' if result['passed'] else 'FAIL'}")
