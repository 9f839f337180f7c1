"""The comms routes spoken directly, as an agent would: leases, several envelopes per poll,
accept, idempotent events and results, and a 4xx problem for every malformed request."""

from __future__ import annotations

import io
import json
import os
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.exceptions import (
    LeaseLost,
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
)
from tentacle_poll.protocol.codec import decode_object
from tentacle_poll.protocol.models import (
    AcceptRequest,
    AcceptResponse,
    AddListeningTarget,
    Event,
    EventsRequest,
    EventsResponse,
    PollRequest,
    PollResponse,
    ResultRequest,
    TaskState,
    TaskView,
)
from tentacle_poll.protocol.routes import (
    API_KEY_HEADER,
    POLL,
    PROTOCOL_HEADER,
    TASK_ACCEPT,
    TASK_EVENTS,
    TASK_RESULT,
    task_path,
)
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store import NewAgent
from tentacle_poll.store.base import AgentQuery
from tentacle_poll.store.sqlite import SqliteStore
from tentacle_poll.tls import pinned_client_context

from .conftest import comms_url, register_agent, script_task, start_server


async def poll(
    client: CommsClient, free_slots: int, running: list[str] | None = None
) -> PollResponse:
    return await client.post(
        POLL, PollRequest(free_slots=free_slots, running=running or []), PollResponse
    )


async def running_task(agent_client: CommsClient, admin: AdminClient) -> TaskView:
    """A task submitted, polled and accepted: running, ready for its events."""
    task = await admin.submit(script_task("web1", "echo hi"))
    await poll(agent_client, free_slots=1)
    await agent_client.post(task_path(TASK_ACCEPT, task.id), AcceptRequest(), AcceptResponse)
    return task


async def test_one_poll_carries_as_many_envelopes_as_free_slots(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    queued = [await admin.submit(script_task("web1", f"echo {i}")) for i in range(3)]
    first = await poll(agent_client, free_slots=2)
    assert [e.task_id for e in first.envelopes] == [t.id for t in queued[:2]]
    second = await poll(agent_client, free_slots=5)
    assert [e.task_id for e in second.envelopes] == [queued[2].id]
    assert (await admin.task(queued[2].id)).state == TaskState.LEASED


async def test_accept_then_events_and_result_are_idempotent(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await admin.submit(script_task("web1", "echo hi"))
    await poll(agent_client, free_slots=1)
    accept_path = task_path(TASK_ACCEPT, task.id)
    accepted = await agent_client.post(accept_path, AcceptRequest(), AcceptResponse)
    again = await agent_client.post(accept_path, AcceptRequest(), AcceptResponse)
    assert accepted.state == again.state == TaskState.RUNNING
    batch = EventsRequest(events=[Event(seq=1, stream="stdout", text="hi", ts=1.0)])
    events_path = task_path(TASK_EVENTS, task.id)
    for _ in range(2):  # a retry after a lost answer
        answer = await agent_client.post(events_path, batch, EventsResponse)
        assert answer.acked_seq == 1
    result = ResultRequest(state="succeeded", exit_code=0, last_seq=1)
    for _ in range(2):
        view = await agent_client.post(task_path(TASK_RESULT, task.id), result, TaskView)
        assert view.state == TaskState.SUCCEEDED
    page = await admin.events(task.id, 0, 0)
    assert [e.text for e in page.events] == ["hi"]


async def test_a_block_of_lines_is_one_event_and_is_read_back_line_by_line(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await running_task(agent_client, admin)
    block = Event(seq=1, stream="stdout", text="one\ntwo\nthree", ts=1.0, lines=3)
    single = Event(seq=4, stream="stderr", text="four", ts=2.0)
    answer = await agent_client.post(
        task_path(TASK_EVENTS, task.id), EventsRequest(events=[block, single]), EventsResponse
    )
    assert answer.acked_seq == 4
    page = await admin.events(task.id, 1, 0)  # resumes inside the block
    assert [(e.seq, e.text) for e in page.events] == [(2, "two"), (3, "three"), (4, "four")]
    with pytest.raises(ValueError, match="lines is 2 but text holds 3 lines"):
        Event(seq=5, stream="stdout", text="a\nb\nc", ts=3.0, lines=2)


async def test_batches_out_of_order_are_acknowledged_only_up_to_the_first_gap(
    agent_client: CommsClient, admin: AdminClient, server: Server
) -> None:
    task = await running_task(agent_client, admin)
    later = Event(seq=3, stream="stdout", text="three\nfour", ts=1.0, lines=2)
    earlier = Event(seq=1, stream="stdout", text="one\ntwo", ts=1.0, lines=2)
    path = task_path(TASK_EVENTS, task.id)
    first = await agent_client.post(path, EventsRequest(events=[later]), EventsResponse)
    assert first.acked_seq == 0
    assert (await admin.events(task.id, 0, 0)).events == []  # a follower must not skip 1-2
    second = await agent_client.post(path, EventsRequest(events=[earlier]), EventsResponse)
    assert second.acked_seq == 4
    assert [e.text for e in (await admin.events(task.id, 0, 0)).events] == [
        "one",
        "two",
        "three",
        "four",
    ]
    await admin.delete_target("web1")
    assert await server.state.store.events_after(task.id, 0, 10) == []


async def test_output_text_is_one_file_per_task_and_a_block_missing_from_it_is_skipped(
    agent_client: CommsClient,
    admin: AdminClient,
    server: Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = await running_task(agent_client, admin)
    block = Event(seq=1, stream="stdout", text="one\ntwo", ts=1.0, lines=2)
    batch = EventsRequest(events=[block, Event(seq=3, stream="stdout", text="three", ts=1.0)])
    for _ in range(2):  # a retried batch adds nothing to the file
        await agent_client.post(task_path(TASK_EVENTS, task.id), batch, EventsResponse)
    log = tmp_path / "server" / "server-output" / f"{task.id}.log"
    assert log.read_text() == "one\ntwothree"
    os.truncate(log, len("one\ntwo"))  # what a power cut may leave: the index ahead of the text
    page = await server.state.store.events_after(task.id, 0, 2)
    assert [e.text for e in page] == ["one", "two"]
    assert "lost lines" not in caplog.text  # a page reads only the blocks it needs
    assert [e.text for e in (await admin.events(task.id, 0, 0)).events] == ["one", "two"]
    assert f"output of task {task.id} lost lines 3+" in caplog.text


EVENTS_IN_MAIN = """
CREATE TABLE events (task_id TEXT NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL,
    text TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (task_id, seq)) WITHOUT ROWID;
INSERT INTO events VALUES ('a1-01', 1, 'stdout', 'old line', 1.0);
INSERT INTO events VALUES ('a1-01', 2, 'stdout', 'two', 2.0);
INSERT INTO events VALUES ('a1-01', 3, 'stdout', 'lines', 2.0);
"""
EVENTS_IN_OUTPUT = """
CREATE TABLE output.events (task_id TEXT NOT NULL, seq INTEGER NOT NULL,
    lines INTEGER NOT NULL DEFAULT 1, stream TEXT NOT NULL, ts REAL NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)) WITHOUT ROWID;
INSERT INTO output.events VALUES ('a1-01', 1, 1, 'stdout', 1.0, 'old line');
INSERT INTO output.events VALUES ('a1-01', 2, 2, 'stdout', 2.0, 'two\nlines');
"""


@pytest.mark.parametrize(
    "older_tables", [EVENTS_IN_MAIN, EVENTS_IN_OUTPUT], ids=["in-main", "in-output"]
)
async def test_lines_kept_in_sqlite_by_an_older_version_move_to_the_output_files(
    tmp_path: Path, older_tables: str
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("ATTACH DATABASE ? AS output", (str(tmp_path / "old-output.db"),))
        db.executescript(older_tables)
    for _ in range(2):  # moved once: opening it again finds the same lines
        store = SqliteStore(path, migrate=True)
        try:
            assert await store.events_after("a1-01", 0, 10) == [
                Event(seq=1, stream="stdout", text="old line", ts=1.0),
                Event(seq=2, stream="stdout", text="two", ts=2.0),
                Event(seq=3, stream="stdout", text="lines", ts=2.0),
            ]
        finally:
            await store.close()
    assert "two" in (tmp_path / "old-output" / "a1-01.log").read_text()
    with sqlite3.connect(tmp_path / "old-output.db") as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'events'").fetchall() == []


async def test_accept_of_a_task_never_leased_is_refused(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await admin.submit(script_task("web1", "echo hi"))
    with pytest.raises(LeaseLost):
        await agent_client.post(task_path(TASK_ACCEPT, task.id), AcceptRequest(), AcceptResponse)


async def test_cancel_of_a_leased_task_reaches_the_poll_and_blocks_accept(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    task = await admin.submit(script_task("web1", "sleep 10"))
    await poll(agent_client, free_slots=1)
    await admin.cancel(task.id)
    answer = await poll(agent_client, free_slots=0, running=[task.id])
    assert answer.cancels == [task.id]
    with pytest.raises(LeaseLost):
        await agent_client.post(task_path(TASK_ACCEPT, task.id), AcceptRequest(), AcceptResponse)
    assert (await admin.task(task.id)).state == TaskState.CANCELLED


async def test_an_unaccepted_lease_returns_to_the_queue(
    tmp_path: Path, api_key: str, admin: AdminClient, server: Server, agent_client: CommsClient
) -> None:
    server.settings = server.settings.model_copy(update={"lease_seconds": 0.01})
    server.state.settings = server.settings
    task = await admin.submit(script_task("web1", "echo hi"))
    first = await poll(agent_client, free_slots=1)
    assert [e.task_id for e in first.envelopes] == [task.id]
    # The lease has expired by the next poll; the task is offered again.
    second = await poll(agent_client, free_slots=1)
    assert [e.task_id for e in second.envelopes] == [task.id]


MALFORMED = [
    b"",
    b"not json",
    b"[]",
    b'{"free_slots": -1}',
    b'{"events": []}',
    b'{"events": [{"seq": 1, "stream": "stdout", "text": "a\\nb", "ts": 1, "lines": 1}]}',
]


@pytest.mark.parametrize(
    "route", [POLL, "/v1/register", "/v1/tasks/x/events", "/v1/tasks/x/result"]
)
@pytest.mark.parametrize("body", MALFORMED)
async def test_malformed_bodies_get_a_4xx_problem(
    server: Server, agent_client: CommsClient, tmp_path: Path, route: str, body: bytes
) -> None:
    home_identity = tmp_path / "web1" / "identity"
    context = pinned_client_context([server.state.thumbprint], home_identity)
    async with (
        aiohttp.ClientSession() as session,
        session.post(comms_url(server) + route, data=body, ssl=context) as response,
    ):
        problem = json.loads(await response.read())
    assert 400 <= response.status < 500, (route, body, problem)
    assert response.content_type == "application/problem+json"
    assert problem["status"] == response.status and problem["title"]


async def test_unknown_route_wrong_version_and_oversized_body_are_4xx(
    server: Server, agent_client: CommsClient, tmp_path: Path
) -> None:
    context = pinned_client_context([server.state.thumbprint], tmp_path / "web1" / "identity")
    url = comms_url(server)
    v1 = {PROTOCOL_HEADER: "1"}
    cases = [
        ("POST", "/v1/nowhere", b"{}", v1, 404),
        ("GET", POLL, b"", v1, 405),
        ("POST", POLL, b'{"free_slots": 1}', {PROTOCOL_HEADER: "9"}, 400),
        ("POST", POLL, b'{"free_slots": 1}', {}, 400),  # the header is required on this port
        ("POST", POLL, io.BytesIO(b"x" * (9 * 1024 * 1024)), v1, 413),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, body, headers, status in cases:
            async with session.request(
                method, url + path, data=body, headers=headers, ssl=context
            ) as r:
                assert r.status == status, (method, path)
                assert (await r.json(content_type=None))["status"] == status


async def test_admin_api_needs_a_key_and_rejects_bad_input(
    server: Server, admin: AdminClient
) -> None:
    async with AdminClient(f"http://127.0.0.1:{server.admin_port}", "API-WRONG") as wrong:
        with pytest.raises(RequestRejected) as refused:
            await wrong.targets()
    assert refused.value.status == 401
    with pytest.raises(RequestRejected) as missing:
        await admin.submit(script_task("nobody", "true"))
    assert missing.value.status == 404 and "no target named nobody" in missing.value.detail
    with pytest.raises(RequestRejected) as bad_wait:
        await admin.events("x", 0, 1e9)
    assert bad_wait.value.status == 400


async def test_last_seen_of_many_agents_is_written_in_several_transactions(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "server.db")
    try:
        names = [f"a{n}" for n in range(600)]  # more than two TOUCH_BATCHes
        agents = [
            await store.save_agent(NewAgent(n, f"{n:0>64}", "pem", [], []), False, 1.0)
            for n in names
        ]
        await store.touch_agents([(a.id, 1000.0 + i, "9.9") for i, a in enumerate(agents)])
        stored = {a.name: a for a in await store.list_agents()}
        assert [stored[n].last_seen for n in names] == [1000.0 + i for i in range(600)]
        assert {a.agent_version for a in stored.values()} == {"9.9"}
    finally:
        await store.close()


async def test_a_client_shut_down_sends_nothing_and_opens_no_connection(
    agent_client: CommsClient,
) -> None:
    """An agent's delivery that outlives its stop (it is shielded from cancellation) must fail
    at once, not open a connection that nobody will close."""
    await agent_client.shut_down()
    with pytest.raises(ServerUnavailable, match="the agent is stopping"):
        await agent_client.post(POLL, PollRequest(free_slots=1), PollResponse)
    assert agent_client._session is None


async def test_a_nul_in_a_path_a_query_or_a_label_is_a_400_on_postgresql_too(
    tmp_path: Path, pg_url: str
) -> None:
    """PostgreSQL cannot even be asked about a text holding NUL: refused before the store."""
    server = await start_server(tmp_path / "server", store_url=pg_url)
    try:
        key = await server.state.store.create_api_key("tests")
        base = f"http://127.0.0.1:{server.admin_port}"
        async with aiohttp.ClientSession(headers={API_KEY_HEADER: key}) as http:
            for path in ("/api/targets?search=a%00b", "/api/tasks/a%00b",
                         "/api/tasks?target=%00", "/portal/fleet?role=%00"):  # fmt: skip
                async with http.get(base + path, allow_redirects=False) as response:
                    assert response.status == 400, path
                    assert "NUL" in await response.text()
            fan_out = {"environment": "Test\u0000", "task": {"script": {"body": "true"}}}
            async with http.post(base + "/api/deployments", json=fan_out) as response:
                assert response.status == 400  # jsonb could never filter on such a label
                assert "environment" in (await response.json())["detail"]
        await register_agent(server, key, tmp_path / "web1", "web1", roles=["<web>"])
        assert [t.name for t in await server.state.store.agents_page(AgentQuery(role="<web>"))] == [
            "web1"
        ]
    finally:
        await server.shutdown()


@given(name=st.text(max_size=120), thumbprint=st.text(max_size=70), url=st.text(max_size=60))
def test_a_refused_value_is_told_what_it_must_be_never_a_pattern(
    name: str, thumbprint: str, url: str
) -> None:
    body = {"name": name, "listening_url": url, "thumbprint": thumbprint,
            "environments": ["T"], "roles": ["r"]}  # fmt: skip
    try:
        decode_object(AddListeningTarget, body)
    except ProtocolError as exc:
        said = str(exc)
        assert said and "should match pattern" not in said and "Value error" not in said, said
