"""Running the app on cheroot: binding, TLS, and a graceful stop on SIGTERM and SIGINT.

This is the only module that imports cheroot.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import ssl
import threading
from typing import Any, Callable, Iterator

from cheroot import wsgi

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.server.app import create_app, with_access_log
from pvc.server.connections import ClientCounter, Connection, DeferredHandshakeAdapter, HeadReader
from pvc.server.values import DRAIN, MAX_BODY

log = logging.getLogger("pvc.server")

#: On SIGTERM, requests being answered get this long to finish; then their sockets are shut down,
#: so that a client that stops reading or sending cannot delay the exit (issue 11, item 7).
STOP_GRACE = 0.5


class StartupError(Exception):
    """`pvc serve` cannot start; the message says why."""


class _Server(wsgi.Server):
    """cheroot's WSGI server with the connection handling of pvc.server.connections: request heads
    read by one thread under a deadline and a size bound, a per-client connection cap, TLS
    handshakes out of the accepting thread, JSON error answers, and a stop bounded in time."""

    # cheroot's stop() waits for its connection loop to wake up from select(), which happens
    # every expiration_interval (0.5 s by default): a shorter one makes every stop that quick.
    expiration_interval = 0.1
    ConnectionClass = Connection

    def __init__(self, settings: Settings, app: Any) -> None:
        host = settings.listen_address.strip("[]")
        super().__init__((host, settings.listen_port), app, numthreads=settings.threads, max=settings.threads,
                         server_name="pvc", request_queue_size=settings.listen_backlog)
        self.header_timeout = settings.header_timeout
        self.max_header_bytes = settings.max_header_bytes
        # cheroot's own bound on the head, as a backstop only: HeadReader refuses a larger head
        # with 431 before a worker parses it (the slack covers a leading empty line).
        self.max_request_header_size = settings.max_header_bytes + 64
        self.clients = ClientCounter(settings.per_client_connections)
        self.heads: HeadReader | None = None
        self._active: set[Connection] = set()
        self._active_lock = threading.Lock()
        self.shutdown_timeout = STOP_GRACE + 1.0  # the cut below ends every worker's wait before

    def prepare(self) -> None:
        super().prepare()
        self.heads = HeadReader(super().process_conn, self.max_header_bytes, self.header_timeout, self.timeout,
                                self.ssl_adapter)
        self.heads.start()

    def process_conn(self, conn: Connection) -> None:
        # cheroot calls this for every connection with something to read: a new one, or a kept-alive
        # one whose next request begins. Its head is read by HeadReader, which hands it to cheroot's
        # workers (super().process_conn) once complete.
        heads = self.heads
        if heads is None or not self.ready:
            conn.close()
            return
        new = conn.release is None  # a counted connection has its release
        heads.add(conn, refuse=new and not self.clients.admit(conn))

    @contextlib.contextmanager
    def active(self, conn: Connection) -> Iterator[None]:
        """Track ``conn`` while a worker answers it."""
        with self._active_lock:
            self._active.add(conn)
        try:
            yield
        finally:
            with self._active_lock:
                self._active.discard(conn)

    def _cut_active(self) -> None:
        with self._active_lock:
            conns = list(self._active)
        for conn in conns:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown (also under TLS): blocked reads and writes return.
                socket.socket.shutdown(conn.socket, socket.SHUT_RDWR)

    def stop(self) -> None:
        if not self.ready:
            return
        if self.heads is not None:
            self.heads.stop()  # connections still sending their head are closed at once
        cut = threading.Timer(STOP_GRACE, self._cut_active)
        cut.daemon = True
        cut.start()
        try:
            super().stop()
        finally:
            cut.cancel()

    @staticmethod
    def bind_socket(socket_, bind_addr):  # type: ignore[no-untyped-def]
        try:
            return wsgi.Server.bind_socket(socket_, bind_addr)
        except OSError:
            socket_.close()  # cheroot drops the socket of a failed bind without closing it
            raise


def check_tls(settings: Settings) -> None:
    """Load the certificate and key once, so a bad file is a clear error before binding."""
    # ssl reports a missing or unreadable file without its name, so each is opened first.
    for key, path in (("cert_file", settings.ssl_cert_file), ("key_file", settings.ssl_key_file)):
        try:
            with open(path or "", "rb"):
                pass
        except OSError as e:
            raise StartupError(f"pvc.api.ssl.{key}: cannot read {path!r}: {e.strerror or e}") from None
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.ssl_cert_file or "", settings.ssl_key_file or "")
    except (ssl.SSLError, OSError) as e:
        raise StartupError(
            f"pvc.api.ssl: cannot use certificate {settings.ssl_cert_file} with key {settings.ssl_key_file}: {e}"
        ) from None


def build_server(core: Cluster) -> wsgi.Server:
    """A bound (prepared) cheroot server for ``core``; port 0 picks a free port."""
    settings = core.settings
    if settings.ssl_enabled:
        check_tls(settings)
    app = with_access_log(create_app(core))
    server = _Server(settings, app)
    # The server's own bound on a request body, with room above MAX_BODY, so that a body a little
    # too large still gets the contract's JSON answer from the app; beyond, cheroot answers 413.
    server.max_request_body_size = MAX_BODY + DRAIN
    if settings.ssl_enabled:
        server.ssl_adapter = DeferredHandshakeAdapter(settings.ssl_cert_file, settings.ssl_key_file)
    try:
        server.prepare()
    except OSError as e:
        raise StartupError(f"Cannot listen on {settings.listen_address}:{settings.listen_port}: {e.strerror or e}") from None
    return server


def url_of(server: wsgi.Server, settings: Settings) -> str:
    host, port = server.bind_addr[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if settings.ssl_enabled else 'http'}://{host}:{port}/api/v1"


def serve_forever(server: wsgi.Server, on_stop: Callable[[], None], on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly. Call from the main thread.

    cheroot serves in a thread of its own; the signal handlers only record the signal and this
    thread does the stopping. (Raising from a handler instead would interrupt cheroot at an
    arbitrary point, e.g. inside its queue's lock, and can hang the shutdown.) This thread sleeps
    in select() on a socket that the signal (through Python's wakeup fd) or the end of the
    serving thread writes to. ``on_ready`` runs once the handlers are in place, so a signal sent
    as soon as it announces the server is handled cleanly too."""
    received: list[int] = []
    failure: list[BaseException] = []
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    def run() -> None:
        try:
            server.serve()
        except BaseException as e:  # reported by the main thread below
            failure.append(e)
        finally:
            wake_w.send(b"x")

    previous = {s: signal.signal(s, record) for s in (signal.SIGTERM, signal.SIGINT)}
    previous_fd = signal.set_wakeup_fd(wake_w.fileno())
    thread = threading.Thread(target=run, name="pvc-serve")
    try:
        thread.start()
        if on_ready is not None:
            on_ready()
        select.select([wake_r], [], [])
        if received:
            log.info("Received %s; stopping", signal.Signals(received[0]).name)
    finally:
        server.stop()
        thread.join()
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        wake_r.close()
        wake_w.close()
        on_stop()
        log.info("Stopped")
    if failure:
        raise failure[0]
