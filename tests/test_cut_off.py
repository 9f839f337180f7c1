"""A certificate that stops being trusted is cut off at once: its open connections close and a
poll it holds ends with nothing leased, before any new task could reach it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.exceptions import CommunicationError
from tentacle_poll.protocol.models import PollRequest, PollResponse, TaskState
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import client_for, new_agent_home, register_agent, script_task


async def held_poll(server: Server, client: CommsClient, name: str) -> asyncio.Task[PollResponse]:
    agent = await server.state.store.agent_by_name(name)
    assert agent is not None
    poll = asyncio.create_task(
        client.post(POLL, PollRequest(free_slots=4, hold_seconds=5), PollResponse)
    )
    await server.state.dispatcher.wait_until_polling(agent.id)
    return poll


async def ends_without_work(poll: asyncio.Task[PollResponse]) -> None:
    try:
        answer = await asyncio.wait_for(poll, 5)
    except CommunicationError:
        return  # the connection was closed: nothing leased
    assert answer.envelopes == []


@pytest.mark.parametrize("how", ["replace", "delete"])
async def test_a_replaced_or_deleted_certificate_loses_its_held_poll_and_gets_no_task(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, how: str
) -> None:
    old_home = await register_agent(server, api_key, tmp_path / "old", "web1")
    old = client_for(server, old_home)
    try:
        poll = await held_poll(server, old, "web1")
        if how == "replace":
            new_agent_home(tmp_path / "new")
            await register_agent(server, api_key, tmp_path / "new", "web1", replace=True)
            task = await admin.submit(script_task("web1", "echo for the new one"))
        else:
            await admin.delete_target("web1")
        await ends_without_work(poll)
        if how == "replace":
            assert (await admin.task(task.id)).state == TaskState.QUEUED  # not leased to the old
        with pytest.raises(CommunicationError):  # and it cannot come back
            await old.post(POLL, PollRequest(free_slots=4, hold_seconds=0), PollResponse)
    finally:
        await old.close()
    assert server.state.refusals.counts  # the refusal was logged
