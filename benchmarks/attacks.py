#!/usr/bin/env python3
"""Replay every attack of issue 11 against a running `pvc serve` and print, per attack, the figure
before (from the issue) and after (measured now); exit 1 if any attack still succeeds.

It starts its own `pvc serve --no-agent` on 127.0.0.1 (embedded store, authentication on) and,
for the ZooKeeper items, its own throwaway ZooKeeper servers (a three-server ensemble for the hung
server). The attacks themselves live in tests/attack_*.py, where the test suite runs them too.
Only loopback addresses are used; every loop is bounded. Needs root or a Linux where any
127.x.y.z address can be bound (attackers use their own loopback addresses).

    .venv/bin/python benchmarks/attacks.py            # about two minutes
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tests import attack_auth, attack_connections, attack_store, attack_values  # noqa: E402

TOKEN = "attack-replay-token-0123456789"


class Serve:
    """A `pvc serve --no-agent` subprocess on a free loopback port, authentication on."""

    def __init__(self, directory: Path):
        self.directory = directory
        config = {"pvc": {
            "debug": False, "coordinators": [],
            "api": {"listen_address": "127.0.0.1", "listen_port": 7370,
                    "authentication": {"enabled": True, "secret_key": "attack-replay-secret",
                                       "tokens": [{"description": "replay", "token": TOKEN}]},
                    "ssl": {"enabled": False}},
            "store": {"path": str(directory / "pvc.sqlite")},
        }}
        self.config = directory / "pvc-api.yaml"
        self.config.write_text(yaml.safe_dump(config))
        pvc = str(Path(sys.executable).parent / "pvc")
        self.log = open(directory / "serve.log", "w")
        self.process = subprocess.Popen([pvc, "--config", str(self.config), "serve", "--no-agent", "--listen",
                                         "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        self.url = ""
        assert self.process.stdout is not None
        while not self.url and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise SystemExit(f"pvc serve exited: {(directory / 'serve.log').read_text()[-2000:]}")
            match = re.match(r"Listening on (http://\S+)/api/v1", line.strip())
            if match:
                self.url = match.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


def row(item: int, attack: str, before: str, after: str, passed: bool) -> dict[str, Any]:
    return {"item": item, "attack": attack, "before": before, "after": after, "passed": passed}


def connection_attacks(serve: Serve) -> list[dict[str, Any]]:
    url, rows = serve.url, []
    for slow in (17, 100):
        r = attack_connections.measure_slow_clients(url, slow=slow)
        rows.append(row(1, f"{slow} slow header senders (a line every 2 s), then a normal GET /api/v1",
                        "17 took all 16 workers: no answer", f"{r['status']} in {r['seconds']:.3f} s",
                        r["status"] == 209 and r["seconds"] < 1.0))
    r = attack_connections.measure_header_memory(url, serve.process.pid)
    rows.append(row(2, "4 requests at once with a 64 MiB header each", "accepted; 116 → 836 MB, 503 MB kept",
                    f"statuses {r['statuses']}; {r['before_mb']:.0f} → {r['peak_mb']:.0f} MB, "
                    f"{r['after_mb']:.0f} MB after",
                    all(s in (431, None) for s in r["statuses"]) and r["peak_mb"] - r["before_mb"] < 50))
    r = attack_connections.measure_backlog(url)
    slowest = f"{r['slowest']:.2f} s" if r["slowest"] is not None else "none"
    rows.append(row(4, "200 simultaneous connects, each GET /api/v1", "38 of 200 unanswered within 30 s",
                    f"{r['answered']} of {r['of']} answered, slowest {slowest}", r["answered"] == r["of"]))
    shapes = attack_connections.measure_error_shapes(url)
    good = sum(ok for _, ok in shapes.values())
    rows.append(row(11, f"{len(shapes)} requests cheroot refuses itself (bad request line, header, length, ...)",
                    "plain-text errors", f"{good} of {len(shapes)} answered with the contract's JSON",
                    good == len(shapes)))
    r = attack_connections.measure_per_client(url)
    rows.append(row(1, "20 idle connections from one address (the per-client cap)", "all held a worker",
                    f"{r['refused']} refused with 503, {r['open']} kept", r["refused"] > 0))
    return rows


def sigterm_attacks(directory: Path) -> list[dict[str, Any]]:
    rows = []
    for half_sent, before in ((1, "5 s"), (20, "15 s")):
        serve = Serve(directory / f"sigterm-{half_sent}")
        try:
            seconds = attack_connections.measure_sigterm(serve.process, serve.url, half_sent=half_sent)
        finally:
            serve.stop()
        rows.append(row(7, f"SIGTERM with {half_sent} half-sent request(s)", f"exit after {before}",
                        f"exit after {seconds:.2f} s", seconds < 2.0))
    return rows


def run(name: str, measure: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    print(f"... {name}", flush=True)
    started = time.monotonic()
    rows = measure()
    print(f"    {time.monotonic() - started:.1f} s", flush=True)
    return rows


def main() -> int:
    headers = {"X-Api-Key": TOKEN}
    with tempfile.TemporaryDirectory(prefix="pvc-attacks-") as tmp:
        directory = Path(tmp)
        for sub in ("main", "sigterm-1", "sigterm-20"):
            (directory / sub).mkdir()
        serve = Serve(directory / "main")
        rows: list[dict[str, Any]] = []
        try:
            rows += run("connections (items 1, 2, 4, 11)", lambda: connection_attacks(serve))
            rows += run("values (items 3, 6, 10)", lambda: [m(serve.url, headers) for m in attack_values.MEASURES])
            rows += run("authentication (item 9)", lambda: attack_auth.measure_all(serve.url + "/api/v1", TOKEN))
        finally:
            serve.stop()
        rows += run("SIGTERM (item 7)", lambda: sigterm_attacks(directory))
        rows += run("ZooKeeper (items 5, 8, 12)", lambda: [attack_store.measure_outcome_unknown(),
                                                           attack_store.measure_acl_contention(),
                                                           attack_store.measure_hung_server()])
    rows.sort(key=lambda r: r["item"])
    print("\n| item | attack | before (issue 11) | after | |\n|---:|---|---|---|---|")
    for r in rows:
        print(f"| {r['item']} | {r['attack']} | {r['before']} | {r['after']} | {'pass' if r['passed'] else 'FAIL'} |")
    failed = [r for r in rows if not r["passed"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} attacks held off")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
