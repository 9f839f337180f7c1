"""The comms port's state machine: each agent call checked against the task's state and lease.
One test per forbidden transition, each with what the task looks like afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.running.reporter import TaskReporter
from tentacle_poll.agent.running.spool import Spool
from tentacle_poll.exceptions import RequestRejected
from tentacle_poll.protocol.models import (
    AcceptRequest,
    AcceptResponse,
    Event,
    EventsRequest,
    EventsResponse,
    FetchFileSpec,
    FileView,
    PollRequest,
    PollResponse,
    ResultRequest,
    SubmitTask,
    TaskState,
    TaskView,
)
from tentacle_poll.protocol.routes import (
    POLL,
    TASK_ACCEPT,
    TASK_EVENTS,
    TASK_FILE,
    TASK_RESULT,
    task_path,
)
from tentacle_poll.server.admin_client import AdminClient

from .conftest import script_task
from .test_protocol import running_task

SUCCEEDED = ResultRequest(state="succeeded", exit_code=0, last_seq=0)


def events(*seqs: int) -> EventsRequest:
    return EventsRequest(events=[Event(seq=s, stream="stdout", text=f"l{s}", ts=1.0) for s in seqs])


async def refused(call: object) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        await call  # type: ignore[misc]
    assert caught.value.status == 409
    return caught.value


async def lease(client: CommsClient) -> None:
    await client.post(POLL, PollRequest(free_slots=4, hold_seconds=0), PollResponse)


async def accept(client: CommsClient, task_id: str) -> None:
    await client.post(task_path(TASK_ACCEPT, task_id), AcceptRequest(), AcceptResponse)


async def test_a_queued_task_takes_no_result_and_no_output(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await admin.submit(script_task("web1", "true"))
    rejection = await refused(
        agent_client.post(task_path(TASK_RESULT, task.id), SUCCEEDED, TaskView)
    )
    assert rejection.title == "task not accepted"
    await refused(agent_client.post(task_path(TASK_EVENTS, task.id), events(1), EventsResponse))
    after = await admin.task(task.id)
    assert after.state == TaskState.QUEUED and after.started_at is None and after.last_seq == 0


async def test_a_leased_task_takes_only_a_refusal_before_it_is_accepted(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await admin.submit(script_task("web1", "true"))
    await lease(agent_client)
    await refused(agent_client.post(task_path(TASK_EVENTS, task.id), events(1), EventsResponse))
    await refused(agent_client.post(task_path(TASK_RESULT, task.id), SUCCEEDED, TaskView))
    turned_down = ResultRequest(state="failed", last_seq=0, reason="malformed or unsupported task")
    view = await agent_client.post(task_path(TASK_RESULT, task.id), turned_down, TaskView)
    assert view.state == TaskState.FAILED and view.started_at is None


async def test_a_result_is_final_a_repeat_is_acknowledged_another_refused(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await running_task(agent_client, admin)
    path = task_path(TASK_RESULT, task.id)
    first = await agent_client.post(path, SUCCEEDED, TaskView)
    assert (await agent_client.post(path, SUCCEEDED, TaskView)) == first  # a lost answer, retried
    other = ResultRequest(state="failed", exit_code=3, last_seq=0)
    assert (
        await refused(agent_client.post(path, other, TaskView))
    ).title == "result already recorded"
    await refused(
        agent_client.post(task_path(TASK_ACCEPT, task.id), AcceptRequest(), AcceptResponse)
    )
    after = await admin.task(task.id)
    assert after.state == TaskState.SUCCEEDED and after.exit_code == 0


async def test_output_after_the_end_only_repeats_what_was_stored(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await running_task(agent_client, admin)
    path = task_path(TASK_EVENTS, task.id)
    await agent_client.post(path, events(1, 2), EventsResponse)
    done = ResultRequest(state="succeeded", exit_code=0, last_seq=2)
    await agent_client.post(task_path(TASK_RESULT, task.id), done, TaskView)
    assert (await agent_client.post(path, events(2), EventsResponse)).acked_seq == 2  # a retry
    assert (await refused(agent_client.post(path, events(3), EventsResponse))).title == "task ended"
    page = await admin.events(task.id, 0, 0)
    assert [e.text for e in page.events] == ["l1", "l2"]


async def test_a_file_comes_up_only_for_a_running_fetch_file_task(
    agent_client: CommsClient, admin: AdminClient, tmp_path: Path
) -> None:
    upload = tmp_path / "up.txt"
    upload.write_text("not asked for")
    script = await admin.submit(script_task("web1", "true"))
    fetch = await admin.submit(
        SubmitTask(target="web1", kind="fetch_file", fetch_file=FetchFileSpec(path="/etc/hostname"))
    )
    await lease(agent_client)
    for task in (script, fetch):  # a script task never; a fetch_file task not before accept
        await refused(agent_client.upload(task_path(TASK_FILE, task.id), upload, FileView))
    await accept(agent_client, fetch.id)
    sent = await agent_client.upload(task_path(TASK_FILE, fetch.id), upload, FileView)
    assert sent is not None
    turned = ResultRequest(state="failed", exit_code=1, last_seq=0)
    await accept(agent_client, script.id)
    await agent_client.post(task_path(TASK_RESULT, script.id), turned, TaskView)
    await refused(agent_client.upload(task_path(TASK_FILE, script.id), upload, FileView))


async def test_an_agent_drops_a_spooled_result_the_server_refuses_for_good(
    agent_client: CommsClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The task was deleted with its target (404): keeping the result would retry it, and log an
    error, at every start of the agent."""
    spool = Spool(tmp_path / "spool", max_bytes=10**6).task("0-deadbeef")
    reporter = TaskReporter(agent_client, spool, asyncio.Event(), max_backoff=0.1)
    reporter.spool_result(SUCCEEDED)
    assert await reporter.deliver() is True
    assert spool.result() is None
    assert "refused its result for good" in caplog.text and "ERROR" not in [
        r.levelname for r in caplog.records
    ]
