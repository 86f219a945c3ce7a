"""Connection handling in front of cheroot's workers: slow and greedy clients (issue 11).

cheroot gives a connection to a worker thread as soon as one byte of it can be read, and the worker
then reads the request line and headers with a timeout per read but none overall: a client that
sends a header line every few seconds holds a worker for as long as it likes, and enough such
clients hold them all. Its TLS handshake even runs in the accepting thread, so one silent client
stops every accept for the read timeout.

Here a single thread (HeadReader) reads every request's line and headers, non-blocking, with one
deadline for the whole head (``header_timeout``) and a size bound (``max_header_bytes``), and does
the TLS handshake under the same deadline. A worker gets a connection only once its whole head has
arrived, so it parses from memory and never waits on a slow head. On top, each client address may
hold ``per_client_connections`` connections at once; more are answered 503 at once and closed.

Answers given here, and cheroot's own errors (Request.simple_response), are the contract's JSON
error body.

One module on purpose: its overrides of cheroot (the connection, the request, the server, the
TLS adapter) only work together, and split apart each would hide what the others rely on.
"""

from __future__ import annotations

import _pyio
import collections
import contextlib
import io
import logging
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cheroot import errors as cheroot_errors
from cheroot.makefile import MakeFile, StreamReader
from cheroot.server import HTTPConnection, HTTPRequest
from cheroot.ssl.builtin import BuiltinSSLAdapter

from pvc.server.errors import dumps, error_body

log = logging.getLogger("pvc.server")

#: After an answer given here, the client's remaining bytes are read and dropped for up to this
#: long (and this many), so that closing does not reset the connection before the client has read
#: the answer (a close with unread data sends a TCP reset, which can discard it).
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 << 20
READ_SIZE = 65536


def answer_bytes(status: str, message: str, protocol: str = "HTTP/1.1") -> bytes:
    """A whole answer with the contract's JSON error body; the connection closes after it."""
    body = dumps(error_body(message, int(status[:3]), "http")).encode()
    head = (f"{protocol} {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


class Request(HTTPRequest):
    """cheroot's request, with its own error answers (400, 408, 413, 505, ...) in the contract's JSON
    shape instead of plain text."""

    def respond(self) -> None:
        super().respond()
        if self.chunked_read and not self.rfile.closed:
            # The app did not read the chunked body to its end (it refused it, e.g. as too large):
            # what follows on the connection is the rest of that body, not a request. cheroot would
            # keep the connection and parse it as one; close it instead, after a linger, so that a
            # client still sending the body reads the answer rather than a reset.
            self.close_connection = True
            self.conn.linger_on_close = True

    def simple_response(self, status: Any, msg: Any = "") -> None:
        # Overridden, not wrapped: cheroot writes these answers itself, as plain text; every call
        # is an error after which the connection closes.
        status = str(status)
        if isinstance(msg, bytes):
            msg = msg.decode("latin-1")
        self.close_connection = True
        try:
            self.conn.wfile.write(answer_bytes(status, msg or status[4:], self.server.protocol))
        except OSError as e:
            if e.args[0] not in cheroot_errors.socket_errors_to_ignore:
                raise


class _Source(socket.SocketIO):
    """The socket, after the bytes HeadReader has already read from it (``head``)."""

    head: memoryview | None = None

    def readinto(self, b: Any) -> int | None:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:] if n < len(self.head) else None
            return n
        return super().readinto(b)


class _Reader(StreamReader):
    def __init__(self, sock: socket.socket, bufsize: int) -> None:
        _pyio.BufferedReader.__init__(self, _Source(sock, "rb"), bufsize)  # cheroot's reader, on _Source
        self.bytes_read = 0


class Connection(HTTPConnection):
    """cheroot's connection, reading through _Source, counted per client address while open."""

    RequestHandlerClass = Request
    #: Set by ClientCounter.admit; called once when the connection closes.
    release: Callable[[], None] | None = None
    #: Close through HeadReader.linger: the client may still be sending.
    linger_on_close = False

    def __init__(self, server: Any, sock: socket.socket, makefile: Callable[..., Any] = MakeFile) -> None:
        def files(sock_: socket.socket, mode: str = "r", bufsize: int = io.DEFAULT_BUFFER_SIZE) -> Any:
            return _Reader(sock_, bufsize) if "r" in mode else makefile(sock_, mode, bufsize)

        super().__init__(server, sock, files)

    def prepend(self, data: bytes) -> None:
        """Make ``data`` the next bytes read from this connection."""
        self.rfile.raw.head = memoryview(data) if data else None

    def communicate(self) -> bool:
        with self.server.active(self):
            return super().communicate()

    def close(self) -> None:
        if self.linger_on_close:
            self.linger_on_close = False
            heads = getattr(self.server, "heads", None)
            if heads is not None and heads.linger(self):
                return  # closed by HeadReader after the linger
        release, self.release = self.release, None
        try:
            super().close()
        finally:
            if release is not None:
                release()


class DeferredHandshakeAdapter(BuiltinSSLAdapter):
    """cheroot's builtin TLS, with the handshake left to HeadReader (non-blocking, under the head's
    deadline) instead of cheroot's accepting thread, where a silent client stops every accept."""

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        return self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True), {}


class ClientCounter:
    """Open connections per client address, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def admit(self, conn: Connection) -> bool:
        """Count ``conn`` against its address, or return False when that address is at its limit."""
        address = conn.remote_addr
        if address is None:
            return True
        with self._lock:
            if self._open[address] >= self.limit:
                return False
            self._open[address] += 1
        conn.release = lambda: self._release(address)
        return True

    def _release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def count(self, address: str) -> int:
        with self._lock:
            return self._open[address]


@dataclass(eq=False)
class _Head:
    conn: Connection
    deadline: float
    refuse: bool = False  # answer 503 once the TLS handshake (if any) is done
    data: bytearray = field(default_factory=bytearray)
    handshaking: bool = False
    lingering: bool = False
    dropped: int = 0


def head_end(data: bytearray) -> int:
    """The length of the request line and headers in ``data``, or -1 while they are incomplete. A
    bare LF ending counts too: cheroot then answers 400 at once instead of our waiting."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
    return min(ends) if ends else -1


class HeadReader:
    """One thread that reads the head of every request before a worker sees it (see the module)."""

    def __init__(self, dispatch: Callable[[Connection], None], max_bytes: int, timeout: float, read_timeout: float,
                 tls: BuiltinSSLAdapter | None) -> None:
        self._dispatch = dispatch
        self._max = max_bytes
        self._timeout = timeout
        self._read_timeout = read_timeout
        self._tls = tls
        self._selector = selectors.DefaultSelector()
        self._heads: set[_Head] = set()
        self._incoming: collections.deque[_Head] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="pvc-heads", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close every connection whose head is still awaited, and end the thread."""
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        for head in self._incoming:
            head.conn.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def add(self, conn: Connection, refuse: bool = False) -> None:
        """Read the next request's head of ``conn``, then hand it to ``dispatch`` (or answer 503
        when ``refuse``). Any thread."""
        head = _Head(conn, time.monotonic() + self._timeout, refuse,
                     handshaking=isinstance(conn.socket, ssl.SSLSocket) and not conn.ssl_env)
        if conn.rfile.has_data():  # bytes read with the previous request (a pipelined request)
            head.data += conn.rfile.read1(1 << 30)  # read1 returns the buffered bytes only
        with self._lock:
            if not self._stopping:
                self._incoming.append(head)
                head = None  # type: ignore[assignment]
        if head is not None:
            conn.close()
        else:
            self._wake()

    def linger(self, conn: Connection) -> bool:
        """Close ``conn`` once its client has stopped sending (or after LINGER_SECONDS); the answer
        has been written. False when stopping (then close it yourself)."""
        head = _Head(conn, time.monotonic() + LINGER_SECONDS, lingering=True)
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn.socket, socket.SHUT_WR)
        with self._lock:
            if self._stopping:
                return False
            self._incoming.append(head)
        self._wake()
        return True

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                stopping = self._stopping
                incoming, self._incoming = self._incoming, collections.deque()
            if stopping:
                self._incoming.extend(incoming)  # closed by stop()
                for head in list(self._heads):
                    self._close(head)
                return
            for head in incoming:
                self._start(head)
            now = time.monotonic()
            for head in [h for h in self._heads if h.deadline <= now]:
                self._expire(head)
            wait = min((h.deadline for h in self._heads), default=now + 1.0) - now
            try:
                events = self._selector.select(max(0.0, min(wait, 1.0)))
            except OSError:
                continue
            for key, _ in events:
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                else:
                    self._step(key.data)

    def _start(self, head: _Head) -> None:
        try:
            head.conn.socket.setblocking(False)
            self._selector.register(head.conn.socket, selectors.EVENT_READ, head)
        except (OSError, ValueError):
            head.conn.close()
            return
        self._heads.add(head)
        self._step(head)

    def _step(self, head: _Head) -> None:
        """Make what progress the socket allows: handshake, read, decide."""
        sock = head.conn.socket
        eof = False
        try:
            if head.handshaking:
                sock.do_handshake()
                head.handshaking = False
                head.conn.ssl_env = self._tls.get_environ(sock) if self._tls is not None else {}
                self._want(head, selectors.EVENT_READ)
            if head.refuse and not head.lingering:
                return self._answer(head, "503 Service Unavailable",
                                    "Too many connections from this address; close one and try again.")
            while True:
                chunk = sock.recv(READ_SIZE)
                if not chunk:
                    eof = True
                    break
                if head.lingering:
                    head.dropped += len(chunk)
                    if head.dropped > LINGER_BYTES:
                        return self._close(head)
                    continue
                head.data += chunk
                if head_end(head.data) >= 0 or len(head.data) > self._max:
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except ssl.SSLWantWriteError:
            return self._want(head, selectors.EVENT_WRITE)
        except ssl.SSLError as e:
            if getattr(e, "reason", None) == "HTTP_REQUEST":  # plain HTTP on the TLS port
                with contextlib.suppress(OSError):
                    socket.socket.send(sock, answer_bytes(
                        "400 Bad Request", "This server speaks HTTPS only; the request was plain HTTP."))
            return self._close(head)
        except OSError:
            return self._close(head)
        if head.lingering:
            if eof:
                self._close(head)
            return
        end = head_end(head.data)
        if end > self._max or (end < 0 and len(head.data) > self._max):
            return self._answer(head, "431 Request Header Fields Too Large",
                                f"The request line and headers are larger than {self._max} bytes.")
        if end >= 0 or (eof and head.data):
            return self._hand_over(head)  # on a truncated head, cheroot answers 400
        if eof:
            self._close(head)

    def _want(self, head: _Head, events: int) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.modify(head.conn.socket, events, head)

    def _forget(self, head: _Head) -> None:
        self._heads.discard(head)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(head.conn.socket)

    def _close(self, head: _Head) -> None:
        self._forget(head)
        head.conn.close()

    def _hand_over(self, head: _Head) -> None:
        self._forget(head)
        conn = head.conn
        try:
            conn.socket.settimeout(self._read_timeout)  # blocking again, as cheroot expects
        except OSError:
            conn.close()
            return
        conn.prepend(bytes(head.data))
        self._dispatch(conn)

    def _answer(self, head: _Head, status: str, message: str) -> None:
        """Send an error answer, then linger: drop what the client still sends, then close."""
        if head.handshaking:  # no TLS session to answer in
            return self._close(head)
        try:
            head.conn.socket.send(answer_bytes(status, message))
            # No more from us; the read side stays open for the linger.
            socket.socket.shutdown(head.conn.socket, socket.SHUT_WR)
        except (OSError, ssl.SSLError):
            return self._close(head)
        head.lingering = True
        head.data = bytearray()
        head.deadline = time.monotonic() + LINGER_SECONDS
        self._want(head, selectors.EVENT_READ)

    def _expire(self, head: _Head) -> None:
        if head.lingering or head.handshaking or not head.data:
            # Nothing of a request came (an idle connection is closed silently, as cheroot does).
            return self._close(head)
        self._answer(head, "408 Request Timeout",
                     f"The request line and headers did not arrive within {self._timeout:g} s.")

    def pending(self) -> int:
        """Connections whose head is awaited (for tests)."""
        with self._lock:
            return len(self._incoming) + len(self._heads)
