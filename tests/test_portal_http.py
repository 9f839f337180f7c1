"""The portal over plain HTTP (no browser): the output stream as a script reads it (server-sent
events that resume after the ``Last-Event-ID`` they are given, end once the task has ended and
every line went, and refuse what they cannot serve with a clear status); sessions that ended
are forgotten."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.portal import output
from tentacle_poll.server.portal.guard import SESSIONS

from .conftest import AgentFactory, run_and_follow, script_task

Message = tuple[str, str, str]  # (event, id, data)


async def session_cookie(server: Server, api_key: str) -> dict[str, str]:
    key = await server.state.store.api_key(api_key, time.time())
    assert key is not None
    session_id, _ = server.applications["admin"][SESSIONS].open(key, api_key)
    return {"tp_session": session_id}


async def messages(response: aiohttp.ClientResponse) -> list[Message]:
    """Every message of the stream until it ends (the server closes it after ``end``)."""
    found: list[Message] = []
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line == "" and "event" in fields:
            found.append((fields["event"], fields.get("id", ""), fields.get("data", "")))
            fields = {}
        elif ": " in line and not line.startswith(":"):
            name, value = line.split(": ", 1)
            fields[name] = value
    return found


async def test_the_stream_resumes_after_the_last_event_id_and_ends_with_the_task(
    server: Server, admin: AdminClient, api_key: str, start_agent: AgentFactory, tmp_path: Path
) -> None:
    await start_agent("web1")
    final, _ = await run_and_follow(admin, script_task("web1", "seq 1 10"))
    url = f"http://127.0.0.1:{server.admin_port}/portal/tasks/{final.id}/stream"
    cookies = await session_cookie(server, api_key)
    async with (
        aiohttp.ClientSession(cookies=cookies) as http,
        http.get(url, headers={"Last-Event-ID": "4"}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        got = await messages(response)
    events = [event for event, _, _ in got]
    assert events == ["task", "lines", "end"]
    _, last_id, data = got[1]
    assert last_id == "10" and data.startswith('[[5, "stdout", "5", false]')
    assert data.count("stdout") == 6, "lines 5 to 10, none before, none twice"


async def test_what_the_stream_cannot_serve_is_refused_clearly(
    server: Server, admin: AdminClient, api_key: str, start_agent: AgentFactory
) -> None:
    await start_agent("web1")
    final, _ = await run_and_follow(admin, script_task("web1", "echo one"))
    base = f"http://127.0.0.1:{server.admin_port}/portal/tasks"
    cookies = await session_cookie(server, api_key)
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(f"{base}/{final.id}/stream") as response,
    ):
        assert response.status == 401, "no session: a script is told to sign in"
    async with aiohttp.ClientSession(cookies=cookies) as http:
        bad = {"Last-Event-ID": "not-a-number"}
        async with http.get(f"{base}/{final.id}/stream", headers=bad) as response:
            assert response.status == 400 and "Last-Event-ID" in await response.text()
        async with http.get(f"{base}/no-such-task/stream") as response:
            assert response.status == 404
        async with http.get(f"{base}/{final.id}/output.txt") as response:
            assert await response.text() == "one\n"
        async with http.get(f"{base}/no-such-task") as response:
            assert response.status == 404 and "text/html" in response.headers["Content-Type"]
            assert "there is no task no-such-task" in await response.text()


async def test_ended_sessions_are_forgotten_at_the_next_sign_in(
    server: Server, api_key: str
) -> None:
    sessions = server.applications["admin"][SESSIONS]
    for _ in range(3):
        await session_cookie(server, api_key)
    sessions.expire_all()
    await session_cookie(server, api_key)
    assert len(sessions) == 1, "only the live one is kept"


async def test_a_busy_stream_stops_once_its_key_is_revoked(
    server: Server, admin: AdminClient, api_key: str, start_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(output, "SESSION_CHECK_SECONDS", 0.2)
    await start_agent("web1")
    watcher = await server.state.store.create_api_key("watcher", scope="read")
    task = await admin.submit(script_task("web1", "while true; do echo busy; sleep 0.01; done"))
    url = f"http://127.0.0.1:{server.admin_port}/portal/tasks/{task.id}/stream"
    cookies = await session_cookie(server, watcher)
    async with aiohttp.ClientSession(cookies=cookies) as http, http.get(url) as response:
        async for raw in response.content:
            if raw.startswith(b"event: lines"):
                break  # the output flows
        assert await server.state.store.revoke_api_key("watcher")
        got = await messages(response)
    assert got[-1][0] == "signed-out", "the stream ended because its key went"
    await admin.cancel(task.id)
    await admin.follow(task.id, lambda _: None)  # ended before the agent is stopped
