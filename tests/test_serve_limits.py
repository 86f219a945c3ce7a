"""The server's own limits against hostile clients (issue 11, items 1, 2, 4, 7, 11 and the
per-client cap), on a real cheroot server on 127.0.0.1. The attacks are those of
tests/attack_connections.py; attackers bind their own loopback source addresses."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import time
from typing import Any, Callable, Iterator

import pytest

from pvc.lib.config import Settings
from tests import attack_connections as attack
from tests.test_serve import API, Live, Serve, running, start_serve, tls_files, write_config  # noqa: F401 (fixtures)


@pytest.fixture
def base(tmp_path: Any) -> Settings:
    return Settings(store_path=str(tmp_path / "pvc.sqlite"))


@pytest.fixture
def live(base: Settings) -> Iterator[Live]:
    with running(base) as live:
        yield live


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.02)  # poll interval


def taken_up(server: Any, count: int) -> bool:
    """Whether the server has taken up ``count`` slow connections: held by its head reader, or by
    every one of cheroot's workers (as before issue 11)."""
    heads = getattr(server, "heads", None)
    return heads.pending() >= count if heads is not None else server.requests.idle == 0


def json_error(answer: tuple[int, dict[str, str], bytes] | None, status: int) -> dict[str, Any]:
    assert answer is not None, "no answer"
    assert answer[0] == status, answer
    assert answer[1]["content-type"].startswith("application/json"), answer
    body = json.loads(answer[2])
    assert set(body) == {"message", "error", "status"} and body["status"] == status, body
    return body


# --- item 1: slow heads hold no worker ----------------------------------------------------------


def test_slow_heads_do_not_hold_the_workers(base: Settings) -> None:
    # Five times as many slow clients as workers (more than cheroot's 16 of old), from addresses of
    # their own, each under the cap.
    with running(base.replace(threads=4, per_client_connections=5)) as live:
        with contextlib.ExitStack() as stack:
            for source in ("127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.6"):
                stack.enter_context(attack.slow_clients(live.url, 5, source, interval=0.5))
            wait_for(lambda: taken_up(live.server, 20), 5, "the slow heads not all taken up")
            for _ in range(5):
                elapsed, status = attack.timed_get(live.url, timeout=5)
                assert status == 209 and elapsed < 1.0, (elapsed, status)


def test_a_hundred_slow_connections_from_one_address(live: Live) -> None:
    result = attack.measure_slow_clients(live.url, slow=100, source="127.0.0.2", interval=0.5, timeout=5)
    assert result["status"] == 209 and result["seconds"] < 1.0, result


def test_the_whole_head_has_one_deadline(base: Settings) -> None:
    with running(base.replace(header_timeout=1.0)) as live:
        with attack._connect(live.url, timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\n".encode())
            for n in range(20):  # a header line every 0.2 s: each read is quick, the whole is not
                try:
                    sock.sendall(f"X-Slow-{n}: {n}\r\n".encode())
                except OSError:
                    break
                if _ready(sock):  # the server answered
                    break
                time.sleep(0.2)  # the attack's own rhythm
            body = json_error(attack.read_answer(sock, time.monotonic() + 5), 408)
            assert time.monotonic() - started < 2.5
            assert "1 s" in body["message"]
        # A client that sends its head at once, then waits, is not cut short by the deadline.
        with attack._connect(live.url, timeout=10) as sock:
            sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert attack.read_answer(sock, time.monotonic() + 5)[0] == 209  # type: ignore[index]
            time.sleep(1.5)  # idle on a kept-alive connection, longer than header_timeout
            sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert attack.read_answer(sock, time.monotonic() + 5)[0] == 209  # type: ignore[index]


def _ready(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


# --- item 2: header size ------------------------------------------------------------------------


def test_header_size_is_bounded(base: Settings) -> None:
    with running(base.replace(max_header_bytes=4096)) as live:
        def send(extra: int) -> tuple[int, dict[str, str], bytes] | None:
            with attack._connect(live.url, timeout=10) as sock:
                sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * extra}\r\n\r\n".encode())
                return attack.read_answer(sock, time.monotonic() + 10)

        assert send(3000)[0] == 209  # type: ignore[index]
        body = json_error(send(5000), 431)
        assert "4096 bytes" in body["message"]
        json_error(send(1 << 20), 431)  # the client still sending gets the answer, not a reset
        assert attack.timed_get(live.url)[1] == 209


def test_huge_headers_cost_no_memory(live: Live) -> None:
    import os

    result = attack.measure_header_memory(live.url, os.getpid(), count=4, size=16 << 20)
    assert result["peak_mb"] - result["before_mb"] < 40, result
    assert all(s in (431, None) for s in result["statuses"]), result
    assert attack.timed_get(live.url)[1] == 209


# --- the per-client cap -------------------------------------------------------------------------


def test_per_client_connections(base: Settings) -> None:
    with running(base.replace(per_client_connections=3)) as live:
        result = attack.measure_per_client(live.url, connections=7, source="127.0.0.4")
        assert result == {"refused": 4, "open": 3}, result
        socks = [attack._connect(live.url, "127.0.0.7") for _ in range(3)]
        try:
            with attack._connect(live.url, "127.0.0.7") as extra:
                body = json_error(attack.read_answer(extra, time.monotonic() + 2), 503)
                assert "Too many connections" in body["message"]
            # Other addresses are served meanwhile, and a closed connection frees its place.
            assert attack.timed_get(live.url)[1] == 209
            socks.pop().close()
            wait_for(lambda: live.server.clients.count("127.0.0.7") < 3, 5, "the closed connection not released")
            assert attack.timed_get(live.url, source="127.0.0.7")[1] == 209
        finally:
            for s in socks:
                s.close()


# --- item 4: listen backlog ---------------------------------------------------------------------


def test_two_hundred_simultaneous_connections(base: Settings) -> None:
    with running(base) as live:
        assert live.server.request_queue_size == base.listen_backlog == 128
        result = attack.measure_backlog(live.url, count=200, within=10)
        assert result["answered"] == 200, result


# --- item 11: cheroot's own errors --------------------------------------------------------------


def test_cheroot_errors_are_the_contract_json(live: Live) -> None:
    results = attack.measure_error_shapes(live.url)
    assert all(ok for _, ok in results.values()), results
    assert results["HTTP/2.0"][0] == 505 and results["huge Content-Length"][0] == 413


# --- item 7: SIGTERM whatever the clients do ----------------------------------------------------


@pytest.mark.parametrize("half_sent", [1, 20])
def test_sigterm_with_half_sent_requests(tmp_path: Any, start_serve: Callable[..., Serve], half_sent: int) -> None:
    serve = start_serve(write_config(tmp_path), "--listen", "127.0.0.1:0", "--no-agent")
    took = attack.measure_sigterm(serve.process, serve.url, half_sent=half_sent)
    assert serve.process.returncode == 0, serve.stderr()
    assert took < 2.0, f"{took:.2f} s"


# --- TLS: the handshake is not done by the accepting thread -------------------------------------


def test_a_silent_tls_client_blocks_nobody(tmp_path: Any, tls_files: dict[str, str],
                                           start_serve: Callable[..., Serve]) -> None:
    serve = start_serve(write_config(tmp_path, tls=(tls_files["cert"], tls_files["key"])), "--listen", "127.0.0.1:0",
                        "--no-agent")
    context = ssl.create_default_context(cafile=tls_files["cert"])
    host, port = attack._address(serve.url.replace("https://", "http://"))
    with socket.create_connection((host, port), source_address=("127.0.0.2", 0)):  # says nothing
        time.sleep(0.2)  # let the server accept it first
        started = time.monotonic()
        with socket.create_connection((host, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = attack.read_answer(sock, time.monotonic() + 5)
        assert answer is not None and answer[0] == 209 and time.monotonic() - started < 1.0
    # Plain HTTP on the TLS port: a JSON 400.
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {API} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        json_error(attack.read_answer(sock, time.monotonic() + 5), 400)
    assert serve.stop(signal.SIGTERM) == 0
