"""Fuzzing: schemathesis against a real `pvc serve` (a subprocess on a loopback port), on both
engines, over every operation of the OpenAPI document (pvc/server/openapi.py).

Each operation gets positive cases (values valid by the document, with the names of the objects
that exist mixed in so that paths resolve) and negative cases (bodies and queries that break the
document, on existing objects). Every answer must be no 5xx, a documented status, in the
documented shape; and a refused action must leave the store exactly as it was (every key, value
and version). The embedded engine runs with authentication on (the token in every request), the
ZooKeeper one with it off, so both variants of the document are fuzzed.

Bounded by PVC_FUZZ_EXAMPLES (positive cases per operation; negative ones are two thirds of
that); derandomized, so a run is reproducible.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from pvc.lib.config import Settings, Token
from pvc.lib.core import Cluster
from pvc.lib.errors import PvcError
from pvc.lib.node_reports import NodeFacts, NodeFigures, publish_figures, register_node, report_domain_state
from pvc.lib.ops.acl import add_acl
from pvc.lib.ops.cluster import init_cluster
from pvc.lib.ops.lease import add_lease
from pvc.lib.ops.network import add_network
from pvc.lib.ops.vm import define_vm
from pvc.lib.store import Create
from pvc.server.openapi import PATH_NAME, openapi_document
from tests.test_serve import ROOT, pvc_env, write_config
from tests.vm_fixtures import vm_xml

EXAMPLES = int(os.environ.get("PVC_FUZZ_EXAMPLES", "20"))
TOKEN = "fuzz-token-0123456789"
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]

NODES = ("hv1", "hv2", "hv3", "hv8", "hv9")
VMS = {"web1": "0b6f2a56-3b61-4b0c-9c59-4a4d2c1f0a01", "web2": "0b6f2a56-3b61-4b0c-9c59-4a4d2c1f0a02"}
NETWORKS = ("100", "mgmt", "200", "lan")
MACS = ("52:54:00:00:00:01", "52:54:00:00:00:02")
ACLS = ("ssh", "web")
#: Names that exist, by path value; mixed into the generated values so that paths resolve.
KNOWN = {"node": NODES, "vm": tuple(VMS) + tuple(VMS.values()), "network": NETWORKS, "lease": MACS, "acl": ACLS}


def populate(core: Cluster) -> None:
    """The fuzzing cluster; run before each operation's cases, it re-creates what the previous
    operation's successful actions removed (a removed VM, network, lease or rule)."""
    for name in NODES:
        if not core.store.exists(f"/nodes/{name}"):
            register_node(core, name, NodeFacts(8, "6.1.0-amd64", "GNU/Linux", "x86_64"), coordinator=name != "hv3")
            publish_figures(core, name, NodeFigures(memtotal=32000, memused=8000, memfree=24000),
                            daemon_state="dead" if name == "hv9" else "run")
            report_domain_state(core, name, "flushed" if name == "hv8" else "ready")
    for number, description, kind in ((100, "mgmt", "managed"), (200, "lan", "bridged")):
        try:
            add_network(core, number, description, kind, ip4_network="10.0.0.0/24", ip4_gateway="10.0.0.1",
                        dhcp4=True, dhcp4_start="10.0.0.100", dhcp4_end="10.0.0.199")
        except PvcError:
            pass  # still there (or its VNI or description taken by a modification: fine too)
    for i, mac in enumerate(MACS):
        try:
            add_lease(core, "100", mac, f"10.0.0.{10 + i}", f"host{i}")
        except PvcError:
            pass
    for name, rule in zip(ACLS, ("tcp dport 22 accept", "tcp dport 443 accept")):
        for direction in ("in", "out"):
            try:
                add_acl(core, "100", name, direction, rule)
            except PvcError:
                pass
    for name, uuid in VMS.items():
        if not core.store.exists(f"/domains/{uuid}"):
            try:
                define_vm(core, vm_xml(name, uuid), node="hv1")
            except PvcError:
                pass  # its name was taken by a modification of the other VM


def snapshot(core: Cluster) -> dict[str, tuple[str, int]]:
    """Every key of the cluster with its value and version."""
    entries = core.store.get_many(core.store.subtree("/"))
    return {path: (e.value, e.version) for path, e in entries.items() if e is not None}


def fuzz_document(auth: bool) -> dict[str, Any]:
    """The served document, with the names that exist mixed into path values and `node`, and
    valid XML of new VMs offered for `xml`: still the document's values, but ones that resolve."""
    document = copy.deepcopy(openapi_document(Settings(auth_enabled=auth, tokens=(Token(TOKEN),) if auth else ())))
    new_xml = [vm_xml(f"fuzz{i}", str(uuidlib.UUID(int=i + 1))) for i in range(3)]
    for item in document["paths"].values():
        for o in item.values():
            for p in o.get("parameters", []):
                if p["in"] == "path" and p["name"] in KNOWN:
                    p["schema"] = {"anyOf": [{"enum": list(KNOWN[p["name"]])}, PATH_NAME]}
            for media in o.get("requestBody", {}).get("content", {}).values():
                props = media["schema"]["properties"]
                if "node" in props:
                    props["node"] = {"anyOf": [{"enum": list(NODES)}, props["node"]]}
                if "xml" in props:
                    props["xml"] = {"anyOf": [{"enum": new_xml}, props["xml"]]}
    return document


#: 510 is the contract's "the action failed, nothing changed" and 501 the planned route's answer:
#: the only 5xx statuses expected (a 500, 503 or 504 fails).
CONFIG = schemathesis.Config.from_dict({"checks": {"not_a_server_error": {
    "expected-statuses": ["2xx", "3xx", "4xx", "501", "510"]}}})
SCHEMAS = {auth: schemathesis.openapi.from_dict(fuzz_document(auth), config=CONFIG) for auth in (False, True)}
OPERATIONS = sorted((method.upper(), path) for path, item in SCHEMAS[False].raw_schema["paths"].items()
                    for method in item)


@dataclass
class Served:
    engine: str
    core: Cluster
    url: str
    headers: dict[str, str]
    process: subprocess.Popen
    stderr_path: str

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()


@pytest.fixture(scope="module", params=[pytest.param("embedded"), pytest.param("zookeeper", marks=pytest.mark.zk)])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`pvc serve --no-agent` on a free loopback port, on a cluster populated by :func:`populate`
    (no agent: nothing but the requests writes to the store)."""
    engine = request.param
    directory = tmp_path_factory.mktemp(f"fuzz-{engine}")
    auth = engine == "embedded"
    if engine == "zookeeper":
        server = request.getfixturevalue("zk_server")
        chroot = f"/fuzz-{uuidlib.uuid4().hex[:12]}"
        request.getfixturevalue("zk_admin").commit([Create(chroot)])
        config = write_config(directory, coordinators=(server.hosts,), chroot=chroot)
        settings = Settings(coordinators=(server.hosts,), zk_chroot=chroot)
    else:
        config = write_config(directory, auth=True, tokens=(TOKEN,))
        # Random login tokens fail; past the throttle's limit every request from 127.0.0.1 would
        # be 429 (documented, but then nothing else would be fuzzed).
        with open(config) as f:
            data = yaml.safe_load(f)
        data["pvc"]["api"]["authentication"]["failures_per_minute"] = 1_000_000
        with open(config, "w") as f:
            yaml.safe_dump(data, f)
        settings = Settings(store_path=str(directory / "pvc.sqlite"))
    core = Cluster(settings)
    if engine == "zookeeper":
        init_cluster(core)
    populate(core)
    stderr_path = str(directory / "serve.stderr")
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "pvc", "--config", config, "serve", "--no-agent",
                                    "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=err,
                                   stdin=subprocess.DEVNULL, text=True, env=pvc_env(), cwd=ROOT)
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.strip())
            if line.startswith("Listening on "):
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    served = Served(engine, core, "", {"X-Api-Key": TOKEN} if auth else {}, process, stderr_path)
    try:
        assert ready.wait(60) and process.poll() is None, (lines, served.stderr())
        served.url = next(line for line in lines if line.startswith("Listening on ")).split()[-1]
        served.url = served.url.removesuffix("/api/v1")
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()
        core.close()
    assert "Traceback" not in served.stderr(), served.stderr()[-4000:]


def _breakable(method: str, path: str) -> bool:
    """Whether negative cases can break something of the operation: its query or its body (they
    keep path values valid, since a broken one would only reach another route)."""
    operation = SCHEMAS[False][path][method]
    return bool(len(operation.query) or len(operation.body))


#: Every operation with positive cases, and with negative ones where it has values to break.
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or _breakable(m, p)]


def _cases(operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
    if mode == GenerationMode.POSITIVE:
        return operation.as_strategy(generation_mode=mode)
    # Negative: break the query and the body, on objects that exist (a broken path value would
    # only reach another route).
    names = [p.name for p in operation.path_parameters]
    if not names:
        return operation.as_strategy(generation_mode=mode)
    fixed = st.fixed_dictionaries({n: st.sampled_from(KNOWN.get(n, ("x",))) for n in names})
    return fixed.flatmap(lambda values: operation.as_strategy(generation_mode=mode, path_parameters=values))


# schemathesis's own strategies use the random module (its form and header generation); hypothesis
# deprecates that, and this suite turns warnings into errors.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {mode.name.lower()}" for m, p, mode in CASES])
def test_fuzz(served: Served, method: str, path: str, mode: GenerationMode) -> None:
    operation = SCHEMAS[bool(served.headers)][path][method]
    populate(served.core)
    mutating = method != "GET"
    # The store as it is; re-read after every action: a refused one must have left it as it was.
    baseline = [snapshot(served.core) if mutating else {}]
    sent = [0]

    @settings(max_examples=EXAMPLES if mode == GenerationMode.POSITIVE else max(1, EXAMPLES * 2 // 3),
              deadline=None, database=None, derandomize=True, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=_cases(operation, mode))
    def run(case: Any) -> None:
        response = case.call(base_url=served.url, headers=served.headers, timeout=30)
        sent[0] += 1
        case.validate_response(response, checks=CHECKS, headers=served.headers)
        if mutating:
            before, after = baseline[0], snapshot(served.core)
            baseline[0] = after
            if response.status_code != 200:
                changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                assert not changed, (f"refused ({response.status_code}) but changed {changed[:10]}: "
                                     f"{case.as_curl_command()}")

    run()
    assert sent[0] > 0
