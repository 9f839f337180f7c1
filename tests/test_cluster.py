"""Several real server processes on one real PostgreSQL database, with real agents.

Each node has a home of its own (its lock, its cache of packages) and the cluster's master key;
they share the database named by store_url, in a schema of the test's own.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.cli.server import loopback_server_arguments
from tentacle_poll.exceptions import CertificateRejected, RequestRejected
from tentacle_poll.protocol.models import PollRequest, PollResponse, TaskState
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.server.vault import KEY_FILE
from tentacle_poll.tls import load_identity

from .conftest import (
    free_port,
    listen_at,
    new_agent_home,
    register_at,
    run_and_follow,
    script_task,
    wait_for_line,
)
from .helpers import eventually
from .processes import Daemon, start_agent_process, start_server_process
from .relay import CuttingRelay
from .test_cli import cli

pytestmark = pytest.mark.timeout(120)


@dataclass
class Node:
    home: Path
    comms: int
    admin_port: int
    process: Daemon | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.comms}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def thumbprint(self) -> str:
        return load_identity(self.home / "identity").thumbprint


@dataclass
class Cluster:
    nodes: list[Node]
    api_key: str
    store_url: str
    processes: list[Daemon]

    async def start(self, node: Node, *flags: str) -> Node:
        if not (node.home / KEY_FILE).exists() and node is not self.nodes[0]:
            shutil.copy(self.nodes[0].home / KEY_FILE, node.home / KEY_FILE)
        node.process = await start_server_process(
            node.home, node.comms, node.admin_port, *flags,
            store_url=self.store_url, advertised_url=node.url, lease_seconds="3",
        )  # fmt: skip
        self.processes.append(node.process)
        return node

    def admin(self, node: Node) -> AdminClient:
        return AdminClient(node.admin_url, self.api_key)


async def make_cluster(
    tmp_path: Path, pg_url: str, processes: list[Daemon], size: int, started: int | None = None
) -> Cluster:
    """``size`` nodes started one after the other; the others get the first one's master key
    (as docs/high-availability.md says to do), and take its certificate from the store. Only
    the first ``started`` nodes are started (all by default)."""
    nodes = [Node(tmp_path / f"node{n}", free_port(), free_port()) for n in range(size)]
    for node in nodes:
        node.home.mkdir(mode=0o700)
        (node.home / "server.toml").write_text(f'store_url = "{pg_url}"\n')
    store = await ServerHome(nodes[0].home).open_store(migrate=True)
    api_key = await store.create_api_key("tests")
    await store.close()
    cluster = Cluster(nodes, api_key, pg_url, processes)
    for node in nodes[: size if started is None else started]:
        await cluster.start(node)
    return cluster


@pytest.fixture
async def two_nodes(tmp_path: Path, pg_url: str, processes: list[Daemon]) -> Cluster:
    return await make_cluster(tmp_path, pg_url, processes, 2)


async def register_with(cluster: Cluster, node: Node, folder: Path, name: str) -> AgentHome:
    home = new_agent_home(folder)
    await register_at(node.url, node.thumbprint, cluster.api_key, folder, name)
    return home


async def agent_polling_both(
    tmp_path: Path, pg_url: str, processes: list[Daemon]
) -> tuple[Cluster, AgentHome, Daemon]:
    """Two nodes, and an agent registered with A that has learnt B from A's answers."""
    cluster = await make_cluster(tmp_path, pg_url, processes, 2)
    home = await register_with(cluster, cluster.nodes[0], tmp_path / "web1", "web1")
    agent = await start_agent_process(home.folder)
    processes.append(agent)
    await agent.wait_for(f"server node {cluster.nodes[1].url} joined the cluster")
    return cluster, home, agent


async def poll_when_trusted(home: AgentHome, node: Node) -> PollResponse:
    """A registration made through another node is trusted here within seconds."""
    async with asyncio.timeout(5):
        while True:
            try:
                return await poll_once(home, node)
            except CertificateRejected:
                await asyncio.sleep(0.05)


async def poll_once(home: AgentHome, node: Node) -> PollResponse:
    client = CommsClient(node.url, [node.thumbprint], home.identity_folder)
    try:
        return await client.post(POLL, PollRequest(free_slots=0, hold_seconds=0), PollResponse)
    finally:
        await client.close()


async def test_every_node_presents_one_certificate_and_knows_every_target(
    two_nodes: Cluster, tmp_path: Path
) -> None:
    a, b = two_nodes.nodes
    assert a.thumbprint == b.thumbprint
    home = await register_with(two_nodes, a, tmp_path / "web1", "web1")
    answer = await poll_when_trusted(home, b)  # registered through A, answered by B
    assert sorted(answer.nodes) == sorted([a.url, b.url])
    async with aiohttp.ClientSession() as session:

        async def both_list_both() -> bool:  # within moments of B joining, not a heartbeat
            listed = []
            for node in (a, b):
                async with session.get(f"{node.admin_url}/api/health") as response:
                    health = await response.json()
                listed.append(health["status"] == "ok" and sorted(health["nodes"]))
            return listed == [sorted([a.url, b.url])] * 2

        await eventually(both_list_both, 1.5)


async def test_a_task_queued_through_one_node_wakes_the_poll_another_holds(
    two_nodes: Cluster, tmp_path: Path, processes: list[Daemon]
) -> None:
    a, b = two_nodes.nodes
    await register_with(two_nodes, a, tmp_path / "web1", "web1")
    processes.append(await start_agent_process(tmp_path / "web1"))
    async with two_nodes.admin(b) as admin:
        for _ in range(3):
            started = time.monotonic()
            task = await admin.submit(script_task("web1", "echo from node b"))
            final = await admin.follow(task.id, lambda _: None)
            assert final.state == TaskState.SUCCEEDED
            # A poll is held 25 s: well under that, the wake-up went from B to A.
            assert time.monotonic() - started < 10


async def test_every_node_lists_an_agent_that_polls_only_another_as_connected(
    two_nodes: Cluster, tmp_path: Path, processes: list[Daemon]
) -> None:
    a, b = two_nodes.nodes
    await register_with(two_nodes, a, tmp_path / "web1", "web1")
    await register_with(two_nodes, a, tmp_path / "web2", "web2")  # registered, never started
    agent = await start_agent_process(tmp_path / "web1", discover_nodes="false")
    processes.append(agent)
    async with two_nodes.admin(b) as admin:

        async def b_sees_web1_connected() -> bool:
            return [t.name for t in await admin.targets(connected="true")] == ["web1"]

        await eventually(b_sees_web1_connected, 15)  # within a sweep of A
        assert [t.name for t in await admin.targets(connected="false")] == ["web2"]


async def test_a_target_deleted_through_one_node_is_refused_by_every_node(
    two_nodes: Cluster, tmp_path: Path
) -> None:
    a, b = two_nodes.nodes
    home = await register_with(two_nodes, a, tmp_path / "web1", "web1")
    await poll_once(home, a)
    async with two_nodes.admin(b) as admin:
        await admin.delete_target("web1")
    async with asyncio.timeout(10):
        while True:  # the trust reload on A takes a moment: within seconds, not minutes
            try:
                await poll_once(home, a)
            except RequestRejected:
                break
            except Exception:
                break
            await asyncio.sleep(0.1)


async def test_a_node_with_another_master_key_refuses_to_start_with_one_line(
    two_nodes: Cluster, tmp_path: Path, processes: list[Daemon]
) -> None:
    home = tmp_path / "node9"
    arguments = loopback_server_arguments(home, free_port(), free_port())
    stranger = await Daemon.start(*arguments, env={"TENTACLE_POLL_STORE_URL": two_nodes.store_url})
    processes.append(stranger)
    assert await asyncio.wait_for(stranger.stop(signal.SIGCONT), 30) == 1
    said = stranger.output
    assert "cannot open the cluster's server certificate" in said and "master.key" in said


async def test_an_agent_polls_the_nodes_its_node_announces_and_drops_one_that_leaves(
    tmp_path: Path, pg_url: str, processes: list[Daemon]
) -> None:
    cluster = await make_cluster(tmp_path, pg_url, processes, 3)
    a, b, c = cluster.nodes
    home = await register_with(cluster, a, tmp_path / "web1", "web1")
    agent = await start_agent_process(home.folder)
    processes.append(agent)
    for node in (b, c):  # told by A's answers; nothing configured on the target
        await agent.wait_for(f"server node {node.url} joined the cluster")
    polled = {n.url: n.discovered for n in home.settings().servers}
    assert polled == {a.url: False, b.url: True, c.url: True}
    listed = cli("poll-server", "list", "--home", str(home.folder)).stdout
    assert f"{b.url} (announced by its cluster)" in listed and f"{a.url}: " in listed
    assert c.process is not None
    await c.process.stop()  # leaves the cluster at once
    await agent.wait_for(f"server node {c.url} left the cluster", timeout=40)
    assert [n.url for n in home.settings().servers] == [a.url, b.url]
    async with cluster.admin(b) as admin:
        task = await admin.submit(script_task("web1", "echo still here"))
        assert (await admin.follow(task.id, lambda _: None)).state == TaskState.SUCCEEDED


async def test_a_node_killed_mid_stream_loses_no_line_and_the_task_ends_through_another(
    tmp_path: Path, pg_url: str, processes: list[Daemon]
) -> None:
    """The agent's only node at first is A; it learns B, then A is killed (kill -9) while the
    task prints: the rest of its output and its result go through B, every line once."""
    cluster = await make_cluster(tmp_path, pg_url, processes, 2, started=1)
    a, b = cluster.nodes
    home = await register_with(cluster, a, tmp_path / "web1", "web1")
    agent = await start_agent_process(home.folder)
    processes.append(agent)
    go = tmp_path / "go"  # the script prints on once the test has killed A
    script = (
        f"seq -f 'line %g' 1 1000; while [ ! -e {go} ]; do sleep 0.05; done; "
        "seq -f 'line %g' 1001 3000"
    )
    async with cluster.admin(a) as admin:
        task = await admin.submit(script_task("web1", script))
        await wait_for_line(admin, task.id, "line 1000")
    await cluster.start(b)
    await agent.wait_for(f"server node {b.url} joined the cluster")
    assert a.process is not None
    await a.process.kill()
    go.touch()
    async with cluster.admin(b) as admin:
        lines: list[str] = []
        final = await admin.follow(task.id, lambda e: lines.append(e.text))
    assert final.state == TaskState.SUCCEEDED
    assert lines == [f"line {n}" for n in range(1, 3001)]


async def test_a_node_killed_while_dispatching_runs_every_task_exactly_once(
    tmp_path: Path, pg_url: str, processes: list[Daemon]
) -> None:
    """Tasks leased by A and not yet accepted when it dies go back to the queue when their
    lease ends, and run through B; none runs twice."""
    cluster, _, _ = await agent_polling_both(tmp_path, pg_url, processes)
    a, b = cluster.nodes
    ran = tmp_path / "ran.txt"
    async with cluster.admin(b) as admin:
        tasks = [
            await admin.submit(script_task("web1", f"echo {n} >> {ran}; sleep 0.2"))
            for n in range(20)
        ]
        assert a.process is not None
        await a.process.kill()
        finals = [await admin.follow(t.id, lambda _: None) for t in tasks]
    assert [f.state for f in finals] == [TaskState.SUCCEEDED] * 20
    assert sorted(int(n) for n in ran.read_text().split()) == list(range(20))


async def test_a_certificate_rotation_through_one_node_reaches_every_node(
    two_nodes: Cluster, tmp_path: Path
) -> None:
    a, b = two_nodes.nodes
    home = await register_with(two_nodes, a, tmp_path / "web1", "web1")
    old = a.thumbprint
    async with two_nodes.admin(a) as admin:
        prepared = await admin.change_server_certificate("prepare")
    upcoming = prepared.next_thumbprint
    assert upcoming is not None
    await poll_when_trusted(home, b)

    async def b_announces_both() -> bool:
        return (await poll_once(home, b)).server_thumbprints == [old, upcoming]

    await eventually(b_announces_both, 10)
    async with two_nodes.admin(a) as admin:
        await admin.change_server_certificate("activate", force=True)

    async def b_presents_it() -> bool:  # once it is activated through A
        return b.thumbprint == upcoming

    await eventually(b_presents_it, 10)
    client = CommsClient(b.url, [upcoming], home.identity_folder)
    try:
        answer = await client.post(POLL, PollRequest(free_slots=0, hold_seconds=0), PollResponse)
    finally:
        await client.close()
    assert answer.server_thumbprints == [upcoming]


async def test_a_node_restarted_while_the_others_serve_takes_its_share_again(
    tmp_path: Path, pg_url: str, processes: list[Daemon]
) -> None:
    two_nodes, _, _ = await agent_polling_both(tmp_path, pg_url, processes)
    a, b = two_nodes.nodes
    assert b.process is not None
    await b.process.stop()  # an upgrade, node by node
    async with two_nodes.admin(a) as admin:
        task = await admin.submit(script_task("web1", "echo while b is away"))
        assert (await admin.follow(task.id, lambda _: None)).state == TaskState.SUCCEEDED
    await two_nodes.start(b)
    async with two_nodes.admin(b) as admin:  # B serves again: admin calls and dispatch
        task = await admin.submit(script_task("web1", "echo b is back"))
        assert (await admin.follow(task.id, lambda _: None)).state == TaskState.SUCCEEDED


async def test_a_node_killed_while_a_result_is_posted_to_it_loses_nothing(
    tmp_path: Path, pg_url: str, processes: list[Daemon]
) -> None:
    """The task is delivered by A (B is down meanwhile); A is frozen (SIGSTOP) before the task
    ends, so its last lines and its result are sent to a node that does not answer; A is then
    killed: the lines and the result go through B, restarted meanwhile."""
    cluster, home, agent = await agent_polling_both(tmp_path, pg_url, processes)
    a, b = cluster.nodes
    assert a.process is not None and b.process is not None
    await b.process.stop()
    go = tmp_path / "go"
    script = f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; seq -f 'line %g' 1 500"
    async with cluster.admin(a) as admin:
        task = await admin.submit(script_task("web1", script))
        await wait_for_line(admin, task.id, "first")
    assert f'{{"task": "{task.id}", "step": "accepted", "server": "{a.url}"' in (
        home.journal_file.read_text()
    )
    await cluster.start(b)
    await agent.wait_for(f"server node {b.url} joined the cluster")  # told again by A
    a.process.process.send_signal(signal.SIGSTOP)
    go.touch()

    async def result_sent() -> bool:  # journaled "finished" right before the result is posted
        return f'{{"task": "{task.id}", "step": "finished"' in home.journal_file.read_text()

    await eventually(result_sent, 20)
    await a.process.kill()
    async with cluster.admin(b) as admin:
        lines: list[str] = []
        final = await admin.follow(task.id, lambda e: lines.append(e.text))
    assert final.state == TaskState.SUCCEEDED
    assert lines == ["first"] + [f"line {n}" for n in range(1, 501)]


async def test_a_node_whose_database_goes_away_says_so_serves_again_and_stops_cleanly(
    tmp_path: Path, pg_url: str, processes: list[Daemon]
) -> None:
    """The node reaches PostgreSQL through a relay that cuts every connection: /readyz answers
    503 naming the database, the node serves again once it is back, and a SIGTERM while it is
    away stops the node cleanly (exit 0, no traceback: the processes fixture checks)."""
    parts = urlsplit(pg_url)
    async with CuttingRelay(parts.port or 5432) as relay:
        relayed = pg_url.replace(f":{parts.port}/", f":{relay.port}/")
        cluster = await make_cluster(tmp_path, relayed, processes, 1)
        node = cluster.nodes[0]
        await register_with(cluster, node, tmp_path / "web1", "web1")
        agent = await start_agent_process(tmp_path / "web1")
        processes.append(agent)
        async with aiohttp.ClientSession() as session:

            async def ready_is(status: int) -> bool:
                async with session.get(f"{node.admin_url}/readyz") as response:
                    return response.status == status and (
                        status == 200 or "database" in await response.text()
                    )

            relay.cut_all_and_refuse()
            await eventually(lambda: ready_is(503), 10)
            relay.restore()
            async with cluster.admin(node) as admin:
                task = await admin.submit(script_task("web1", "echo back"))
                assert (await admin.follow(task.id, lambda _: None)).state == TaskState.SUCCEEDED
            relay.cut_all_and_refuse()
            await eventually(lambda: ready_is(503), 10)
        assert node.process is not None
        assert await asyncio.wait_for(node.process.stop(), 30) == 0


async def test_a_listening_target_added_through_one_node_is_served_by_every_node(
    two_nodes: Cluster, tmp_path: Path, processes: list[Daemon]
) -> None:
    """`targets add` through A: B learns the target at the cluster's trust echo and connects
    to it too; a task submitted through B runs; deleted through B, both let it go."""
    a, b = two_nodes.nodes
    home = await listen_at(a.admin_url, a.thumbprint, two_nodes.api_key, tmp_path / "web1", "web1")
    agent = await start_agent_process(home.folder)
    processes.append(agent)
    assert a.process is not None and b.process is not None
    for node in (a, b):
        await node.process.wait_for("target web1: connected to", timeout=30)
    async with two_nodes.admin(b) as admin:
        final, events = await run_and_follow(admin, script_task("web1", "echo through B"))
        assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["through B"]
        await admin.delete_target("web1")
    for node in (a, b):
        async with two_nodes.admin(node) as admin:
            assert [t async for page in admin.target_pages({}) for t in page] == []
