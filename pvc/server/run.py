"""Running the app on cheroot: binding, TLS, and a graceful stop on SIGTERM and SIGINT.

This is the only module that imports cheroot.
"""

from __future__ import annotations

import logging
import signal
import ssl
from typing import Callable

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.server.app import create_app, with_access_log

log = logging.getLogger("pvc.server")

THREADS = 16


class StartupError(Exception):
    """`pvc serve` cannot start; the message says why."""


class _Stop(BaseException):
    """Raised by the signal handler to leave cheroot's loop (BaseException: cheroot logs and
    swallows plain Exceptions inside its loop)."""


def check_tls(settings: Settings) -> None:
    """Load the certificate and key once, so a bad file is a clear error before binding."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.ssl_cert_file or "", settings.ssl_key_file or "")
    except FileNotFoundError as e:
        raise StartupError(f"pvc.api.ssl: cannot read {e.filename}: no such file") from None
    except PermissionError as e:
        raise StartupError(f"pvc.api.ssl: cannot read {e.filename}: permission denied") from None
    except (ssl.SSLError, OSError) as e:
        raise StartupError(
            f"pvc.api.ssl: cannot use certificate {settings.ssl_cert_file} with key {settings.ssl_key_file}: {e}"
        ) from None


def build_server(core: Cluster) -> wsgi.Server:
    """A bound (prepared) cheroot server for ``core``; port 0 picks a free port."""
    settings = core.settings
    if settings.ssl_enabled:
        check_tls(settings)
    host = settings.listen_address.strip("[]")
    server = wsgi.Server((host, settings.listen_port), with_access_log(create_app(core)), numthreads=THREADS,
                         server_name="pvc")
    if settings.ssl_enabled:
        server.ssl_adapter = BuiltinSSLAdapter(settings.ssl_cert_file, settings.ssl_key_file)
    try:
        server.prepare()
    except OSError as e:
        raise StartupError(f"Cannot listen on {settings.listen_address}:{settings.listen_port}: {e.strerror or e}") from None
    return server


def url_of(server: wsgi.Server, settings: Settings) -> str:
    host, port = server.bind_addr[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if settings.ssl_enabled else 'http'}://{host}:{port}/api/v1"


def serve_forever(server: wsgi.Server, on_stop: Callable[[], None]) -> None:
    """Serve in this (main) thread until SIGTERM or SIGINT, then stop cleanly."""

    def stop(signum: int, frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve()
    except _Stop as e:
        log.info("Received %s; stopping", e)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.stop()
        on_stop()
        log.info("Stopped")

