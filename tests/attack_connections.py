"""Connection-level attacks on a running `pvc serve` (issue 11, items 1, 2, 4, 7 and 11), each a
``measure_*`` function that returns figures, so that a replay script and the tests share them.

Every function talks raw HTTP over sockets to the server's address (127.0.0.1 only). Attackers
that must look like other clients bind a source address of their own on the loopback network
(127.0.0.2, 127.0.1.x): Linux routes all of 127.0.0.0/8 to the loopback interface.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

API = "/api/v1"


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port, url  # loopback only
    return parts.hostname, parts.port


def _connect(url: str, source: str | None = None, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(_address(url), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    return sock


def read_answer(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes] | None:
    """Read one HTTP answer (status, headers, body) by ``deadline``; None if none came."""
    data = b""
    while b"\r\n\r\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionError):
            return None
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionError):
            break
        if not chunk:
            break
        body += chunk
    return status, headers, body


def timed_get(url: str, path: str = API, source: str | None = None, timeout: float = 10.0) -> tuple[float, int | None]:
    """GET ``path`` on a new connection: (seconds to the answer, status), or (timeout, None)."""
    started = time.monotonic()
    try:
        with _connect(url, source, timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = read_answer(sock, started + timeout)
    except OSError:
        return timeout, None
    if answer is None:
        return timeout, None
    return time.monotonic() - started, answer[0]


@contextlib.contextmanager
def slow_clients(url: str, count: int, source: str | None = "127.0.0.2", interval: float = 2.0) -> Iterator[list[socket.socket]]:
    """``count`` connections that each send a request line, then one header line every
    ``interval`` seconds, for as long as the block lasts (a slowloris)."""
    socks: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(count):
            try:
                sock = _connect(url, source, timeout=5)
                sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\n".encode())
            except OSError:
                break  # refused or reset: the server defends itself
            socks.append(sock)

        def drip() -> None:
            n = 0
            while not stop.wait(interval):
                n += 1
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.send(f"X-Slow-{n}: {n}\r\n".encode())

        thread = threading.Thread(target=drip, daemon=True)
        thread.start()
        yield socks
    finally:
        stop.set()
        for sock in socks:
            sock.close()


def measure_slow_clients(url: str, slow: int = 100, source: str | None = "127.0.0.2", interval: float = 2.0,
                         timeout: float = 10.0) -> dict[str, Any]:
    """Item 1: ``slow`` slowloris connections from ``source``, then a normal GET /api/v1 from
    127.0.0.1 while they drip. Returns the seconds it took to be answered (``timeout`` if not) and
    its status."""
    with slow_clients(url, slow, source, interval) as socks:
        # Let the server take up every slow connection before the normal client comes.
        time.sleep(min(1.0, interval / 2))  # not a wait for a state: the attack's own rhythm
        elapsed, status = timed_get(url, timeout=timeout)
        return {"connected": len(socks), "seconds": elapsed, "status": status}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _big_header(url: str, size: int, statuses: list[int | None], source: str | None = None) -> None:
    chunk = b"a" * (1 << 20)
    status = None
    try:
        with _connect(url, source, timeout=30) as sock:
            sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode())
            sent = 0
            while sent < size:
                sock.sendall(chunk[: min(len(chunk), size - sent)])
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
            answer = read_answer(sock, time.monotonic() + 30)
            status = answer[0] if answer else None
    except OSError:
        pass  # the server closed the connection on us: refused early
    statuses.append(status)


def measure_header_memory(url: str, pid: int, count: int = 4, size: int = 64 << 20) -> dict[str, Any]:
    """Item 2: ``count`` requests at once, each with a ``size``-byte header. Returns the server's
    RSS in MB before, at its peak during, and after, and the statuses (None: connection closed
    without an answer)."""
    before = rss_mb(pid)
    statuses: list[int | None] = []
    threads = [threading.Thread(target=_big_header, args=(url, size, statuses, f"127.0.2.{i + 1}")) for i in range(count)]
    peak = before
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mb(pid))
        for t in threads:
            t.join(0.05)
    after = rss_mb(pid)
    return {"before_mb": before, "peak_mb": max(peak, after), "after_mb": after, "statuses": statuses}


def measure_backlog(url: str, count: int = 200, within: float = 30.0) -> dict[str, Any]:
    """Item 4: ``count`` connections opened at once (each from its own loopback address, so that
    the per-client cap is not what is measured), each sending GET /api/v1. Returns how many were
    answered within ``within`` seconds, and the slowest answer."""
    host, port = _address(url)
    socks: dict[socket.socket, bytes] = {}
    for i in range(count):
        sock = socket.socket()
        sock.bind((f"127.0.1.{i % 250 + 1}" if count <= 250 else "127.0.0.1", 0))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect((host, port))
        socks[sock] = b""
    started = time.monotonic()
    request = f"GET {API} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    unsent = set(socks)
    answered: dict[socket.socket, float] = {}
    try:
        while len(answered) < count and time.monotonic() - started < within:
            waiting = [s for s in socks if s not in answered]
            readable, writable, _ = select.select([s for s in waiting if s not in unsent],
                                                  [s for s in waiting if s in unsent], [], 0.2)
            for s in writable:
                try:
                    s.send(request)
                except BlockingIOError:
                    continue
                except OSError:
                    answered.setdefault(s, float("inf"))
                unsent.discard(s)
            for s in readable:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                socks[s] += chunk
                if b"\r\n" in socks[s] or not chunk:
                    answered[s] = time.monotonic() - started if socks[s].startswith(b"HTTP/") else float("inf")
    finally:
        for s in socks:
            s.close()
    times = [t for t in answered.values() if t != float("inf")]
    return {"answered": len(times), "of": count, "slowest": max(times) if times else None}


def measure_sigterm(process: subprocess.Popen, url: str, half_sent: int = 1, timeout: float = 30.0) -> float:
    """Item 7: ``half_sent`` connections each send half a request (a request line and one header),
    then the server gets SIGTERM. Returns the seconds until the process exited."""
    socks = []
    try:
        for i in range(half_sent):
            sock = _connect(url, f"127.0.3.{i + 1}", timeout=5)
            sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\n".encode())
            socks.append(sock)
        # The last one must have been taken up by the server: a full request after it is answered.
        timed_get(url, timeout=5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=timeout)
        return time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()


#: Requests that cheroot refuses itself, before the app sees them.
MALFORMED = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "bad protocol": b"GET /api/v1 FTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/2.0": b"GET /api/v1 HTTP/2.0\r\nHost: x\r\n\r\n",
    "lower-case method": b"get /api/v1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute URI": b"GET http://x/api/v1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad header": b"GET /api/v1 HTTP/1.1\r\nHost x\r\n\r\n",
    "bad Content-Length": b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "huge Content-Length": b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    "unknown Transfer-Encoding": b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "fragment": b"GET /api/v1#x HTTP/1.1\r\nHost: x\r\n\r\n",
}


def measure_error_shapes(url: str) -> dict[str, tuple[int | None, bool]]:
    """Item 11: each MALFORMED request → (status, whether the body is the contract's JSON error
    ``{"message", "error", "status"}`` with the answer's status)."""
    results: dict[str, tuple[int | None, bool]] = {}
    for name, data in MALFORMED.items():
        with _connect(url, timeout=10) as sock:
            sock.sendall(data)
            answer = read_answer(sock, time.monotonic() + 10)
        if answer is None:
            results[name] = (None, False)
            continue
        status, headers, body = answer
        try:
            parsed = json.loads(body)
            ok = (headers.get("content-type", "").startswith("application/json") and set(parsed) == {"message", "error", "status"}
                  and parsed["status"] == status)
        except ValueError:
            ok = False
        results[name] = (status, ok)
    return results


def measure_per_client(url: str, connections: int = 20, source: str = "127.0.0.4") -> dict[str, int]:
    """How many of ``connections`` idle connections from one address the server answers 503 at
    once (the per-client cap), while the others stay open."""
    socks = []
    refused = 0
    try:
        for _ in range(connections):
            sock = _connect(url, source, timeout=5)
            socks.append(sock)
        for sock in socks:
            sock.setblocking(False)
        deadline = time.monotonic() + 2.0
        seen: set[socket.socket] = set()
        while time.monotonic() < deadline and len(seen) < connections:
            readable, _, _ = select.select([s for s in socks if s not in seen], [], [], 0.1)
            for s in readable:
                seen.add(s)
                s.setblocking(True)
                answer = read_answer(s, time.monotonic() + 2)
                refused += bool(answer and answer[0] == 503)
    finally:
        for sock in socks:
            sock.close()
    return {"refused": refused, "open": connections - refused}


if __name__ == "__main__":  # a quick look at a running server: python -m tests.attack_connections URL PID
    import sys

    target, pid = sys.argv[1], int(sys.argv[2])
    print("slow clients", measure_slow_clients(target))
    print("header memory", measure_header_memory(target, pid))
    print("backlog", measure_backlog(target))
    print("error shapes", measure_error_shapes(target))
    print("per client", measure_per_client(target))
