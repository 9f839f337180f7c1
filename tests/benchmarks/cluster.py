"""Issue 16's figures: a fan-out to a fleet of simulated agents on one node with SQLite and on
two nodes with PostgreSQL, dispatch latency across nodes, and server CPU per task per store.

The fleet is the load generator's (real mutual TLS, each simulated agent with its own
certificate, answering every task: accept, one line, result); with two nodes half the fleet
polls each. The PostgreSQL is the machine's, in a schema of the run's own, dropped after.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from tentacle_poll.agent.home import AgentHome
from tentacle_poll.cli.progress import PROGRESS_EVERY_SECONDS
from tentacle_poll.config import update_config_file
from tentacle_poll.protocol.models import FanOut, ScriptSpec, TaskSpec
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.server.vault import KEY_FILE
from tentacle_poll.store import Store

from ..conftest import postgresql_schema
from ..processes import Daemon, start_server_process
from .figures import Bench, Row, dispatch_latency, percentile
from .fleet import certificates, cpu_seconds, register_fleet, start_loadgen

PER_GENERATOR = 2500
STALL_SECONDS = 60.0


class Node(Bench):
    """A server node of a cluster: a Bench whose store is the shared database."""

    def __init__(self, folder: Path, store_url: str) -> None:
        super().__init__(folder)
        self.store_url = store_url
        self.server_home.mkdir(parents=True, mode=0o700)
        update_config_file(self.server_home / "server.toml", store_url=store_url)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.comms}"

    async def start_node(self, key: str) -> None:
        self.key = key
        self.server = await start_server_process(
            self.server_home, self.comms, self.admin_port, advertised_url=self.url
        )


async def fleet_on(nodes: list[Bench], count: int) -> list[Daemon]:
    """``count`` simulated agents, shared out between the nodes, all polling."""
    certs, generators = certificates(count), []
    for index, first in enumerate(range(0, count, PER_GENERATOR)):
        node = nodes[index % len(nodes)]
        url, report = f"https://127.0.0.1:{node.comms}", node.folder / f"loadgen-{index}.jsonl"
        size, ramp = min(PER_GENERATOR, count - first), max(2.0, count / 1400)
        generators.append(await start_loadgen(url, certs, first, size, 3600, report, ramp))
    for generator in generators:
        await generator.wait_for("ready", timeout=300)
    await asyncio.sleep(max(3.0, count / 1400))  # every agent's first poll held
    return generators


async def fan_out(nodes: list[Bench], count: int) -> tuple[float, float]:
    """(seconds from the fan-out request until the last result was stored, server CPU seconds
    per task summed over the nodes). The end is the last task's ``finished_at`` as stored, so
    watching for it neither rounds the figure; it is watched as `deploy --follow` watches a
    deployment's progress (a view of every target each PROGRESS_EVERY_SECONDS: at 10,000
    targets about 0.1 s of server time, once a second it was a tenth of the run's CPU)."""
    pids = [n.server.process.pid for n in nodes if n.server is not None]
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    task = TaskSpec(script=ScriptSpec(syntax="bash", body="echo hello"))
    async with AdminClient(nodes[0].admin_url, nodes[0].key) as admin:
        started = time.time()
        deployment = await admin.fan_out(FanOut(environment="Bench", task=task))
        view = await admin.deployment(deployment.id)
        async with asyncio.timeout(STALL_SECONDS + count / 50):  # a stall fails by name
            while view.state == "running":
                await asyncio.sleep(PROGRESS_EVERY_SECONDS)
                view = await admin.deployment(deployment.id)
    cpu = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) / count
    done = view.counts.get("succeeded", 0)
    if done != count:
        raise AssertionError(f"fan-out to {count}: {done} succeeded ({view.counts})")
    store = await ServerHome(nodes[0].server_home).open_store()
    try:
        ended = [t.finished_at or 0.0 for t in await store.deployment_tasks(deployment.id)]
    finally:
        await store.close()
    return max(ended) - started, cpu


async def one_node_sqlite(folder: Path, count: int) -> tuple[float, float]:
    bench = Bench(folder / "sqlite")
    await register_fleet(bench.server_home, certificates(count), count)
    await bench.start()
    generators = await fleet_on([bench], count)
    try:
        return await fan_out([bench], count)
    finally:
        await _stop(generators, [bench])


async def two_nodes_postgresql(folder: Path, count: int, runs: int) -> dict[str, object]:
    """Dispatch latency to a real agent held by node A with the task queued through node B,
    and through A itself (the reference), then the fan-out on the two nodes."""
    async with postgresql_schema() as store_url:
        nodes = [Node(folder / f"node{n}", store_url) for n in range(2)]
        store = await _register_on(nodes[0], count)
        key = await store.create_api_key("bench")
        await store.close()
        for node in nodes:
            if node is not nodes[0]:
                shutil.copy(nodes[0].server_home / KEY_FILE, node.server_home / KEY_FILE)
            await node.start_node(key)
        home = await nodes[0].agent_home("lat", environment="Latency")  # not in the fan-out
        update_config_file(home.config_file, discover_nodes=False)  # held by A alone
        generators = await fleet_on(nodes, count)
        try:
            # Latency with the fleet connected and idle, as the one-node figure is measured:
            # after the fan-out the nodes and the database are still busy with its clean-up.
            across, same = await _latencies(nodes, home, runs)
            elapsed, cpu = await fan_out(nodes, count)
        finally:
            await _stop(generators, nodes)
    return {"elapsed": elapsed, "cpu": cpu, "across": across, "same": same}


async def _register_on(node: Node, count: int) -> Store:
    await register_fleet(node.server_home, certificates(count), count)
    return await ServerHome(node.server_home).open_store()


async def _latencies(
    nodes: list[Node], home: AgentHome, runs: int
) -> tuple[list[float], list[float]]:
    a, b = nodes
    agent = await Daemon.start("--home", str(home.folder))
    await agent.wait_for("polling https://")
    try:
        across = await dispatch_latency(a, "lat", runs, admin_url=b.admin_url)
        same = await dispatch_latency(a, "lat", runs)
    finally:
        await agent.stop()
    return across, same


async def _stop(generators: list[Daemon], nodes: list[Bench]) -> None:
    for generator in generators:
        await generator.kill()
    for node in nodes:
        await node.stop()


async def cluster_figures(folder: Path, count: int, runs: int) -> list[Row]:
    one_elapsed, one_cpu = await one_node_sqlite(folder, count)
    two = await two_nodes_postgresql(folder, count, runs)
    two_elapsed, two_cpu = float(two["elapsed"]), float(two["cpu"])  # type: ignore[arg-type]
    across, same = two["across"], two["same"]
    assert isinstance(across, list) and isinstance(same, list)
    scale = "" if count == 10000 else f" (fleet of {count}: quick run)"
    p50, p99 = percentile(across, 50), percentile(across, 99)
    return [
        Row(
            f"fan-out to {count} agents, 1 node, SQLite{scale}",
            f"{one_elapsed:.1f} s until every result is stored",
            f"2 nodes, PostgreSQL: {two_elapsed:.1f} s",
            f"{one_elapsed / two_elapsed:.2f}x",
            "<= 30 s at 10,000",
            one_elapsed <= 30 * count / 10000,
        ),
        Row(
            f"fan-out to {count} agents, 2 nodes, PostgreSQL{scale}",
            f"{two_elapsed:.1f} s until every result is stored",
            f"1 node, SQLite: {one_elapsed:.1f} s",
            f"{two_elapsed / one_elapsed:.2f}x",
            "<= 20 s at 10,000",
            two_elapsed <= 20 * count / 10000,
        ),
        Row(
            "dispatch across nodes (queued on B, agent held by A), p50 / p99",
            f"{p50 * 1000:.1f} / {p99 * 1000:.1f} ms",
            f"queued on A: {percentile(same, 50) * 1000:.1f} / "
            f"{percentile(same, 99) * 1000:.1f} ms",
            f"{p50 / percentile(same, 50):.2f}x",
            "<= 15 / 60 ms",
            p50 <= 0.015 and p99 <= 0.060,
        ),
        Row(
            "server CPU per task (fan-out), SQLite / PostgreSQL (both nodes)",
            f"{one_cpu * 1000:.2f} / {two_cpu * 1000:.2f} ms",
            "each other",
            f"{two_cpu / one_cpu:.2f}x",
            "",
            None,
        ),
    ]
