"""A throwaway ZooKeeper server on 127.0.0.1, from Debian's `zookeeper` package, for the tests.

It starts in about half a second. ``stop()`` kills the process but keeps its data directory, so a
``start()`` afterwards brings back the same tree (clients refuse a server whose history is older
than what they have seen, so a restart must not lose the data).

``ZooKeeperEnsemble`` runs three such servers as one quorum on loopback, for fault tests: a server
can be frozen (SIGSTOP) and resumed, and the four-letter words tell which one leads and which
sessions each one serves.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time

JARS = "/usr/share/java/zookeeper.jar"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ruok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"ruok")
            return s.recv(4) == b"imok"
    except OSError:
        return False


def four_letters(port: int, word: str, timeout: float = 1.0) -> str | None:
    """The answer of a four-letter word, None when the server does not answer in time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return b"".join(chunks).decode("utf-8", "replace")
                chunks.append(chunk)
    except OSError:
        return None


class ZooKeeperServer:
    def __init__(self, directory: str, port: int | None = None, ensemble: str = "", myid: int | None = None):
        if not os.path.exists(JARS):
            raise RuntimeError(
                "ZooKeeper is not installed: the tests need Debian's package (apt-get install -y zookeeper)"
            )
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        os.makedirs(os.path.join(directory, "data"), exist_ok=True)
        with open(os.path.join(directory, "zoo.cfg"), "w") as f:
            f.write(
                "tickTime=500\n"
                "minSessionTimeout=1000\n"
                f"dataDir={directory}/data\n"
                f"clientPort={self.port}\n"
                "clientPortAddress=127.0.0.1\n"
                "admin.enableServer=false\n"
                "maxClientCnxns=0\n"
                + ("4lw.commands.whitelist=ruok,srvr,cons\n" if ensemble else "4lw.commands.whitelist=ruok\n")
                + "forceSync=no\n"
                + ensemble
            )
        if myid is not None:
            with open(os.path.join(directory, "data", "myid"), "w") as f:
                f.write(f"{myid}\n")

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, wait: bool = True) -> None:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java is not installed (Debian's zookeeper package brings it)")
        log = open(os.path.join(self.directory, "out.log"), "ab")
        self.process = subprocess.Popen(
            [
                java,
                "-Xmx256m",
                "-cp",
                f"/etc/zookeeper/conf:{JARS}:/usr/share/java/*",
                f"-Dzookeeper.log.dir={self.directory}",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                os.path.join(self.directory, "zoo.cfg"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not ruok(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited; see {self.directory}/out.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZooKeeper did not answer within {timeout} s; see {self.directory}/out.log")
            time.sleep(0.05)  # polling the server's readiness, bounded by the deadline

    def __enter__(self) -> "ZooKeeperServer":
        try:
            self.start()
        except BaseException:
            self.stop()  # a server that started but never answered must not outlive the test
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None


class ZooKeeperEnsemble:
    """Three ZooKeeper servers on 127.0.0.1 forming one quorum, started like ZooKeeperServer.

    Failure detection between the servers is quick (a tick of 0.5 s; a follower gives up on a
    silent leader after ``sync_limit`` ticks) so that a test sees a new leader within seconds.
    """

    def __init__(self, directory: str, size: int = 3, sync_limit: int = 4):
        ports = [(free_port(), free_port()) for _ in range(size)]
        ensemble = f"initLimit=20\nsyncLimit={sync_limit}\n" + "".join(
            f"server.{i + 1}=127.0.0.1:{peer}:{election}\n" for i, (peer, election) in enumerate(ports)
        )
        self.servers = [
            ZooKeeperServer(os.path.join(directory, f"zk{i + 1}"), ensemble=ensemble, myid=i + 1) for i in range(size)
        ]

    @property
    def hosts(self) -> str:
        return ",".join(server.hosts for server in self.servers)

    def start(self, timeout: float = 60.0) -> None:
        for server in self.servers:
            server.start(wait=False)  # a server answers ruok only once a quorum has formed
        for server in self.servers:
            server.wait_ready(timeout)
        self.wait_for_quorum(timeout)

    def stop(self) -> None:
        for server in self.servers:
            self.resume(server)
            server.stop()

    def __enter__(self) -> "ZooKeeperEnsemble":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------------
    @staticmethod
    def freeze(server: ZooKeeperServer) -> None:
        """Stop the server's process (SIGSTOP): its sockets stay open and never answer."""
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)

    @staticmethod
    def resume(server: ZooKeeperServer) -> None:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self, server: ZooKeeperServer):  # type: ignore[no-untyped-def]
        """The server is stopped inside the block and always resumed after it."""
        self.freeze(server)
        try:
            yield server
        finally:
            self.resume(server)

    # -- what the servers say ----------------------------------------------------------------
    @staticmethod
    def mode(server: ZooKeeperServer) -> str | None:
        """'leader', 'follower', or None (not serving, or not answering)."""
        answer = four_letters(server.port, "srvr")
        m = re.search(r"^Mode: (\w+)", answer or "", re.M)
        return m.group(1) if m and m.group(1) in ("leader", "follower") else None

    def leader(self) -> ZooKeeperServer | None:
        for server in self.servers:
            if self.mode(server) == "leader":
                return server
        return None

    def wait_for_quorum(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.leader() is not None and all(self.mode(s) for s in self.servers)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ensemble formed no quorum within {timeout} s")
            time.sleep(0.1)  # polling the ensemble's state, bounded by the deadline

    @staticmethod
    def sessions(server: ZooKeeperServer) -> set[int]:
        """The session ids of the client connections the server has (empty when it does not answer)."""
        answer = four_letters(server.port, "cons") or ""
        return {int(sid, 16) for sid in re.findall(r"sid=0x([0-9a-f]+)", answer)}

    def serving(self, session: int) -> ZooKeeperServer | None:
        """The server that has a connection of ``session``, if one does."""
        for server in self.servers:
            if session in self.sessions(server):
                return server
        return None
