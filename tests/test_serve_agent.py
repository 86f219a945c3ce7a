"""`pvc serve` on the embedded default runs this host's node agent: one host is a working
one-node cluster (the README's first command). Real subprocesses, real HTTP, the real CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any, Callable

from tests.agent_fixtures import until, vm_xml
from tests.test_serve import API, ROOT, Serve, call, form, pvc_env, start_serve, write_config  # noqa: F401
from tests.test_agent import meminfo_total_mib

UUID = "11111111-2222-3333-4444-555555555555"


def pvc(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvc", "--config", config, *args], capture_output=True, text=True,
                          timeout=60, env=pvc_env(), cwd=ROOT, stdin=subprocess.DEVNULL)


def test_serve_is_a_working_one_node_cluster(tmp_path: Any, start_serve: Callable[..., Serve]) -> None:
    config = write_config(tmp_path)
    serve = start_serve(config, "--listen", "127.0.0.1:0")
    assert "Node agent: hv-local (hypervisor test://" in "\n".join(serve.stdout)
    url = serve.url

    def node() -> dict[str, Any]:
        r = call(url, "GET", API + "/node")
        assert r.status == 200, r.body
        nodes = r.json()
        return nodes[0] if nodes else {}

    local = until(lambda: (n := node()).get("coordinator_state") == "primary" and n, timeout=10,
                  what="the local node, running and primary")
    assert (local["name"], local["domain_state"], local["coordinator_state"]) == ("hv-local", "ready", "primary")
    assert local["memory"]["total"] == meminfo_total_mib() and local["memory"]["free"] > 0

    # The API: define, start, shut down
    body, headers = form({"xml": vm_xml("web1", UUID)})
    r = call(url, "POST", API + "/vm", body, headers)
    assert r.status == 200, r.body
    body, headers = form({"state": "start"})
    assert call(url, "POST", API + "/vm/web1/state", body, headers).status == 200
    until(lambda: call(url, "GET", API + "/vm/web1/state").json()["state"] == "start"
          and node()["running_domains"] == [UUID], what="web1 running")
    assert node()["memory"]["allocated"] == 256
    body, headers = form({"state": "shutdown"})
    assert call(url, "POST", API + "/vm/web1/state", body, headers).status == 200
    until(lambda: call(url, "GET", API + "/vm/web1/state").json()["state"] == "stop"
          and node()["running_domains"] == [], what="web1 shut down")

    # The CLI, on the same embedded file, while `pvc serve` runs
    assert pvc(config, "vm", "start", "web1").returncode == 0
    until(lambda: node()["running_domains"] == [UUID], what="web1 started by the CLI")
    listed = json.loads(pvc(config, "vm", "list", "--format", "json").stdout)
    assert [(v["name"], v["state"], v["node"]) for v in listed] == [("web1", "start", "hv-local")]
    assert pvc(config, "vm", "shutdown", "web1").returncode == 0
    until(lambda: node()["running_domains"] == [], what="web1 shut down by the CLI")
    assert pvc(config, "vm", "start", "web1").returncode == 0
    until(lambda: node()["running_domains"] == [UUID], what="web1 started again")
    assert pvc(config, "vm", "stop", "web1").returncode == 0
    until(lambda: node()["running_domains"] == [] and
          call(url, "GET", API + "/vm/web1/state").json()["state"] == "stop", what="web1 stopped by the CLI")

    assert serve.stop(signal.SIGTERM) == 0
    err = serve.stderr()
    assert "Traceback" not in err and "Node agent 'hv-local' stopped" in err
    info = json.loads(pvc(config, "node", "info", "hv-local", "--format", "json").stdout)
    assert info[0]["daemon_state"] == "stop" and info[0]["coordinator_state"] == "secondary"


def test_serve_without_the_agent(tmp_path: Any, start_serve: Callable[..., Serve]) -> None:
    serve = start_serve(write_config(tmp_path), "--listen", "127.0.0.1:0", "--no-agent")
    assert not any(line.startswith("Node agent") for line in serve.stdout)
    r = call(serve.url, "GET", API + "/node")
    assert (r.status, r.json()) == (200, [])
    assert serve.stop() == 0


def test_an_unreachable_hypervisor_is_one_clear_line(tmp_path: Any, start_serve: Callable[..., Serve]) -> None:
    config = write_config(tmp_path, node={"name": "hv-local", "libvirt_uri": "test:///nonexistent/node.xml"})
    serve = start_serve(config, "--listen", "127.0.0.1:0")
    problem = until(lambda: (n := call(serve.url, "GET", API + "/node").json()) and n[0]["problem"], timeout=10,
                    what="the node's problem")
    assert "hypervisor test:///nonexistent/node.xml unavailable" in problem
    # the only node takes no VMs
    r = subprocess.run([sys.executable, "-m", "pvc", "--config", config, "vm", "define", "-"], input=vm_xml("web1", UUID),
                       capture_output=True, text=True, timeout=60, env=pvc_env(), cwd=ROOT)
    assert r.returncode == 4 and "No node can take the VM: hv-local: hypervisor test:///nonexistent" in r.stderr
    assert serve.stop() == 0
    err = serve.stderr()
    lines = [line for line in err.splitlines() if "unavailable" in line]
    assert len(lines) == 1 and "Traceback" not in err, err


def test_serve_carries_out_storage_commands(tmp_path: Any, start_serve: Callable[..., Serve], ceph_lab: Any) -> None:
    """The README's first command with a Ceph: `pvc serve`'s own local agent runs the storage
    commands (issue 9) against the lab Ceph, and publishes its figures."""
    import uuid

    import yaml

    config = write_config(tmp_path)
    with open(config) as f:
        data = yaml.safe_load(f)
    data["pvc"]["ceph"] = {"config": ceph_lab.conf, "figures_interval": 1}
    with open(config, "w") as f:
        yaml.safe_dump(data, f)
    serve = start_serve(config, "--listen", "127.0.0.1:0")
    url = serve.url
    until(lambda: (n := call(url, "GET", API + "/node").json()) and n[0]["coordinator_state"] == "primary",
          timeout=10, what="the local node to be primary")
    pool = "serve-" + uuid.uuid4().hex[:8]
    try:
        body, headers = form({"pool": pool, "pgs": "8"})
        r = call(url, "POST", API + "/storage/ceph/pool", body, headers)
        assert r.status == 200 and pool in r.json()["message"], r.body
        body, headers = form({"pool": pool, "volume": "disk0", "size": "1G"})
        r = call(url, "POST", API + "/storage/ceph/volume", body, headers)
        assert r.status == 200, r.body
        assert ceph_lab.rbd("ls", "--format", "json", pool) == ["disk0"]
        r = call(url, "GET", API + f"/storage/ceph/volume/{pool}/disk0")
        assert r.status == 200 and r.json()[0]["stats"]["size"] == "1024M", r.body  # the original's format
        listed = json.loads(pvc(config, "storage", "ceph", "volume", "list", "--format", "json").stdout)
        assert [(v["pool"], v["name"]) for v in listed] == [(pool, "disk0")]
        status = until(lambda: (r := call(url, "GET", API + "/storage/ceph")).status == 200 and r.json(),
                       timeout=60, what="the primary's first Ceph figures")
        assert status["type"] == "status" and status["primary_node"] == "hv-local" and "HEALTH" in status["ceph_data"]
        assert call(url, "DELETE", API + f"/storage/ceph/volume/{pool}/disk0").status == 200
        r = call(url, "DELETE", API + f"/storage/ceph/pool/{pool}?yes_i_really_mean_it=1")
        assert r.status == 200, r.body
        assert pool not in ceph_lab.ceph("osd", "pool", "ls")
    finally:
        ceph_lab.run("ceph", "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it", check=False)
    assert serve.stop(signal.SIGTERM) == 0
    assert "Traceback" not in serve.stderr()
