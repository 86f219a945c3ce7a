"""Clusters of real node agents for the tests: each agent has its own store session and its own
private hypervisor (libvirt's test driver on a node file of its own: `test:///<path>.xml` gives
every connection a separate, empty hypervisor), on the engine under test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
import yaml

from pvc.agent.daemon import Agent
from pvc.lib.config import Settings
from pvc.lib.core import Cluster
from pvc.lib.ops import node as node_ops
from pvc.lib.ops import vm as vm_ops

T = TypeVar("T")

#: Fast intervals: a node is dead after 0.5 s × 6 = 3 s without a keepalive (keepalive times are
#: whole seconds, as in the original, so the limit must stay well above interval + 1 s).
FAST = {"keepalive_interval": 0.5, "fence_intervals": 6, "shutdown_timeout": 5.0, "migration_timeout": 10.0,
        "flush_parallel": 3}

NODE_FILE = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes><sockets>1</sockets>
  <cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>16777216</memory>
</node>
"""


def until(condition: Callable[[], T], timeout: float = 10.0, what: str = "the condition") -> T:
    """Poll ``condition`` until it is truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout:g} s waiting for {what} (last: {result!r})")
        pause.wait(0.01)


def vm_xml(name: str, uuid: str, memory_mib: int = 256, vcpus: int = 1, extra: str = "") -> str:
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>{memory_mib}</memory>"
            f"<vcpu>{vcpus}</vcpu><os><type arch='x86_64'>hvm</type></os><devices>{extra}</devices></domain>")


def uuid_of(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


class AgentCluster:
    """Agents on one cluster (the engine's store), each a node with a private hypervisor."""

    def __init__(self, settings: Settings, workdir: Path):
        self.settings = settings.replace(**FAST)
        self.workdir = workdir
        self.core = Cluster(self.settings)  # the admin's handle (the tests' CLI and API calls)
        self.agents: dict[str, Agent] = {}
        self._cores: list[Cluster] = []

    def node_uri(self, name: str, cpus: int = 4) -> str:
        path = self.workdir / f"{name}.xml"
        path.write_text(NODE_FILE.format(cpus=cpus))
        return f"test://{path}"

    def agent_settings(self, name: str, coordinator: bool = True, **changes: Any) -> Settings:
        return self.settings.replace(node_name=name, libvirt_uri=changes.pop("libvirt_uri", None) or self.node_uri(name),
                                     node_coordinator=coordinator, **changes)

    def start(self, name: str, coordinator: bool = True, ready: bool = True, **changes: Any) -> Agent:
        core = Cluster(self.agent_settings(name, coordinator, **changes))
        self._cores.append(core)
        agent = Agent(core)
        agent.start()
        self.agents[name] = agent
        until(lambda: self.node(name)["daemon_state"] == "run", what=f"{name} to run")
        if ready:
            node_ops.set_domain_state(self.core, name, "ready")
            node_ops.wait_domain_state(self.core, name, "ready", timeout=10)
        return agent

    def crash(self, name: str) -> None:
        """End ``name``'s agent as a crash would: nothing written, its keepalive just stops (its
        daemon state stays ``run``). Its domains keep running in its private hypervisor, as they
        would on a hung host."""
        self.agents[name].stop(clean=False)
        assert self.node(name)["daemon_state"] == "run"

    def outcome(self, name: str, timeout: float = 10.0) -> str:
        """A dead node's recorded outcome (its ``problem`` once the fence is over)."""
        def done() -> str | None:
            problem = self.node(name)["problem"]
            return problem if problem and not problem.startswith("dead: being fenced by ") else None

        return until(done, timeout=timeout, what=f"the outcome of dead node {name}")

    def node(self, name: str) -> dict[str, Any]:
        return node_ops.get_node(self.core, name)[0]

    def vm(self, name: str) -> dict[str, Any]:
        return vm_ops.get_vm(self.core, name)[0]

    def active(self, name: str) -> set[str]:
        """UUIDs of the domains active in node ``name``'s hypervisor."""
        return set(self.agents[name].hv.active())

    def define(self, name: str, i: int, node: str, start: bool = True, **kw: Any) -> str:
        uuid = uuid_of(i)
        vm_ops.define_vm(self.core, vm_xml(name, uuid, **kw), node=node)
        if start:
            vm_ops.set_vm_state(self.core, name, "start")
            until(lambda: uuid in self.active(node) and self.vm(name)["state"] == "start", what=f"{name} to start")
        return uuid

    def settled(self, name: str, state: str, node: str) -> bool:
        vm = self.vm(name)
        uuid = vm["uuid"]
        if vm["state"] != state or vm["node"] != node:
            return False
        running_on = {n for n, a in self.agents.items() if not a.stopping.is_set() and uuid in self.active(n)}
        return running_on == ({node} if state == "start" else set())

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for core in self._cores:
            core.close()
        self.core.close()


@pytest.fixture
def agents(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AgentCluster]:
    from pvc.lib.ops.cluster import init_cluster

    cluster = AgentCluster(settings, tmp_path)
    if settings.engine == "zookeeper":
        init_cluster(cluster.core)
    yield cluster
    cluster.close()


def config_file(path: Path, settings: Settings, **node: Any) -> Path:
    """A configuration file for a `pvc agent` or `pvc serve` subprocess on the same cluster."""
    system = {
        "intervals": {"keepalive_interval": settings.keepalive_interval, "shutdown_timeout": settings.shutdown_timeout},
        "fencing": {"intervals": {"fence_intervals": settings.fence_intervals}},
        "migration": {"timeout": settings.migration_timeout},
    }
    data = {"pvc": {
        "debug": False,
        "coordinators": list(settings.coordinators),
        "api": {"listen_address": "127.0.0.1", "authentication": {"enabled": False}, "ssl": {"enabled": False}},
        "store": {"path": settings.store_path or "", "chroot": settings.zk_chroot or "/"},
        "system": system,
        "node": node,
    }}
    path.write_text(yaml.safe_dump(data))
    return path


def spawn(args: list[str], config: Path) -> subprocess.Popen[str]:
    """`pvc ARGS` with ``config``; its output goes to ``<config>.log``."""
    env = {**os.environ, "PVC_CONFIG_FILE": str(config)}
    pvc = str(Path(sys.executable).parent / "pvc")
    with open(config.with_suffix(".log"), "w") as log:
        return subprocess.Popen([pvc, *args], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
