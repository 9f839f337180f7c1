"""An agent keeps its connections: a TLS handshake costs both sides about as much as a small
request, so a task must not cost one. Counted at the server, which sees every handshake."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.running.reporter import MEMORY_QUEUE_BYTES, TaskReporter
from tentacle_poll.agent.running.spool import Spool
from tentacle_poll.protocol.models import PollRequest, PollResponse, ResultRequest, TaskView
from tentacle_poll.protocol.routes import POLL, TASK_RESULT, task_path
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, client_for, register_agent, run_and_follow, script_task
from .test_protocol import running_task


@pytest.fixture
def handshakes(server: Server) -> Iterator[Counter[str]]:
    """Counts the server's TLS handshakes (each one calls the trust's SNI callback)."""
    seen: Counter[str] = Counter()
    context = server.state.trust.context
    original = context.sni_callback
    assert original is not None

    def counting(sslobj: Any, server_name: str | None, ctx: Any) -> None:
        seen["handshakes"] += 1
        original(sslobj, server_name, ctx)

    context.sni_callback = counting
    yield seen
    context.sni_callback = original


class CountingClient(CommsClient):
    """The agent's real client, counting its posts by route."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.posts: Counter[str] = Counter()
        self.events_posted = asyncio.Event()

    async def post(self, path: str, *args: Any, **kwargs: Any) -> Any:
        route = path.rsplit("/", 1)[-1]
        self.posts[route] += 1
        if route == "events":
            self.events_posted.set()
        return await super().post(path, *args, **kwargs)


async def test_lines_on_their_way_when_the_task_ends_are_not_sent_twice(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    client = client_for(server, home, CountingClient)
    try:
        task = await running_task(client, admin)
        spool = Spool(tmp_path / "spool", 10**9).task(task.id)
        reporter = TaskReporter(client, spool, asyncio.Event(), 1.0)
        reporter.start_streaming()
        reporter.line("stdout", "tiny")
        await client.events_posted.wait()  # the streamer's post is on its way...
        reporter.spool_result(ResultRequest(state="succeeded", exit_code=0, last_seq=0))
        assert await reporter.deliver()  # ...when the task ends
    finally:
        await client.close()
    assert client.posts["events"] == 1  # waited for, not cancelled and sent again
    page = await admin.events(task.id, 0, 0)
    assert [e.text for e in page.events] == ["tiny"] and page.task.state == "succeeded"


async def test_a_poll_without_free_slots_is_answered_when_a_result_frees_one(
    server: Server, agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await running_task(agent_client, admin)
    full = PollRequest(free_slots=0, running=[task.id])
    held = asyncio.create_task(agent_client.post(POLL, full, PollResponse))
    agent = await server.state.store.agent_by_name("web1")
    assert agent is not None
    await server.state.dispatcher.wait_until_polling(agent.id)
    result = ResultRequest(state="succeeded", exit_code=0, last_seq=0)
    await agent_client.post(task_path(TASK_RESULT, task.id), result, TaskView)
    answer = await asyncio.wait_for(held, 2)  # not when the hold (5 s here) ends
    assert answer.envelopes == [] and answer.cancels == []


async def test_an_agent_running_task_after_task_keeps_its_connections(
    start_agent: AgentFactory, admin: AdminClient, handshakes: Counter[str]
) -> None:
    await start_agent("web1", concurrency=1)
    for number in range(6):  # each fills the only slot: its poll is held with none free
        final, events = await run_and_follow(admin, script_task("web1", f"echo {number}"))
        assert final.state == "succeeded" and [e.text for e in events] == [str(number)]
    assert handshakes["handshakes"] <= 4  # the poll's connection and a few for the posts


class GatedClient(CommsClient):
    """The agent's real client, whose posts wait until ``gate`` opens: a server that is slow
    to take output (busy with a follower, say)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()

    async def post(self, *args: Any, **kwargs: Any) -> Any:
        await self.gate.wait()
        return await super().post(*args, **kwargs)


async def test_output_the_server_is_slow_to_take_waits_on_disk_not_in_memory(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    client = client_for(server, home, GatedClient)
    client.gate.set()
    task = await running_task(client, admin)
    client.gate.clear()
    reporter = TaskReporter(client, Spool(tmp_path / "spool", 10**9).task(task.id),
                            asyncio.Event(), 1.0)  # fmt: skip
    reporter.start_streaming()
    expected = [f"{i:08d} " + "x" * 100 for i in range(40_000)]  # 4.4 MB of lines
    for text in expected:
        reporter.line("stdout", text)
    assert reporter.queued_bytes <= MEMORY_QUEUE_BYTES + 1024  # the rest is in the spool only
    client.gate.set()
    reporter.spool_result(ResultRequest(state="succeeded", exit_code=0, last_seq=0))
    try:
        assert await reporter.deliver()
    finally:
        await client.close()
    stored: list[str] = []
    final = await admin.follow(task.id, lambda event: stored.extend(event.text.split("\n")))
    assert final.state == "succeeded" and stored == expected
