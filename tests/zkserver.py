"""A throwaway ZooKeeper server on 127.0.0.1, from Debian's `zookeeper` package, for the tests.

It starts in about half a second. ``stop()`` kills the process but keeps its data directory, so a
``start()`` afterwards brings back the same tree (clients refuse a server whose history is older
than what they have seen, so a restart must not lose the data).
"""

from __future__ import annotations

import os
import shutil
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


class ZooKeeperServer:
    def __init__(self, directory: str, port: int | None = None):
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
                "4lw.commands.whitelist=ruok\n"
                "forceSync=no\n"
            )

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
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
