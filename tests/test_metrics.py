"""Metrics and health endpoints, scraped from a real server with a real agent and parsed with
prometheus-client's own parser: the figures follow what happened (a task run, output sent, a
refused registration), names and labels follow Prometheus conventions (no ids as labels), a
scrape needs a key unless the operator opened it, and /readyz says every reason it is not."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tentacle_poll.exceptions import RequestRejected
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.tls.files import CERT_FILE

from .conftest import (
    AgentFactory,
    RunningAgent,
    comms_url,
    register_agent,
    run_and_follow,
    script_task,
    start_server,
    wait_for_line,
)
from .processes import CLI

LINE = "a line of output"


def admin_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.admin_port}"


async def get(server: Server, path: str, **headers: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(admin_url(server) + path, headers=headers) as response,
    ):
        return response.status, await response.text()


async def scrape(server: Server, key: str) -> dict[str, list[Sample]]:
    status, text = await get(server, "/metrics", **{"Authorization": f"Bearer {key}"})
    assert status == 200, text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


async def test_a_scrape_shows_what_the_server_did(
    server: Server, api_key: str, admin: AdminClient, start_agent: AgentFactory
) -> None:
    await start_agent("web1")
    final, _ = await run_and_follow(admin, script_task("web1", f"echo '{LINE}'"))
    assert final.state == "succeeded"
    with pytest.raises(RequestRejected):
        await register_agent(server, "API-not-a-key", server.home.folder.parent / "x", "x")
    metrics = await scrape(server, api_key)
    assert value(metrics["tentacle_poll_connected_agents"], "tentacle_poll_connected_agents") == 1
    tasks = metrics["tentacle_poll_tasks"]
    assert value(tasks, "tentacle_poll_tasks", state="succeeded") == 1
    assert value(tasks, "tentacle_poll_tasks", state="queued") == 0
    latency = metrics["tentacle_poll_dispatch_latency_seconds"]
    assert value(latency, "tentacle_poll_dispatch_latency_seconds_count") == 1
    duration = metrics["tentacle_poll_task_duration_seconds"]
    assert value(duration, "tentacle_poll_task_duration_seconds_count", state="succeeded") == 1
    output = metrics["tentacle_poll_output_bytes"]
    assert value(output, "tentacle_poll_output_bytes_total") >= len(LINE)
    refusals = metrics["tentacle_poll_refusals"]
    assert value(refusals, "tentacle_poll_refusals_total", kind="register:credential") == 1
    store = metrics["tentacle_poll_store_operation_seconds"]
    assert value(store, "tentacle_poll_store_operation_seconds_count", operation="finish_task") == 1
    assert value(metrics["tentacle_poll_disk_free_bytes"], "tentacle_poll_disk_free_bytes") > 0
    labels = {key for samples in metrics.values() for s in samples for key in s.labels}
    assert labels <= {"state", "kind", "operation", "le"}, "labels are bounded sets, never ids"


async def test_queue_depth_and_the_age_of_the_oldest_queued_task(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    await register_agent(server, api_key, tmp_path / "offline", "offline")  # never polls
    for _ in range(3):
        await admin.submit(script_task("offline", "true"))
    metrics = await scrape(server, api_key)
    assert value(metrics["tentacle_poll_queued_tasks"], "tentacle_poll_queued_tasks") == 3
    age = value(
        metrics["tentacle_poll_oldest_queued_task_age_seconds"],
        "tentacle_poll_oldest_queued_task_age_seconds",
    )
    assert 0 <= age < 30


async def test_a_scrape_needs_a_key_unless_the_operator_opened_it(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    assert (await get(server, "/metrics"))[0] == 401
    assert (await get(server, "/metrics", Authorization="Bearer API-wrong"))[0] == 401
    read_key = await server.state.store.create_api_key("prometheus", scope="read")
    assert (await get(server, "/metrics", Authorization=f"Bearer {read_key}"))[0] == 200
    opened = await start_server(tmp_path / "open", metrics_without_key=True)
    try:
        status, text = await get(opened, "/metrics")
        assert status == 200 and "tentacle_poll_connected_agents 0.0" in text
        assert (await get(opened, "/api/targets"))[0] == 401, "only /metrics was opened"
    finally:
        await opened.shutdown()


async def test_alive_and_ready_and_every_reason_it_is_not_ready(tmp_path: Path) -> None:
    server = await start_server(tmp_path / "server")
    try:
        assert (await get(server, "/healthz"))[0] == 200
        assert (await get(server, "/readyz"))[0] == 200
        free_mb = shutil.disk_usage(server.home.folder).free / 2**20
        server.state.settings.min_free_disk_mb = free_mb * 2
        (server.home.identity_folder / CERT_FILE).rename(tmp_path / "cert.pem")
        server.state.dispatcher.stop()
        status, text = await get(server, "/readyz")
        assert (await get(server, "/healthz"))[0] == 200, "alive while not ready"
    finally:
        (tmp_path / "cert.pem").rename(server.home.identity_folder / CERT_FILE)
        await server.shutdown()
    assert status == 503
    for reason in ("stopping", "certificate is missing", "min_free_disk_mb"):
        assert reason in text, text


async def agent_get(agent: RunningAgent, path: str) -> tuple[int, str]:
    endpoint = agent.agent.metrics
    assert endpoint is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{endpoint.port}{path}") as response,
    ):
        return response.status, await response.text()


async def agent_scrape(agent: RunningAgent) -> list[Sample]:
    status, text = await agent_get(agent, "/metrics")
    assert status == 200, text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


async def test_the_agent_reports_its_slots_spool_and_each_nodes_polls(
    server: Server, admin: AdminClient, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await start_agent("web1", metrics_port=0, concurrency=3)
    await agent.agent.started.wait()
    assert (await agent_get(agent, "/healthz"))[0] == 200
    gate = tmp_path / "gate"
    body = f"echo started\nwhile [ ! -e {gate} ]; do sleep 0.02; done\n"
    task = await admin.submit(script_task("web1", body))
    await wait_for_line(admin, task.id, "started")
    node = comms_url(server)
    samples = await agent_scrape(agent)
    assert value(samples, "tentacle_poll_agent_running_tasks") == 1
    assert value(samples, "tentacle_poll_agent_free_slots") == 2
    assert value(samples, "tentacle_poll_agent_spool_bytes") > 0, "the line is spooled first"
    assert 0 <= value(samples, "tentacle_poll_agent_seconds_since_answered_poll", node=node) < 30
    assert value(samples, "tentacle_poll_agent_backing_off", node=node) == 0
    assert (await agent_get(agent, "/readyz"))[0] == 200
    agent.agent.escalate()  # draining: the task still runs, but no new work is taken
    status, text = await agent_get(agent, "/readyz")
    assert status == 503 and "stopping" in text
    gate.touch()
    assert (await admin.follow(task.id, lambda _: None)).state == "succeeded"


async def test_the_agent_shows_it_is_backing_off_while_its_server_is_away(
    tmp_path: Path, log_seen: Callable[[str], asyncio.Event]
) -> None:
    server = await start_server(tmp_path / "server")
    key = await server.state.store.create_api_key("tests")
    home = await register_agent(server, key, tmp_path / "web1", "web1")
    agent = RunningAgent(home, metrics_port=0)
    try:
        await agent.agent.started.wait()
        retried = log_seen(f"polling {comms_url(server)} failed")
        await server.shutdown()
        async with asyncio.timeout(30):
            await retried.wait()
        samples = await agent_scrape(agent)
        node = comms_url(server)
        assert value(samples, "tentacle_poll_agent_backing_off", node=node) == 1
        assert value(samples, "tentacle_poll_agent_poll_failures_in_a_row", node=node) >= 1
    finally:
        await agent.stop(levels=3)


async def test_a_metrics_port_in_use_stops_the_agent_with_one_clear_line(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "TENTACLE_POLL_METRICS_PORT": str(port)}
        result = await asyncio.create_subprocess_exec(
            *CLI, "--home", str(home.folder), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with asyncio.timeout(30):
            output, _ = await result.communicate()
    assert result.returncode == 1, output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in output.decode()
    assert "Traceback" not in output.decode()
