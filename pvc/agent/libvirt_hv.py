"""The hypervisor through libvirt (libvirt-python), the only module that imports libvirt.

libvirt's own error printing is silenced: its errors reach the agent as HypervisorError with
libvirt's text, once. Lifecycle events come from libvirt's default event loop, run by one
thread per process (libvirt allows one loop per process, registered before any connection).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from pvc.agent.hypervisor import DomainInfo, HostInfo, Hypervisor, HypervisorError, HypervisorUnavailable, \
    MigrationUnsupported

log = logging.getLogger("pvc.agent.libvirt")

_loop_lock = threading.Lock()
_loop_started = False


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as e:  # the binding is built at install time against the system's libvirt
        raise HypervisorUnavailable(f"the libvirt Python binding is not installed ({e}); install libvirt-python "
                                    "(it builds against Debian's libvirt-dev and pkg-config)") from None
    return libvirt


def _start_event_loop(libvirt: Any) -> None:
    """libvirt's default event loop, once per process, on a daemon thread."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors come back as exceptions
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # one bad round must not end event delivery for every agent
                    log.exception("libvirt's event loop failed a round")

        threading.Thread(target=run, name="pvc-libvirt-events", daemon=True).start()
        _loop_started = True


def _text(error: Exception) -> str:
    get = getattr(error, "get_error_message", None)
    message = get() if get else None
    return " ".join((message or str(error)).split())


class LibvirtHypervisor(Hypervisor):
    """A libvirt connection (``qemu:///system``, ``test:///path/node.xml``, ...)."""

    def __init__(self, uri: str, unsafe_migration: bool = False):
        self.uri = uri
        self.unsafe_migration = unsafe_migration
        self._conn: Any = None
        self._lock = threading.Lock()
        self._callback: Callable[[str], None] | None = None
        self._event_id: int | None = None

    # -- connection ---------------------------------------------------------------------------
    def connect(self) -> None:
        libvirt = _libvirt()
        _start_event_loop(libvirt)
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return
                except libvirt.libvirtError:
                    pass
                self._drop()
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as e:
                raise HypervisorUnavailable(f"cannot connect: {_text(e)}") from None
            try:
                conn.setKeepAlive(5, 3)
            except libvirt.libvirtError:
                pass  # not every driver supports keepalives (the test driver does not)
            try:
                self._event_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                             self._on_event, None)
            except libvirt.libvirtError as e:
                log.warning("The hypervisor %s sends no lifecycle events (%s); changes are seen at the next check",
                            self.uri, _text(e))
                self._event_id = None
            self._conn = conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._event_id is not None:
                conn.domainEventDeregisterAny(self._event_id)
        except Exception:
            pass
        try:
            conn.close()
        except Exception:
            pass

    def _on_event(self, _conn: Any, dom: Any, _event: int, _detail: int, _opaque: Any) -> None:
        callback = self._callback
        if callback is not None:
            try:
                callback(dom.UUIDString().lower())
            except Exception:
                log.exception("A hypervisor event handler failed")

    def on_change(self, callback: Callable[[str], None]) -> None:
        self._callback = callback

    def _c(self) -> Any:
        """The live connection, re-opened once if it broke (libvirtd restarted)."""
        conn = self._conn
        if conn is None:
            self.connect()
            return self._conn
        return conn

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        libvirt = _libvirt()
        conn = self._c()
        try:
            return fn(conn)
        except libvirt.libvirtError as e:
            if not _broken(libvirt, conn, e):
                raise HypervisorError(f"{what}: {_text(e)}") from None
            with self._lock:
                if self._conn is conn:  # another thread may have re-opened it already
                    self._drop()
            try:
                return fn(self._c())
            except libvirt.libvirtError as again:
                raise HypervisorError(f"{what}: {_text(again)}") from None

    def _lookup(self, conn: Any, uuid: str) -> Any:
        libvirt = _libvirt()
        try:
            return conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    # -- reads --------------------------------------------------------------------------------
    def host(self) -> HostInfo:
        info = self._call("cannot read the host's figures", lambda c: c.getInfo())
        return HostInfo(cpus=int(info[2]), memory_mib=int(info[1]))

    def active(self) -> dict[str, DomainInfo]:
        libvirt = _libvirt()

        def read(conn: Any) -> dict[str, DomainInfo]:
            found = {}
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    _state, _max_kib, mem_kib, vcpus, _cpu = dom.info()
                    uuid = dom.UUIDString().lower()
                    found[uuid] = DomainInfo(uuid, dom.name(), int(mem_kib) // 1024, int(vcpus))
                except libvirt.libvirtError:
                    continue  # gone between the list and the look
            return found

        return self._call("cannot list the domains", read)

    def is_active(self, uuid: str) -> bool:
        return self._ask(uuid, lambda dom: dom.isActive())

    def is_running(self, uuid: str) -> bool:
        return self._ask(uuid, lambda dom: dom.state()[0] == _libvirt().VIR_DOMAIN_RUNNING)

    def _ask(self, uuid: str, question: Callable[[Any], Any]) -> bool:
        """``question(domain)`` of the domain; False when there is no such domain (also when it
        is undefined between the look-up and the question)."""
        libvirt = _libvirt()

        def read(conn: Any) -> bool:
            dom = self._lookup(conn, uuid)
            try:
                return bool(dom is not None and question(dom))
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise

        return self._call(f"cannot look up domain {uuid}", read)

    # -- actions ------------------------------------------------------------------------------
    def start(self, uuid: str, xml: str) -> None:
        libvirt = _libvirt()

        def run(conn: Any) -> None:
            old = self._lookup(conn, uuid)
            if old is not None:
                if old.isActive():
                    return
                old.undefine()  # an old definition may hold an older XML (or another name)
            dom = conn.defineXML(xml)
            try:
                dom.create()
            except libvirt.libvirtError:
                try:
                    dom.undefine()
                except libvirt.libvirtError:
                    pass
                raise

        self._call("cannot start the domain", run)

    def shutdown(self, uuid: str) -> None:
        def run(conn: Any) -> None:
            dom = self._lookup(conn, uuid)
            if dom is not None and dom.isActive():
                dom.shutdown()

        self._call("cannot shut the domain down", run)

    def destroy(self, uuid: str) -> None:
        libvirt = _libvirt()

        def run(conn: Any) -> None:
            dom = self._lookup(conn, uuid)
            if dom is None:
                return
            try:
                dom.destroy()
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # not running (any more)
                    raise

        self._call("cannot stop the domain", run)

    def undefine(self, uuid: str) -> None:
        def run(conn: Any) -> None:
            dom = self._lookup(conn, uuid)
            if dom is not None and dom.isPersistent():
                dom.undefine()

        self._call("cannot undefine the domain", run)

    def migrate(self, uuid: str, target_uri: str, data_uri: str | None, timeout: float) -> None:
        libvirt = _libvirt()

        def source(conn: Any) -> Any:
            if conn.getType().lower() == "test":
                raise MigrationUnsupported("libvirt's test driver cannot migrate")
            dom = self._lookup(conn, uuid)
            if dom is None or not dom.isActive():
                raise HypervisorError(f"domain {uuid} is not running here")
            return dom

        dom = self._call(f"cannot migrate domain {uuid}", source)
        target = _open_within(libvirt, target_uri, min(timeout, TARGET_CONNECT_TIMEOUT))
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        if self.unsafe_migration:
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        params = {libvirt.VIR_MIGRATE_PARAM_URI: data_uri} if data_uri else {}
        # The deadline: an unfinished migration is aborted, and the domain keeps running here.
        timer = threading.Timer(timeout, lambda: _abort(dom))
        timer.daemon = True
        timer.start()
        try:
            dom.migrate3(target, params, flags)
        except libvirt.libvirtError as e:
            if e.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
                raise MigrationUnsupported(_text(e)) from None
            raise HypervisorError(f"live migration to {target_uri} failed: {_text(e)}") from None
        finally:
            timer.cancel()
            try:
                target.close()
            except libvirt.libvirtError:
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()


#: Longest wait for a connection to a migration's target (an unreachable host otherwise blocks
#: for the TCP or ssh timeout).
TARGET_CONNECT_TIMEOUT = 20.0


def _open_within(libvirt: Any, uri: str, timeout: float) -> Any:
    """libvirt.open(uri) with a deadline; HypervisorError when it fails or takes too long (the
    attempt then finishes on its own thread, and its connection is closed there)."""
    lock = threading.Lock()
    done = threading.Event()
    result: list[Any] = []
    abandoned = [False]

    def attempt() -> None:
        try:
            outcome: Any = libvirt.open(uri)
        except libvirt.libvirtError as e:
            outcome = e
        with lock:
            if not abandoned[0]:
                result.append(outcome)
                done.set()
                return
        if not isinstance(outcome, Exception):  # too late: nobody wants it
            try:
                outcome.close()
            except libvirt.libvirtError:
                pass

    threading.Thread(target=attempt, name="pvc-libvirt-open", daemon=True).start()
    done.wait(timeout)
    with lock:
        if not result:
            abandoned[0] = True
            raise HypervisorError(f"cannot connect to the target hypervisor {uri}: no answer within {timeout:g} s")
    if isinstance(result[0], Exception):
        raise HypervisorError(f"cannot connect to the target hypervisor {uri}: {_text(result[0])}")
    return result[0]


def _broken(libvirt: Any, conn: Any, error: Any) -> bool:
    """Whether ``error`` came from a dead connection (libvirtd restarted or gone): a restart shows as
    VIR_ERR_INTERNAL_ERROR "client socket is closed", so ask the connection itself too."""
    if error.get_error_code() in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN,
                                  libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC):
        return True
    try:
        return not conn.isAlive()
    except libvirt.libvirtError:
        return True


def _abort(dom: Any) -> None:
    try:
        dom.abortJob()
    except Exception:
        pass
