"""Wake-ups that land while a held poll is reading the store. With PostgreSQL every read
yields to the event loop, so a task can be queued (and its agent rung) between the read that
found nothing and the moment the poll marks its agent as having no work: the mark must not
swallow that wake-up (found at 10,000 agents on two nodes: 3 tasks left queued for ever)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.protocol.models import PollRequest, PollResponse
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.dispatch import Dispatcher
from tentacle_poll.store import TaskRecord

from .conftest import script_task


async def test_a_task_queued_while_the_poll_reads_the_store_is_delivered_to_that_poll(
    server: Server, admin: AdminClient, agent_client: CommsClient
) -> None:
    store = server.state.store
    lease = store.lease_tasks
    submitted: list[str] = []

    async def lease_then_queue_one(*args: Any, **kwargs: Any) -> list[TaskRecord]:
        found = await lease(*args, **kwargs)
        if not submitted:  # the first read found nothing: a task arrives before it returns
            submitted.append((await admin.submit(script_task("web1", "echo late"))).id)
        return found

    store.lease_tasks = lease_then_queue_one  # type: ignore[method-assign]
    started = time.monotonic()
    async with asyncio.timeout(10):
        answer = await agent_client.post(
            POLL, PollRequest(free_slots=1, hold_seconds=4), PollResponse, 10
        )
    assert [e.task_id for e in answer.envelopes] == submitted
    assert time.monotonic() - started < 2  # delivered by the wake-up, not after the hold


async def test_an_agent_is_talking_while_any_of_its_requests_is_handled() -> None:
    """The sweeper marks lost only agents that are not talking: each request counts from
    when its agent is known until it is answered."""
    dispatcher = Dispatcher()
    dispatcher.talking_to("a1")
    dispatcher.talking_to("a1")
    assert dispatcher.is_talking("a1") and not dispatcher.is_talking("a2")
    dispatcher.done_talking("a1")
    assert dispatcher.is_talking("a1")  # the other one is still being handled
    dispatcher.done_talking("a1")
    assert not dispatcher.is_talking("a1")
    with dispatcher.polling("a1", slots=1):
        assert dispatcher.is_talking("a1")
    assert not dispatcher.is_talking("a1")
