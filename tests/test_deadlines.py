"""Every fan-out finishes: a task no agent takes before its deadline ends ``expired`` and is never
delivered; ``health`` over an environment with an offline target prints progress, a summary
naming it, and exits non-zero within its bound; ``--wait`` bounds a command whatever happens."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tentacle_poll.protocol.models import PollRequest, PollResponse, TaskState
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store.base import TaskQuery

from .conftest import RunningAgent, client_for, register_agent, script_task, start_server
from .processes import CLI


@pytest.fixture
async def quick_server(tmp_path: Path) -> Server:
    """Sweeps every 0.25 s (half the lease), so that deadlines are noticed at once."""
    running = await start_server(tmp_path / "server", lease_seconds=0.5)
    yield running  # type: ignore[misc]
    await running.shutdown()


async def cli(server: Server, key: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "TENTACLE_POLL_API_KEY": key,
           "TENTACLE_POLL_ADMIN_URL": f"http://127.0.0.1:{server.admin_port}"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_a_task_for_an_offline_target_expires_and_is_never_delivered(
    quick_server: Server, tmp_path: Path
) -> None:
    key = await quick_server.state.store.create_api_key("tests")
    home = await register_agent(quick_server, key, tmp_path / "db1", "db1")
    async with AdminClient(f"http://127.0.0.1:{quick_server.admin_port}", key) as admin:
        task = await admin.submit(script_task("db1", "echo never", expires_seconds=0.5))
        assert task.expires_at is not None and task.expires_at - task.created_at == 0.5
        final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.EXPIRED and "deadline" in final.reason
    client = client_for(quick_server, home)
    try:
        answer = await client.post(POLL, PollRequest(free_slots=4, hold_seconds=0), PollResponse)
    finally:
        await client.close()
    assert answer.envelopes == []


async def test_a_fleet_health_check_with_an_offline_target_ends_with_a_summary(
    quick_server: Server, tmp_path: Path
) -> None:
    key = await quick_server.state.store.create_api_key("tests")
    online = RunningAgent(await register_agent(quick_server, key, tmp_path / "web1", "web1"))
    await register_agent(quick_server, key, tmp_path / "db1", "db1")  # never started
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, output = await cli(quick_server, key, "health", "--environment", "Test", "--timeout", "2")
    took = loop.time() - started
    await online.stop()
    assert code == 1, output
    assert "db1 is offline" in output
    assert "1 expired, 1 succeeded" in output
    assert "db1: expired: its target did not take it before its deadline" in output
    assert took < 15, output  # 2 s deadline, then a sweep; not forever


async def test_wait_bounds_a_command_whose_task_goes_on(
    quick_server: Server, tmp_path: Path
) -> None:
    key = await quick_server.state.store.create_api_key("tests")
    await register_agent(quick_server, key, tmp_path / "db1", "db1")  # offline: its task waits
    code, output = await cli(
        quick_server, key, "task", "run", "--target", "db1", "--script", "true", "--wait", "1"
    )
    assert code == 75  # EX_TEMPFAIL: not the task's outcome
    assert "stopped waiting after 1 s" in output and "is queued" in output
    assert "tentacle-poll task follow" in output
    tasks = await quick_server.state.store.list_tasks(TaskQuery(limit=10))
    assert [t.state for t in tasks] == [TaskState.QUEUED]  # it goes on


@pytest.mark.parametrize("bad", ["0", "-1", "soon"])
async def test_a_bad_deadline_is_refused_with_one_line(quick_server: Server, bad: str) -> None:
    key = await quick_server.state.store.create_api_key("tests")
    code, output = await cli(
        quick_server, key, "task", "run", "--target", "x", "--script", "true", "--expires", bad
    )
    assert code == 2 and "Traceback" not in output and "--expires" in output
