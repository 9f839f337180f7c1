"""A task the agent never started goes back to the queue, never to "failed": an accept the
server never confirmed (the network dies right after the poll answer), an agent that died
between accept and start. At-most-once still holds: a task given back runs once, later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tentacle_poll.agent.running import runner
from tentacle_poll.agent.running.journal import Journal
from tentacle_poll.agent.running.recovery import fail_interrupted_tasks
from tentacle_poll.agent.running.spool import Spool
from tentacle_poll.exceptions import RequestRejected
from tentacle_poll.protocol.models import (
    Event,
    EventsRequest,
    EventsResponse,
    PollRequest,
    PollResponse,
    ResultRequest,
    TaskState,
    TaskView,
)
from tentacle_poll.protocol.routes import POLL, TASK_EVENTS, TASK_RESULT, task_path
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store import NewTask

from .conftest import (
    RunningAgent,
    client_for,
    register_agent,
    registered,
    script_task,
    start_server,
)
from .relay import CuttingRelay

GIVE_BACK = ResultRequest(state="failed", last_seq=0, reason="not started", requeue=True)


async def test_a_task_given_back_is_queued_and_delivered_again(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    client = client_for(server, await register_agent(server, api_key, tmp_path / "a", "web1"))
    try:
        task = await admin.submit(script_task("web1", "true"))
        poll = PollRequest(free_slots=1, hold_seconds=0)
        first = await client.post(POLL, poll, PollResponse)
        assert [e.task_id for e in first.envelopes] == [task.id]
        back = await client.post(task_path(TASK_RESULT, task.id), GIVE_BACK, TaskView)
        assert back.state == TaskState.QUEUED and back.started_at is None
        again = await client.post(task_path(TASK_RESULT, task.id), GIVE_BACK, TaskView)
        assert again.state == TaskState.QUEUED  # a retry: acknowledged, nothing changes
        second = await client.post(POLL, poll, PollResponse)
        assert [e.task_id for e in second.envelopes] == [task.id]
    finally:
        await client.close()


async def test_a_task_that_printed_cannot_be_given_back(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    from .test_protocol import running_task

    client = client_for(server, await register_agent(server, api_key, tmp_path / "a", "web1"))
    try:
        task = await running_task(client, admin)
        line = Event(seq=1, stream="stdout", text="ran", ts=time.time())
        await client.post(task_path(TASK_EVENTS, task.id), EventsRequest(events=[line]),
                          EventsResponse)  # fmt: skip
        with pytest.raises(RequestRejected) as refused:
            await client.post(task_path(TASK_RESULT, task.id), GIVE_BACK, TaskView)
    finally:
        await client.close()
    assert refused.value.status == 409 and refused.value.title == "task has output"


async def test_a_task_given_back_past_its_deadline_expires(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    agent = await registered(server, api_key, tmp_path)
    store = server.state.store
    at = time.time()
    task = await store.create_task(NewTask(agent.id, "{}", expires_at=at + 5), at)
    assert [t.id for t in await store.lease_tasks(agent.id, 1, at, 30)] == [task.id]
    ended = await store.requeue_task(task.id, at + 6)
    assert ended.state == TaskState.EXPIRED and "deadline" in ended.reason


def test_an_agent_that_died_before_starting_gives_the_task_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    journal.record("t-1", "accepted", "https://server")
    spool = Spool(tmp_path / "spool", 10**9)
    fail_interrupted_tasks(journal, spool)
    result = spool.task("t-1").result()
    assert result is not None and result.requeue and result.last_seq == 0
    assert spool.task("t-1").events() == []  # no note: a line would make it "a task that ran"
    journal.close()


async def test_an_accept_never_confirmed_gives_the_task_back_and_it_runs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_seen: Callable[[str], asyncio.Event]
) -> None:
    monkeypatch.setattr(runner, "ACCEPT_PATIENCE_SECONDS", 1.0)
    server = await start_server(tmp_path / "server", lease_seconds=2.0)
    try:
        key = await server.state.store.create_api_key("tests")
        async with CuttingRelay(server.comms_port) as relay:
            home = await register_agent(server, key, tmp_path / "web1", "web1")
            node = (
                home.settings()
                .servers[0]
                .model_copy(update={"url": f"https://127.0.0.1:{relay.port}"})
            )
            agent = RunningAgent(home, servers=[node])
            record = await server.state.store.agent_by_name("web1")
            assert record is not None
            await server.state.dispatcher.wait_until_polling(record.id)
            relay.refuse_after_next_answer()  # the poll answer arrives; then the network dies
            given_back = log_seen("giving it back to the server")
            runs = tmp_path / "runs"
            admin_url = f"http://127.0.0.1:{server.admin_port}"
            async with AdminClient(admin_url, key) as admin:
                task = await admin.submit(script_task("web1", f"echo ran >> {runs}"))
                async with asyncio.timeout(30):
                    await given_back.wait()
                assert (await admin.task(task.id)).state == TaskState.LEASED  # not failed
                relay.restore()
                final = await admin.follow(task.id, lambda _: None)
            await agent.stop()
    finally:
        await server.shutdown()
    assert final.state == TaskState.SUCCEEDED
    assert runs.read_text() == "ran\n"  # once
