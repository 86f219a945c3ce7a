"""Real servers: cheroot on 127.0.0.1 (build_server in a thread, or `pvc serve` as a subprocess),
TLS with a self-signed certificate, start-up errors, signals, the access log, and a ZooKeeper
outage that `pvc serve` survives."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import yaml

from pvc.lib.config import Settings, Token
from pvc.lib.core import Cluster
from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.registry import load_all
from pvc.lib.store import Create
from pvc.lib.store.zookeeper import ZooKeeperStore
from pvc.server.run import StartupError, build_server, url_of
from pvc.server.values import MAX_BODY
from tests.test_api import multipart
from tests.zkserver import ZooKeeperServer, free_port

API = "/api/v1"
TOKEN = "abcdef-123456"
SECRET = "s3cr3t-" + "k" * 40
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- HTTP helpers -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    elapsed: float
    reason: str = ""

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), (self.status, self.headers, self.body)
        return json.loads(self.body)


def call(url: str, method: str, path: str, body: bytes | Iterator[bytes] | None = None, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None, timeout: float = 10.0) -> Answer:
    """One request on a new connection, closed afterwards."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                                       context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=isinstance(body, Iterator))
        r = conn.getresponse()
        data = r.read()
        return Answer(r.status, r.headers, data, time.monotonic() - started, r.reason)
    finally:
        conn.close()


def call_chunked(url: str, method: str, path: str, chunks: list[bytes], headers: dict[str, str] | None = None,
                 timeout: float = 10.0) -> Answer:
    """One request whose body is sent with Transfer-Encoding: chunked, one chunk per item."""
    return call(url, method, path, iter(chunks), {"Transfer-Encoding": "chunked", **(headers or {})}, timeout=timeout)


def raw_request(url: str, data: bytes, timeout: float = 10.0) -> Answer:
    """Send ``data`` as it is on a new connection and read one answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        r = http.client.HTTPResponse(sock)
        try:
            r.begin()
            body = r.read()
        finally:
            r.close()
        return Answer(r.status, r.headers, body, time.monotonic() - started, r.reason)


def form(values: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    from urllib.parse import urlencode

    return urlencode(values).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# --- build_server in a thread (both engines) ----------------------------------------------------


@dataclass
class Live:
    core: Cluster
    server: Any
    url: str


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[Live]:
    """build_server for ``settings`` on a free port, serving in a thread until the block ends."""
    cluster = Cluster(settings.replace(listen_port=0))
    if settings.engine == "zookeeper":
        init_cluster(cluster)
    server = build_server(cluster)
    thread = threading.Thread(target=server.serve, name="test-cheroot", daemon=True)
    thread.start()
    try:
        yield Live(cluster, server, url_of(server, cluster.settings))
    finally:
        server.stop()
        thread.join(15)
        cluster.close()
    assert not thread.is_alive()


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    with running(settings) as live:
        yield live


@pytest.fixture
def live_auth(tmp_path: Any) -> Iterator[Live]:
    """A server with authentication on the embedded engine (bodies do not depend on the store)."""
    settings = Settings(store_path=str(tmp_path / "pvc.sqlite"), auth_enabled=True, tokens=(Token(TOKEN),),
                        secret_key=SECRET)
    with running(settings) as live:
        yield live


def add(core: Cluster, name: str) -> None:
    register_node(core, name, NodeFacts(4, "6.1.0-amd64", "GNU/Linux", "x86_64"))
    publish_figures(core, name, NodeFigures(memtotal=1000), daemon_state="run")
    report_domain_state(core, name, "ready")


def test_real_http_requests(live: Live) -> None:
    port = live.server.bind_addr[1]
    assert port != 0 and live.url == f"http://127.0.0.1:{port}/api/v1"
    r = call(live.url, "GET", API)
    assert (r.status, r.reason, r.json()["message"]) == (209, "PVC API", "PVC API version 1")
    assert call(live.url, "GET", API + "/node").json() == []
    for n in ("hv2", "nœud", "hv1"):
        add(live.core, n)
    r = call(live.url, "GET", API + "/node")
    assert r.status == 200 and [n["name"] for n in r.json()] == ["hv1", "hv2", "nœud"]
    # Percent-encoded UTF-8 in the path and the query string.
    r = call(live.url, "GET", API + "/node/n%C5%93ud")
    assert r.status == 200 and [n["name"] for n in r.json()] == ["nœud"]
    r = call(live.url, "GET", API + "/node?limit=%C5%93")
    assert [n["name"] for n in r.json()] == ["nœud"]
    r = call(live.url, "GET", API + "/node?limit=(")
    assert r.status == 400 and r.json()["error"] == "invalid_argument"
    r = call(live.url, "GET", API + "/node/hv9")
    assert r.status == 404 and r.json()["error"] == "not_found"
    r = call(live.url, "GET", API + "/nope")
    assert r.status == 404 and r.json()["error"] == "http"
    r = call(live.url, "DELETE", API + "/node")
    assert r.status == 405 and r.json()["error"] == "http" and "GET" in r.headers["Allow"]


def test_real_values_from_every_body(live: Live) -> None:
    add(live.core, "hv1")
    path = API + "/node/hv1/domain-state"
    body, headers = form({"domain-state": "flush"})
    r = call(live.url, "POST", path, body, headers)
    assert (r.status, r.json()) == (200, {"message": "Flushing node 'hv1' of running VMs."})
    report_domain_state(live.core, "hv1", "flushed")
    data, ctype = multipart({"domain-state": "ready"})
    r = call(live.url, "POST", path, data, {"Content-Type": ctype})
    assert (r.status, r.json()) == (200, {"message": "Restoring node 'hv1' to active service."})
    r = call(live.url, "POST", path, json.dumps({"domain-state": "flush"}).encode(), {"Content-Type": "application/json"})
    assert r.status == 200 and r.json()["message"].startswith("Flushing")
    r = call(live.url, "POST", path + "?domain-state=sideways")
    assert r.status == 510 and r.json()["error"] == "invalid_argument"
    assert call(live.url, "GET", path).json() == {"name": "hv1", "domain_state": "flush"}


# --- request bodies on the real server ----------------------------------------------------------


def test_chunked_bodies_are_read_once(live_auth: Live) -> None:
    """cheroot de-chunks; the body must not be de-chunked a second time (every chunked request was
    400 'Error while parsing chunked transfer body')."""
    url = live_auth.url
    r = call_chunked(url, "POST", API + "/auth/login", [b"tok", b"en=", TOKEN[:4].encode(), TOKEN[4:].encode()],
                     {"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200 and r.json()["message"].startswith("Authenticated"), r.body
    assert "pvc_session=" in r.headers["Set-Cookie"]
    body = json.dumps({"token": TOKEN}).encode()
    r = call_chunked(url, "POST", API + "/auth/login", [body[:5], body[5:]], {"Content-Type": "application/json"})
    assert r.status == 200, r.body
    data, ctype = multipart({"token": TOKEN})
    r = call_chunked(url, "POST", API + "/auth/login", [data[i:i + 7] for i in range(0, len(data), 7)],
                     {"Content-Type": ctype})
    assert r.status == 200, r.body
    r = call_chunked(url, "POST", API + "/auth/login", [b"token=", b"wrong"],
                     {"Content-Type": "application/x-www-form-urlencoded"})
    assert (r.status, r.json()["message"]) == (401, "Authentication failed")
    r = call_chunked(url, "POST", API + "/auth/login", [], {"Content-Type": "application/x-www-form-urlencoded"})
    assert (r.status, r.json()["message"]) == (401, "Authentication failed")  # an empty body
    # An action with a chunked JSON body, and values from the query string and the body together.
    add(live_auth.core, "hv1")
    r = call_chunked(url, "POST", API + "/node/hv1/domain-state", [b'{"domain-', b'state": "flush"}'],
                     {"Content-Type": "application/json", "X-Api-Key": TOKEN})
    assert (r.status, r.json()) == (200, {"message": "Flushing node 'hv1' of running VMs."})
    r = call_chunked(url, "GET", API + "/node?limit=hv", [b"", b""], {"X-Api-Key": TOKEN})
    assert r.status == 200 and [n["name"] for n in r.json()] == ["hv1"]


def test_a_megabyte_of_chunks_is_quick(live_auth: Live) -> None:
    """A 1 MB chunked login once burned a core for 48 s (Bottle re-read the body byte by byte)."""
    chunk = b"x" * 1000
    r = call_chunked(live_auth.url, "POST", API + "/auth/login", [b"token="] + [chunk] * 1000,
                     {"Content-Type": "application/x-www-form-urlencoded"})
    assert (r.status, r.json()["message"]) == (401, "Authentication failed")
    assert r.elapsed < 3.0, f"{r.elapsed:.2f} s"


def test_too_large_bodies_are_refused_quickly(live_auth: Live) -> None:
    url = live_auth.url
    form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    chunk = b"x" * 65536
    # Chunked, a little over MAX_BODY: the contract's JSON answer, quickly.
    r = call_chunked(url, "POST", API + "/auth/login", [b"token="] + [chunk] * (MAX_BODY // len(chunk) + 2),
                     form_headers, timeout=30)
    assert r.elapsed < 5.0, f"{r.elapsed:.2f} s"
    assert r.status == 510 and r.json()["error"] == "invalid_argument", r.body
    assert f"larger than {MAX_BODY} bytes" in r.json()["message"]
    # The same with a Content-Length.
    r = call(url, "POST", API + "/auth/login", b"token=" + b"x" * MAX_BODY, form_headers, timeout=30)
    assert r.elapsed < 5.0, f"{r.elapsed:.2f} s"
    assert r.status == 510 and f"larger than {MAX_BODY} bytes" in r.json()["message"], r.body
    # Chunked, beyond the server's own bound: still our JSON answer, not a hang.
    r = call_chunked(url, "POST", API + "/auth/login", [b"token=" + b"x" * (2 * MAX_BODY)], form_headers, timeout=30)
    assert r.elapsed < 5.0, f"{r.elapsed:.2f} s"
    assert r.status == 510 and r.json()["error"] == "invalid_argument", r.body
    # cheroot itself bounds every body (above MAX_BODY, so the cases above are ours to answer):
    # a Content-Length beyond it is refused from the headers alone.
    bound = live_auth.server.max_request_body_size
    assert bound > MAX_BODY
    head = f"POST {API}/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: {bound + 1}\r\n\r\n".encode()
    assert raw_request(url, head).status == 413
    # A GET with too large a body is a bad request value.
    r = call_chunked(url, "GET", API + "/node", [chunk] * (MAX_BODY // len(chunk) + 2), {"X-Api-Key": TOKEN},
                     timeout=30)
    assert r.status == 400 and f"larger than {MAX_BODY} bytes" in r.json()["message"], r.body
    assert call(url, "GET", API).status == 209  # still serving


def test_malformed_chunked_body_is_an_invalid_argument(live_auth: Live) -> None:
    head = (f"POST {API}/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n\r\n").encode()
    for framing in (b"zz\r\ntoken\r\n0\r\n\r\n", b"5\r\ntokenXX0\r\n\r\n"):
        r = raw_request(live_auth.url, head + framing)
        assert r.status == 510 and r.json()["error"] == "invalid_argument", r.body
        assert "chunked request body cannot be read" in r.json()["message"]


def test_port_in_use_is_a_startup_error(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Cluster(settings.replace(listen_port=port)) as cluster:
            with pytest.raises(StartupError, match=f"Cannot listen on 127.0.0.1:{port}"):
                build_server(cluster)


# --- `pvc serve` as a subprocess ----------------------------------------------------------------


def write_config(directory: Any, *, auth: bool = False, tokens: tuple[str, ...] = (TOKEN,), secret: str | None = SECRET,
                 tls: tuple[str, str] | None = None, coordinators: tuple[str, ...] = (), chroot: str | None = None,
                 debug: bool = False, port: int = 7370, drop: tuple[str, ...] = (),
                 node: dict[str, Any] | None = None) -> str:
    """A configuration file in ``directory``. The node agent that `pvc serve` runs on the
    embedded store gets a private test-driver hypervisor of its own (``node`` overrides)."""
    authentication: dict[str, Any] = {"enabled": auth, "tokens": [{"description": "t", "token": t} for t in tokens]}
    if secret is not None:
        authentication["secret_key"] = secret
    ssl_section: dict[str, Any] = {"enabled": tls is not None}
    if tls is not None:
        ssl_section.update(cert_file=tls[0], key_file=tls[1])
    store: dict[str, Any] = {"path": str(directory / "pvc.sqlite"), "timeout": 2}
    if chroot:
        store["chroot"] = chroot
    pvc: dict[str, Any] = {
        "debug": debug,
        "coordinators": list(coordinators),
        "api": {"listen_address": "127.0.0.1", "listen_port": port, "authentication": authentication,
                "ssl": ssl_section},
        "store": store,
        "node": node if node is not None else {"name": "hv-local", "libvirt_uri": node_file_uri(directory)},
    }
    for key in drop:
        pvc.pop(key)
    path = directory / "pvc-api.yaml"
    path.write_text(yaml.safe_dump({"pvc": pvc}))
    return str(path)


def node_file_uri(directory: Any) -> str:
    """libvirt's test driver on a node file of its own: a private, empty hypervisor."""
    path = directory / "node.xml"
    path.write_text("<node><cpu><mhz>2000</mhz><model>x86_64</model><active>4</active><nodes>1</nodes>"
                    "<sockets>1</sockets><cores>4</cores><threads>1</threads></cpu><memory>16777216</memory></node>")
    return f"test://{path}"


def pvc_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PVC_CONFIG_FILE"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_pvc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvc", *args], capture_output=True, text=True, timeout=timeout,
                          env=pvc_env(), cwd=ROOT, stdin=subprocess.DEVNULL)


@dataclass
class Serve:
    """A running `pvc serve`: its process, URL, and its stdout lines and stderr file."""

    process: subprocess.Popen
    stderr_path: str
    lines: "queue.Queue[str | None]" = field(default_factory=queue.Queue)
    stdout: list[str] = field(default_factory=list)
    url: str = ""

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_ready(self, timeout: float = 60) -> "Serve":
        """Read stdout until the 'Listening on URL' line; self.url is then set."""
        deadline = time.monotonic() + timeout
        while not self.url:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"pvc serve did not say where it listens within {timeout} s: {self.stderr()}")
            if line is None:
                raise AssertionError(f"pvc serve exited ({self.process.wait()}): {self.stdout} {self.stderr()}")
            self.stdout.append(line)
            m = re.fullmatch(r"Listening on (\S+)", line)
            if m:
                self.url = m.group(1)
        return self


@pytest.fixture
def start_serve(tmp_path: Any) -> Iterator[Callable[..., Serve]]:
    """Start `pvc --config FILE serve [args]` and wait for its 'Listening on' line (unless ``wait``
    is false: then call wait_ready); every process started is killed at the end of the test."""
    started: list[tuple[Serve, threading.Thread]] = []

    def start(config: str, *args: str, timeout: float = 60, wait: bool = True) -> Serve:
        stderr_path = str(tmp_path / f"serve-{len(started)}.stderr")
        with open(stderr_path, "wb") as err:
            process = subprocess.Popen([sys.executable, "-m", "pvc", "--config", config, "serve", *args],
                                       stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                       env=pvc_env(), cwd=ROOT)
        serve = Serve(process, stderr_path)

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                serve.lines.put(line.rstrip("\n"))
            serve.lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        started.append((serve, reader))
        return serve.wait_ready(timeout) if wait else serve

    yield start
    for serve, reader in started:
        if serve.process.poll() is None:
            serve.process.kill()
        serve.process.wait(timeout=30)
        reader.join(10)
        assert serve.process.stdout is not None
        serve.process.stdout.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate for 127.0.0.1, its key, and a second key that does not match."""
    d = tmp_path_factory.mktemp("tls")
    files = {"cert": str(d / "cert.pem"), "key": str(d / "key.pem"), "other_key": str(d / "other-key.pem"),
             "other_cert": str(d / "other-cert.pem")}
    for cert, key in (("cert", "key"), ("other_cert", "other_key")):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2", "-keyout", files[key], "-out", files[cert]],
            check=True, capture_output=True, timeout=60,
        )
    garbage = d / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    files["garbage"] = str(garbage)
    (d / "a-directory").mkdir()
    files["directory"] = str(d / "a-directory")
    files["missing"] = str(d / "missing.pem")
    return files


def test_serve_routes_lists_every_operation_route() -> None:
    r = run_pvc("serve", "--routes")
    assert r.returncode == 0, r.stderr
    listed = {tuple(line.split()) for line in r.stdout.splitlines()}
    for op in load_all().values():
        if op.path is not None:
            assert (op.method, API + op.path, op.name) in listed


@pytest.mark.parametrize("listen", ["nowhere", "127.0.0.1:99999", "127.0.0.1:http", "bad host:80"])
def test_serve_refuses_a_bad_listen_value(tmp_path: Any, listen: str) -> None:
    r = run_pvc("--config", write_config(tmp_path), "serve", "--listen", listen)
    assert r.returncode == 2 and "--listen" in r.stderr and "Listening" not in r.stdout


@pytest.mark.parametrize("debug", [False, True])
def test_access_log_and_sigterm(tmp_path: Any, start_serve: Callable[..., Serve], debug: bool) -> None:
    serve = start_serve(write_config(tmp_path, auth=True, debug=debug), "--listen", "127.0.0.1:0")
    assert serve.url.startswith("http://127.0.0.1:") and serve.url.endswith("/api/v1")
    assert any(line.startswith("Store: embedded") for line in serve.stdout)
    url = serve.url
    body, headers = form({"token": TOKEN})
    expected = [
        ("GET", API, 209, call(url, "GET", API)),
        ("GET", API + "/node", 200, call(url, "GET", API + "/node", headers={"X-Api-Key": TOKEN})),
        ("POST", API + "/auth/login", 400, call(url, "POST", f"{API}/auth/login?token={TOKEN}")),  # body only
        ("POST", API + "/auth/login", 200, call(url, "POST", API + "/auth/login", body, headers)),
        ("GET", API + "/node", 401, call(url, "GET", API + "/node")),
        ("GET", API + "/node", 401, call(url, "GET", API + "/node", headers={"X-Api-Key": TOKEN + "x"})),
        ("GET", API + "/nope", 404, call(url, "GET", API + "/nope")),
        # A request cannot forge or split log lines with an encoded newline in its path.
        ("GET", API + "/x\\nforged 200", 404, call(url, "GET", API + "/x%0Aforged%20200")),
    ]
    for _, _, status, answer in expected:
        assert answer.status == status, answer.body
    assert serve.stop(signal.SIGTERM) == 0
    err = serve.stderr()
    access = [line for line in err.splitlines() if " pvc.access: " in line]
    assert len(access) == len(expected), err
    for line, (method, path, status, _) in zip(access, expected):
        assert re.search(rf" pvc\.access: {method} {re.escape(path)} {status} \d+(\.\d+)?ms\b", line), (line, path)
    assert not [line for line in err.splitlines() if line.startswith("forged")]
    everything = err + "\n".join(serve.stdout)
    assert TOKEN not in everything and SECRET not in everything
    assert "Traceback" not in err
    assert "Received SIGTERM; stopping" in err and "Stopped" in err


def test_sigint_stops_cleanly_too(tmp_path: Any, start_serve: Callable[..., Serve]) -> None:
    serve = start_serve(write_config(tmp_path), "--listen", "127.0.0.1:0")
    port = urlsplit(serve.url).port
    assert call(serve.url, "GET", API).status == 209
    assert serve.stop(signal.SIGINT) == 0
    assert "Received SIGINT; stopping" in serve.stderr()
    assert port is not None and refused(port)


def test_sigterm_right_after_the_announcement_is_clean(tmp_path: Any, start_serve: Callable[..., Serve]) -> None:
    # The signal is sent as soon as 'Listening on' is read: the handlers must already be in place.
    # The processes start together, to overlap their start-ups; each is signalled on its own line.
    serves = [start_serve(write_config(tmp_path), "--listen", "127.0.0.1:0", wait=False) for _ in range(3)]
    for serve in serves:
        serve.wait_ready().process.send_signal(signal.SIGTERM)
    for serve in serves:
        assert serve.process.wait(timeout=20) == 0, serve.stderr()


def test_sigterm_after_traffic_never_hangs(tmp_path: Any, start_serve: Callable[..., Serve]) -> None:
    # A handler raising inside cheroot's loop once hung the shutdown about one time in thirty.
    # Twelve independent processes, started together; each gets its SIGTERM right after its own
    # traffic, and then all are waited for.
    config = write_config(tmp_path, auth=True)
    serves = [start_serve(config, "--listen", "127.0.0.1:0", wait=False) for _ in range(12)]
    for serve in serves:
        serve.wait_ready()
        for headers, status in (({}, 401), ({"X-Api-Key": TOKEN}, 200), ({"X-Api-Key": "wrong"}, 401)):
            assert call(serve.url, "GET", API + "/node", headers=headers).status == status
        serve.process.send_signal(signal.SIGTERM)
    for serve in serves:
        assert serve.process.wait(timeout=10) == 0, serve.stderr()
        assert "Received SIGTERM; stopping" in serve.stderr()


@pytest.mark.parametrize(
    "tokens,secret,key",
    [
        (("",), SECRET, "pvc.api.authentication.tokens"),
        (("   ",), SECRET, "pvc.api.authentication.tokens"),
        ((TOKEN, ""), SECRET, "pvc.api.authentication.tokens"),
        ((), SECRET, "pvc.api.authentication.tokens"),
        ((TOKEN,), "", "pvc.api.authentication.secret_key"),
    ],
)
def test_serve_refuses_empty_credentials(tmp_path: Any, tokens: tuple[str, ...], secret: str, key: str) -> None:
    port = free_port()
    r = run_pvc("--config", write_config(tmp_path, auth=True, tokens=tokens, secret=secret, port=port), "serve")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0], r.stderr
    assert "Listening" not in r.stdout and refused(port)


def test_serve_refuses_a_missing_required_key(tmp_path: Any) -> None:
    r = run_pvc("--config", write_config(tmp_path, drop=("debug",)), "serve", "--listen", "127.0.0.1:0")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pvc.debug" in lines[0], r.stderr


@pytest.mark.parametrize(
    "cert,key,expected",
    [
        ("missing", "key", ["pvc.api.ssl.cert_file", "missing.pem"]),
        ("cert", "missing", ["pvc.api.ssl.key_file", "missing.pem"]),
        ("directory", "key", ["pvc.api.ssl.cert_file", "a-directory"]),
        ("cert", "directory", ["pvc.api.ssl.key_file", "a-directory"]),
        ("garbage", "key", ["pvc.api.ssl", "garbage.pem"]),
        ("cert", "garbage", ["pvc.api.ssl", "garbage.pem"]),
        ("cert", "other_key", ["pvc.api.ssl", "cert.pem", "other-key.pem"]),
    ],
)
def test_serve_refuses_bad_tls_files(tmp_path: Any, tls_files: dict[str, str], cert: str, key: str,
                                     expected: list[str]) -> None:
    port = free_port()
    r = run_pvc("--config", write_config(tmp_path, tls=(tls_files[cert], tls_files[key]), port=port), "serve")
    assert r.returncode != 0, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ") and "None" not in lines[0]
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in r.stderr and "Listening" not in r.stdout
    assert refused(port)


def test_one_tls_request(tmp_path: Any, tls_files: dict[str, str], start_serve: Callable[..., Serve]) -> None:
    serve = start_serve(write_config(tmp_path, auth=True, tls=(tls_files["cert"], tls_files["key"])),
                        "--listen", "127.0.0.1:0")
    assert serve.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=tls_files["cert"])  # verifies the chain and the IP
    body, headers = form({"token": TOKEN})
    r = call(serve.url, "POST", API + "/auth/login", body, headers, context=context)
    assert r.status == 200 and r.json()["message"].startswith("Authenticated")
    cookie = r.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"secure", "httponly", "samesite"} <= attributes
    assert serve.stop() == 0
    assert TOKEN not in serve.stderr()


# --- ZooKeeper outage ---------------------------------------------------------------------------


@pytest.fixture
def own_zookeeper(tmp_path: Any) -> Iterator[ZooKeeperServer]:
    with ZooKeeperServer(str(tmp_path / "zookeeper")) as server:
        yield server


def poll(check: Callable[[], Answer | None], timeout: float, what: str) -> Answer:
    """Repeat ``check`` until it returns an answer, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.05)  # poll interval


@pytest.mark.zk
def test_zookeeper_outage_is_503_and_recovers(tmp_path: Any, own_zookeeper: ZooKeeperServer,
                                              start_serve: Callable[..., Serve]) -> None:
    chroot = "/outage"
    admin = ZooKeeperStore([own_zookeeper.hosts])
    try:
        admin.commit([Create(chroot)])
    finally:
        admin.close()
    config = write_config(tmp_path, coordinators=(own_zookeeper.hosts,), chroot=chroot)
    init = run_pvc("--config", config, "init")
    assert init.returncode == 0, init.stderr
    serve = start_serve(config, "--listen", "127.0.0.1:0")
    assert any(line.startswith(f"Store: ZooKeeper at {own_zookeeper.hosts}{chroot}") for line in serve.stdout)
    url = serve.url
    r = call(url, "GET", API + "/node")
    assert (r.status, r.json()) == (200, [])

    stopped = time.monotonic()
    own_zookeeper.stop()

    def unavailable() -> Answer | None:
        answer = call(url, "GET", API + "/node")
        assert answer.status in (200, 503), answer.body
        return answer if answer.status == 503 else None

    r = poll(unavailable, 10, "no 503")
    took = time.monotonic() - stopped
    print(f"first 503 after {took:.2f} s")
    assert took < 2.0, f"the first 503 came {took:.2f} s after ZooKeeper stopped"
    body = r.json()
    assert body["status"] == 503 and body["error"] == "unavailable" and set(body) == {"message", "error", "status"}
    # While it is down, every request answers quickly: reads and actions alike are 503.
    r = call(url, "GET", API + "/node/hv1")
    assert r.status == 503 and r.elapsed < 2.0
    body, headers = form({"domain-state": "flush"})
    r = call(url, "POST", API + "/node/hv1/domain-state", body, headers)
    assert r.status == 503 and r.elapsed < 2.0 and r.json()["error"] == "unavailable"
    assert call(url, "GET", API).status == 209  # the server itself is alive

    own_zookeeper.start()

    def available() -> Answer | None:
        answer = call(url, "GET", API + "/node")
        assert answer.status in (200, 503), answer.body
        return answer if answer.status == 200 else None

    restarted = time.monotonic()
    r = poll(available, 30, "no 200 after ZooKeeper came back")
    print(f"200 again after {time.monotonic() - restarted:.2f} s")
    assert r.json() == []
    assert serve.process.poll() is None  # the same pvc serve, never restarted
    assert serve.stop() == 0
