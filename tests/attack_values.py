"""Replays of issue 11's attacks on values (items 3, 6 and 10) against a running `pvc serve`.

Each ``measure_*(url, headers=None)`` sends its attack to the server at ``url`` (such as
``http://127.0.0.1:7370``; ``headers`` for an ``X-Api-Key``), cleans up what it created, and
returns ``{"item", "attack", "before", "after", "passed"}``: ``before`` is the figure from the
issue, ``after`` what was measured now. Only loopback servers are meant; every loop is bounded.
The replay script of issue 11 imports them; tests/test_hardening_values.py runs them too.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import quote as urlquote, urlencode, urlsplit

API = "/api/v1"
#: A 27-character description and a limit that backtracks exponentially on it (2 ways to match
#: each 'a', and the '!' makes every way fail): about ×2 per character with Python's `re`.
DESCRIPTION = "a" * 26 + "!"
EVIL_LIMIT = "^(a|a)*$"


def _request(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = 30.0) -> tuple[int, bytes, float]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), time.monotonic() - started
    finally:
        conn.close()


def _form(values: dict[str, str], headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    return urlencode(values).encode(), {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}


def _json_raw(text: str, headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    return text.encode("utf-8"), {"Content-Type": "application/json", **(headers or {})}


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def _free_vni(url: str, headers: dict[str, str] | None) -> int:
    status, body, _ = _request(url, "GET", API + "/network", headers=headers)
    taken = {n["vni"] for n in json.loads(body)} if status == 200 else set()
    return next(v for v in range(4000, 4095) if v not in taken)


def measure_regex(url: str, headers: dict[str, str] | None = None, requests: int = 5) -> dict[str, Any]:
    """Item 3: a crafted `limit` on a 27-character description. Sends ``requests`` such GETs one
    after the other while another thread sends ``GET /api/v1`` in a loop; after: the slowest
    crafted GET and its status, and the slowest ``GET /api/v1`` meanwhile."""
    vni = _free_vni(url, headers)
    body, head = _form({"vni": str(vni), "description": DESCRIPTION, "nettype": "bridged", "domain": "attack.local"},
                       headers)
    status, answer, _ = _request(url, "POST", API + "/network", body, head)
    assert status == 200, (status, answer)
    try:
        done = threading.Event()
        root_latency: list[float] = []

        def probe() -> None:
            deadline = time.monotonic() + 120
            while not done.is_set() and time.monotonic() < deadline:
                root_latency.append(_request(url, "GET", API, headers=headers)[2])

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        results = []
        try:
            for _ in range(requests):
                results.append(_request(url, "GET", f"{API}/network?limit={urlquote(EVIL_LIMIT)}", headers=headers,
                                        timeout=60))
        finally:
            done.set()
            prober.join(60)
        slowest = max(results, key=lambda r: r[2])
        statuses = sorted({r[0] for r in results})
        message = _message(slowest[1])
        root = max(root_latency) if root_latency else float("nan")
        passed = statuses == [400] and slowest[2] < 2.0 and "regex_timeout" in message and root < 1.0
        return {
            "item": 3,
            "attack": f"GET /network?limit={EVIL_LIMIT} over a {len(DESCRIPTION)}-character description",
            "before": "12 s for one request, the whole server frozen (GET /api/v1 and SIGTERM waited); ×1.8 per "
                      "character",
            "after": f"{statuses} in at most {slowest[2]:.3f} s ({message!r}); GET /api/v1 meanwhile: at most "
                     f"{root:.3f} s over {len(root_latency)} requests",
            "passed": passed,
        }
    finally:
        _request(url, "DELETE", f"{API}/network/{vni}", headers=headers)


def measure_surrogate(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Item 6: a JSON ``"\\ud800"`` in ``xml`` on POST /vm and PUT /vm/<vm>; after: the statuses
    and error kinds."""
    raw = '{"xml": "<domain><name>x\\ud800</name><uuid>11111111-2222-3333-4444-555555555555</uuid></domain>"}'
    answers = []
    for method, path in (("POST", API + "/vm"), ("PUT", API + "/vm/attack-no-such-vm")):
        body, head = _json_raw(raw, headers)
        status, answer, _ = _request(url, method, path, body, head)
        kind = json.loads(answer).get("error") if answer.startswith(b"{") else None
        answers.append((method, status, kind, _message(answer)))
    passed = all(status == 510 and kind == "invalid_argument" for _, status, kind, _ in answers)
    return {
        "item": 6,
        "attack": 'JSON {"xml": "...\\ud800..."} on POST /vm and PUT /vm/<vm>',
        "before": "500 with a traceback",
        "after": "; ".join(f"{m} {s} {k} ({msg!r})" for m, s, k, msg in answers),
        "passed": passed,
    }


def measure_loose_values(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Item 10: loose integers, domains, JSON duplicates, negative VM resources and a 16 MB name;
    after: what each got, and the time the 16 MB name took."""
    vni = _free_vni(url, headers)
    outcomes: list[tuple[str, int, bool]] = []  # (case, status, refused as expected)

    def post(case: str, path: str, body: bytes, head: dict[str, str]) -> tuple[int, float]:
        status, answer, elapsed = _request(url, "POST", path, body, head, timeout=60)
        outcomes.append((case, status, status == 510 and b"invalid_argument" in answer))
        return status, elapsed

    try:
        for text in ("\u0661\u0660", "1_0"):
            post(f"vni={text!r}", API + "/network",
                 *_form({"vni": text, "description": "attacknet", "nettype": "bridged"}, headers))
        for domain in ("..", "$(id)", "a;b", "-a.b", "a" * 64 + ".b"):
            post(f"domain={domain[:12]!r}", API + "/network",
                 *_form({"vni": str(vni), "description": "attacknet", "nettype": "bridged", "domain": domain}, headers))
        post("JSON duplicate vni", API + "/network",
             *_json_raw(f'{{"vni": "{vni}", "vni": "{vni + 1}", "description": "attacknet", "nettype": "bridged"}}',
                        headers))
        uuid = "11111111-2222-3333-4444-5555555555aa"
        for memory, vcpu in (("-1024", "2"), ("0", "2"), ("1024", "-2"), ("1024", "0")):
            xml = (f"<domain><name>attackvm</name><uuid>{uuid}</uuid><memory unit='MiB'>{memory}</memory>"
                   f"<vcpu>{vcpu}</vcpu></domain>")
            post(f"memory {memory} vcpu {vcpu}", API + "/vm", *_form({"xml": xml}, headers))
        big = "a" * (16 * 1024 * 1024 - 300)
        _, big_elapsed = post("16 MB description", API + "/network",
                              *_json_raw(json.dumps({"vni": str(vni), "description": big, "nettype": "bridged"}),
                                         headers))
    finally:
        for v in (vni, vni + 1, 10):  # in case a loose value was taken (only the attack's own names)
            status, body, _ = _request(url, "GET", f"{API}/network/{v}", headers=headers)
            if status == 200 and json.loads(body)[0]["description"] == "attacknet":
                _request(url, "DELETE", f"{API}/network/{v}", headers=headers)
        _request(url, "DELETE", f"{API}/vm/attackvm", headers=headers)
    refused = [case for case, _, ok in outcomes if ok]
    accepted = [f"{case} → {status}" for case, status, ok in outcomes if not ok]
    return {
        "item": 10,
        "attack": "vni=١٠ and 1_0; domain '..', '$(id)', 'a;b'; JSON duplicate keys; negative memory and vCPUs; "
                  "a 16 MB name",
        "before": "vni read as 10; those domains accepted; JSON duplicates last-wins; negative memory and vCPUs "
                  "accepted; 16 MB name: 4 s of CPU before refused",
        "after": f"{len(refused)} of {len(outcomes)} refused with 510 invalid_argument"
                 + (f" (not: {', '.join(accepted)})" if accepted else "")
                 + f"; the 16 MB name answered in {big_elapsed:.3f} s",
        "passed": not accepted and big_elapsed < 1.5,
    }


MEASURES = (measure_regex, measure_surrogate, measure_loose_values)


if __name__ == "__main__":  # python -m tests.attack_values http://127.0.0.1:7370 [token]
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7370"
    extra = {"X-Api-Key": sys.argv[2]} if len(sys.argv) > 2 else None
    for measure in MEASURES:
        figures = measure(target, extra)
        print(f"item {figures['item']}: {'PASS' if figures['passed'] else 'FAIL'}: {figures['attack']}\n"
              f"  before: {figures['before']}\n  after:  {figures['after']}")
