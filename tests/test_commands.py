"""The command channel to node agents (issue 9, item 1), with real agents on both engines.

Each request has its own entry; the addressed agent claims it once, runs it and reports; the
caller waits on a watch. Checked here: results and failures reach the caller, nothing is lost or
run twice under concurrency, a command not started by its deadline never runs, a node that is not
alive or dies while holding a command fails the request instead of hanging, and the number of
waiting requests is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pvc.agent import commands as agent_commands
from pvc.agent.commands import HANDLERS, Outcome
from pvc.lib import commands, schema
from pvc.lib.core import Cluster
from pvc.lib.errors import CommandFailed, InvalidState, NotFound, Timeout, Unavailable
from pvc.lib.store import Create
from tests.agent_fixtures import AgentCluster, agents, config_file, spawn, until  # noqa: F401


def entries(core: Cluster) -> list[str]:
    return core.store.children(schema.COMMANDS)


@pytest.fixture
def one(agents: AgentCluster) -> AgentCluster:
    agents.start("hv1")
    return agents


def test_noop_round_trip_and_cleanup(one: AgentCluster) -> None:
    result = commands.run(one.core, "hv1", "noop", {"echo": {"n": 5}})
    assert result.data == {"node": "hv1", "echo": {"n": 5}}
    assert "did nothing" in result.message
    assert entries(one.core) == []
    assert commands.run_on_primary(one.core, "noop", {"echo": 1}).data["echo"] == 1
    assert list(one.agents["hv1"].commands.runs.values()) == [1, 1]


def test_failure_carries_the_reason(one: AgentCluster) -> None:
    with pytest.raises(CommandFailed, match="the disk is on fire"):
        commands.run(one.core, "hv1", "noop", {"fail": "the disk is on fire"})
    with pytest.raises(CommandFailed, match="does not know the command 'no_such_thing'"):
        commands.run(one.core, "hv1", "no_such_thing", {})
    assert entries(one.core) == []


def test_node_not_alive_fails_at_once(agents: AgentCluster) -> None:
    agents.start("hv1")
    agents.agents["hv1"].stop()
    started = time.monotonic()
    with pytest.raises(InvalidState, match="Node 'hv1' cannot carry out 'noop': its daemon is stop"):
        commands.run(agents.core, "hv1", "noop", {}, timeout=30)
    with pytest.raises(InvalidState, match="'ghost' cannot carry out 'noop': it does not exist"):
        commands.run(agents.core, "ghost", "noop", {}, timeout=30)
    assert time.monotonic() - started < 10  # not the 30 s deadline
    assert entries(agents.core) == []


def test_expired_command_is_never_run(agents: AgentCluster) -> None:
    agents.start("hv1", command_workers=1)
    worker = agents.agents["hv1"].commands
    busy = threading.Thread(target=commands.run, args=(agents.core, "hv1", "noop", {"sleep": 1.5}))
    busy.start()
    until(lambda: worker._busy == 1, what="the worker to be busy")
    # The only worker is busy: this one cannot start before its deadline, so it expires.
    with pytest.raises(Timeout, match="did not start 'noop' within 0.3 s; it was not run and will not be"):
        commands.run(agents.core, "hv1", "noop", {"echo": "late"}, timeout=0.3)
    # An entry whose caller went away: the agent itself refuses it once its deadline has passed.
    orphan = commands.new_id()
    entry = {"id": orphan, "node": "hv1", "command": "noop", "args": {}, "state": "new",
             "created": time.time(), "deadline": time.time() + 0.3, "timeout": 0.3}
    agents.core.store.commit([Create(schema.command(orphan), commands.encode(entry))])
    busy.join(10)
    assert not busy.is_alive()

    def state() -> str:
        return commands.decode(agents.core.store.get(schema.command(orphan)).value)["state"]

    until(lambda: state() == "expired", what="the orphan to be expired")
    until(lambda: worker._busy == 0, what="the worker to be idle")
    assert orphan not in worker.runs
    assert len(worker.runs) == 1  # only the busy one ever ran


def test_concurrent_commands_none_lost_none_twice(agents: AgentCluster) -> None:
    agents.start("hv1", command_workers=4)
    agents.start("hv2")
    results: list[Any] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        core = Cluster(agents.settings)  # each client its own store session
        try:
            results.append(commands.run(core, "hv1" if i % 2 else "hv2", "noop", {"echo": i, "sleep": 0.05}).data)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            core.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(r["echo"] for r in results) == list(range(20))
    assert all(r["node"] == ("hv1" if r["echo"] % 2 else "hv2") for r in results)
    runs = {**agents.agents["hv1"].commands.runs, **agents.agents["hv2"].commands.runs}
    assert len(runs) == 20 and set(runs.values()) == {1}
    assert entries(agents.core) == []


def test_waiting_requests_are_bounded(agents: AgentCluster) -> None:
    agents.start("hv1")
    core = Cluster(agents.settings.replace(command_waiters=2))
    try:
        waiting = [threading.Thread(target=commands.run, args=(core, "hv1", "noop", {"sleep": 2})) for _ in range(2)]
        for t in waiting:
            t.start()
        until(lambda: len(entries(core)) == 2, what="two waiting commands")
        with pytest.raises(Unavailable, match="Too many requests are waiting for node commands \\(2"):
            commands.run(core, "hv1", "noop", {})
        for t in waiting:
            t.join(10)
        assert commands.run(core, "hv1", "noop", {"echo": "after"}).data["echo"] == "after"
    finally:
        core.close()


def test_tree_change_commits_with_the_result(one: AgentCluster) -> None:
    pool = schema.pool("chan-test")

    def make(ctx: agent_commands.Context, args: dict) -> Outcome:
        return Outcome("made", ops=(Create(pool, ""),))

    HANDLERS["test_make"] = make
    try:
        assert commands.run(one.core, "hv1", "test_make", {}).message == "made"
        assert one.core.store.exists(pool)
        # The same change again conflicts: the command fails and says why.
        with pytest.raises(CommandFailed, match="made; but the cluster tree could not be updated"):
            commands.run(one.core, "hv1", "test_make", {})
    finally:
        del HANDLERS["test_make"]
        one.core.store.delete_tree(pool)


def test_agent_restart_fails_what_it_was_running(agents: AgentCluster) -> None:
    agents.start("hv1")
    agents.agents["hv1"].stop()
    stale = commands.new_id()
    entry = {"id": stale, "node": "hv1", "command": "noop", "args": {}, "state": "running",
             "created": time.time(), "deadline": time.time() + 60, "timeout": 60}
    agents.core.store.commit([Create(schema.command(stale), commands.encode(entry))])
    agents.start("hv1")
    value = commands.decode(agents.core.store.get(schema.command(stale)).value)
    assert value["state"] == "failed" and "restarted while carrying out 'noop'" in value["message"]


def test_finished_entries_nobody_collected_are_swept(one: AgentCluster) -> None:
    old = commands.new_id()
    entry = {"id": old, "node": "hv1", "command": "noop", "args": {}, "state": "done", "message": "",
             "created": time.time() - 600, "deadline": time.time() - 540, "finished": time.time() - 590}
    one.core.store.commit([Create(schema.command(old), commands.encode(entry))])
    one.agents["hv1"].commands._wake.set()
    until(lambda: not one.core.store.exists(schema.command(old)), what="the old entry to be swept")


def test_node_killed_while_running_fails_cleanly(agents: AgentCluster, tmp_path: Path) -> None:
    """A `pvc agent` process killed with SIGKILL in the middle of a command: the caller learns
    it as soon as the node's keepalive goes stale, long before the command's deadline."""
    agents.start("hv1")  # the primary, so the node below is a plain one
    config = config_file(tmp_path / "hv9.yaml", agents.settings, name="hv9", coordinator=False,
                         libvirt_uri=agents.node_uri("hv9"))
    proc = spawn(["agent"], config)
    try:
        until(lambda: agents.core.store.exists(schema.node("hv9"))
              and commands._node_problem(agents.core, "hv9") is None, timeout=30, what="hv9 to run")
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                commands.run(agents.core, "hv9", "noop", {"sleep": 120}, timeout=120)
            except BaseException as e:  # noqa: BLE001 - checked below
                outcome.append(e)

        caller = threading.Thread(target=call)
        caller.start()

        def running() -> bool:
            values = [commands.decode(e.value) for e in agents.core.store.get_many(
                [schema.command(i) for i in entries(agents.core)]).values() if e]
            return any(v and v["state"] == "running" for v in values)

        until(running, timeout=10, what="the command to run on hv9")
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        caller.join(30)
        assert not caller.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], InvalidState)
        assert "Node 'hv9' stopped while carrying out 'noop'; its outcome is unknown" in str(outcome[0])
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_command_ids_and_names_are_validated(one: AgentCluster) -> None:
    from pvc.lib.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        commands.run(one.core, "hv1", "rm -rf", {})
    with pytest.raises(InvalidArgument):
        commands.run(one.core, "../hv1", "noop", {})
    with pytest.raises(InvalidArgument):
        schema.command("../../nodes")
    with pytest.raises(NotFound):
        one.core.store.get(schema.command("0" * 32))
    assert json.loads(commands.encode({"b": 1, "a": 2})) == {"a": 2, "b": 1}


def test_waiting_requests_do_not_starve_the_server(agents: AgentCluster, tmp_path: Path) -> None:
    """Through a real `pvc serve` with 4 workers and room for 2 waiting requests: two storage
    actions wait on a node whose Ceph does not answer (a monitor address nobody listens on), a
    third is answered 503 at once, and other routes are answered meanwhile."""
    import http.client
    import urllib.parse

    from pvc.server.run import build_server, url_of

    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon host = 127.0.0.1:9\nauth client required = none\n")
    agents.start("hv1", ceph_config=str(conf))
    settings = agents.settings.replace(threads=4, command_waiters=2, command_timeout=4.0)

    def call(method: str, path: str, body: str = "") -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request(method, "/api/v1" + path, body=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded"} if body else {})
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read() or b"null"), time.monotonic() - started
        finally:
            conn.close()

    api = Cluster(settings.replace(listen_port=0))  # the cluster the agents' fixture initialised
    server = build_server(api)
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    try:
        url = urllib.parse.urlsplit(url_of(server, api.settings))
        host, port = url.hostname, url.port
        results: list[tuple[int, dict[str, Any], float]] = []
        waiting = [threading.Thread(target=lambda i=i: results.append(
            call("POST", "/storage/ceph/pool", f"pool=stuck{i}&pgs=8"))) for i in range(2)]
        for t in waiting:
            t.start()
        until(lambda: len(entries(agents.core)) == 2, what="two waiting storage requests")
        status, body, seconds = call("POST", "/storage/ceph/pool", "pool=third&pgs=8")
        assert status == 503 and "Too many requests are waiting for node commands" in body["message"]
        assert seconds < 2
        status, body, seconds = call("GET", "/node")
        assert status == 200 and body[0]["name"] == "hv1" and seconds < 2
        for t in waiting:
            t.join(30)
        assert sorted(r[0] for r in results) == [510, 510], results
        assert not agents.core.store.exists(schema.CEPH_POOLS + "/stuck0")
    finally:
        server.stop()
        serving.join(15)
        api.close()
