"""Backoff: full jitter, capped, Retry-After honoured, stops at shutdown; the agent recovers
by itself when the server comes back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.backoff import REFUSED_MAX_SECONDS, retrying
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.exceptions import RequestRejected, ServerUnavailable
from tentacle_poll.protocol.models import PollRequest, PollResponse, TaskState
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server.admin_client import AdminClient

from .conftest import (
    RunningAgent,
    free_port,
    register_agent,
    run_and_follow,
    script_task,
    start_server,
)


async def attempts_with(error: Exception, max_seconds: float, tries: int) -> list[float]:
    """The sleeps chosen for ``tries`` failures of ``error``."""
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    calls = 0
    async for attempt in retrying("test", asyncio.Event(), max_seconds, sleep=record):
        with attempt:
            calls += 1
            if calls <= tries:
                raise error
    return sleeps


async def test_waits_are_jittered_capped_and_grow() -> None:
    sleeps = await attempts_with(ServerUnavailable("down"), max_seconds=4.0, tries=40)
    assert len(sleeps) == 40
    assert all(0 <= s <= 4.0 for s in sleeps)
    assert len({round(s, 6) for s in sleeps}) > 30  # jittered, not a fixed curve
    assert max(sleeps[:2]) <= 1.0  # early attempts stay short: 0.5 * 2**n


async def test_a_refused_connection_is_retried_within_a_shorter_cap() -> None:
    # Nothing listening: a restart in progress, and a retry that costs the server nothing.
    refused = await attempts_with(ServerUnavailable("down", refused=True), 60.0, tries=60)
    assert all(0 <= s <= REFUSED_MAX_SECONDS for s in refused) and REFUSED_MAX_SECONDS < 60
    busy = await attempts_with(ServerUnavailable("no answer in time"), 60.0, tries=60)
    assert max(busy) > REFUSED_MAX_SECONDS  # a busy server keeps the configured cap


async def test_nothing_listening_is_told_apart_from_a_timeout() -> None:
    client = CommsClient(f"https://127.0.0.1:{free_port()}", ["AB" * 32], None)
    try:
        with pytest.raises(ServerUnavailable) as failed:
            await client.post(POLL, PollRequest(free_slots=1), PollResponse)
    finally:
        await client.close()
    assert failed.value.refused and "cannot reach" in str(failed.value)


async def test_retry_after_is_honoured() -> None:
    sleeps = await attempts_with(ServerUnavailable("busy", retry_after=3), max_seconds=10, tries=3)
    assert all(s >= 3 for s in sleeps)


async def test_other_errors_and_cancellation_are_not_retried() -> None:
    with pytest.raises(RequestRejected):
        await attempts_with(RequestRejected(400, "bad", "bad"), max_seconds=1, tries=1)
    with pytest.raises(asyncio.CancelledError):
        await attempts_with(asyncio.CancelledError(), max_seconds=1, tries=1)  # type: ignore[arg-type]


async def test_stop_event_ends_retrying_with_the_last_error() -> None:
    stop = asyncio.Event()
    calls = 0
    with pytest.raises(ServerUnavailable):
        async for attempt in retrying("test", stop, 60):
            with attempt:
                calls += 1
                stop.set()
                raise ServerUnavailable("down")
    assert calls == 1


async def test_agent_started_while_the_server_is_down_connects_when_it_comes_back(
    tmp_path: Path, log_seen: Callable[[str], asyncio.Event]
) -> None:
    comms_port = free_port()
    server = await start_server(tmp_path / "server", comms_port=comms_port)
    key = await server.state.store.create_api_key("tests")
    home = await register_agent(server, key, tmp_path / "web1", "web1")
    await server.shutdown()

    failed_twice = log_seen("failed (attempt 2)")
    agent = RunningAgent(home, backoff_max_seconds=0.3)
    await failed_twice.wait()
    server = await start_server(tmp_path / "server", comms_port=comms_port)
    try:
        async with AdminClient(f"http://127.0.0.1:{server.admin_port}", key) as admin:
            final, events = await run_and_follow(admin, script_task("web1", "echo back"))
        assert final.state == TaskState.SUCCEEDED
        assert [e.text for e in events] == ["back"]
    finally:
        await agent.stop()
        await server.shutdown()
