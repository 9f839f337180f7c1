"""Fault tests: each really does the damage it names, then checks what the server finally holds.

kill -9 of the server while tasks run; kill -9 of the agent mid-task; a connection cut right
after the poll answer; SIGTERM drain; an agent gone silent; output over the cap; a full spool.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.protocol.models import (
    AcceptRequest,
    AcceptResponse,
    Event,
    EventsRequest,
    EventsResponse,
    PollRequest,
    PollResponse,
    TaskState,
    TaskView,
)
from tentacle_poll.protocol.routes import (
    POLL,
    PROTOCOL_HEADER,
    TASK_ACCEPT,
    TASK_EVENTS,
    task_path,
)
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.tls.files import identity_paths

from .conftest import (
    AgentFactory,
    RunningAgent,
    _working_in,
    agent_in_mode,
    client_for,
    free_port,
    listen_at,
    register_agent,
    register_at,
    run_and_follow,
    script_task,
    secret,
    start_server,
    wait_for_line,
)
from .helpers import process_running
from .processes import Daemon, start_agent_process, start_server_process
from .relay import CuttingRelay

FAST_AGENT = {"backoff_max_seconds": "0.3", "cancel_grace_seconds": "1"}
FAST_SERVER = {"listening_backoff_max_seconds": "0.3"}
MODES = pytest.mark.parametrize("mode", ["polling", "listening"])


async def all_events(admin: AdminClient, task_id: str) -> list[Event]:
    return (await admin.events(task_id, 0, 0)).events


async def wait_for_state(admin: AdminClient, task_id: str, wanted: TaskState) -> TaskView:
    """Event-driven: the events long poll answers as soon as the task changes."""
    while True:
        page = await admin.events(task_id, 2**62, 10)
        if page.task.state == wanted:
            return page.task


AgentProcess = tuple[AgentHome, Daemon]


@pytest.fixture
async def agent_process(
    server: Server, api_key: str, tmp_path: Path, processes: list[Daemon], mode: str
) -> AgentProcess:
    """Target "web1" of the in-process server (polling it, or listening: ``mode``), its agent a
    real process."""
    home = await agent_in_mode(mode, server, api_key, tmp_path / "web1", "web1")
    agent = await start_agent_process(home.folder, **FAST_AGENT)
    processes.append(agent)
    return home, agent


async def _server_and_agent_processes(
    tmp_path: Path, processes: list[Daemon], mode: str = "polling", **agent_settings: str
) -> tuple[Daemon, str, tuple[int, int]]:
    """A server process and an agent process "web1" (polling, or listening); the server, its
    API key, its ports."""
    ports = free_port(), free_port()
    server = await start_server_process(tmp_path / "server", *ports, **FAST_SERVER)
    processes.append(server)
    key = await _api_key(tmp_path / "server")
    _, thumbprint = ServerHome(tmp_path / "server").ensure_identity()
    if mode == "listening":
        admin_url = f"http://127.0.0.1:{ports[1]}"
        agent_home = await listen_at(admin_url, thumbprint, key, tmp_path / "web1", "web1")
    else:
        url = f"https://127.0.0.1:{ports[0]}"
        agent_home = await register_at(url, thumbprint, key, tmp_path / "web1", "web1")
    processes.append(await start_agent_process(agent_home.folder, **FAST_AGENT, **agent_settings))
    return server, key, ports


@MODES
async def test_server_killed_while_tasks_run_loses_no_line_and_no_result(
    tmp_path: Path, processes: list[Daemon], mode: str
) -> None:
    server, key, ports = await _server_and_agent_processes(tmp_path, processes, mode)
    gate = tmp_path / "gate"
    body = (
        'for i in $(seq 1 100); do echo "$1 before $i"; done\n'
        f"while [ ! -e {gate} ]; do sleep 0.02; done\n"
        'for i in $(seq 1 100); do echo "$1 after $i"; done\n'
        "exit $2\n"
    )
    admin_url = f"http://127.0.0.1:{ports[1]}"
    async with AdminClient(admin_url, key) as admin:
        tasks = []
        for n in range(3):
            tasks.append(await admin.submit(script_task("web1", body, arguments=[f"t{n}", str(n)])))
        for task in tasks:
            await wait_for_line(admin, task.id, "before 100")
    await server.kill()
    gate.touch()  # the tasks finish while the server is dead
    server = await start_server_process(tmp_path / "server", *ports, **FAST_SERVER)
    processes.append(server)
    async with AdminClient(admin_url, key) as admin:
        for n, task in enumerate(tasks):
            final = await admin.follow(task.id, lambda _: None)
            events = await all_events(admin, task.id)
            expected = [f"t{n} {when} {i}" for when in ("before", "after") for i in range(1, 101)]
            assert [e.text for e in events] == expected
            assert [e.seq for e in events] == list(range(1, 201))
            assert final.exit_code == n and final.last_seq == 200
            assert final.state == (TaskState.SUCCEEDED if n == 0 else TaskState.FAILED)


# 600,000: the second half (3.8 MB of output, printed while the server is dead) is more than
# the agent keeps in memory, so it is read back from the spool once the server returns.
@pytest.mark.parametrize(("total", "mode"), [(100_000, "polling"), (600_000, "polling"),
                                             (100_000, "listening")])  # fmt: skip
@pytest.mark.timeout(150)  # 600,000 lines take 50 s here: most of the 60 s default
async def test_server_killed_mid_stream_loses_no_block_of_lines(
    tmp_path: Path, processes: list[Daemon], total: int, mode: str
) -> None:
    server, key, ports = await _server_and_agent_processes(tmp_path, processes, mode)
    gate = tmp_path / "gate"
    body = f"seq 1 50000\nwhile [ ! -e {gate} ]; do sleep 0.02; done\nseq 50001 {total}\n"
    admin_url = f"http://127.0.0.1:{ports[1]}"
    async with AdminClient(admin_url, key) as admin:
        task = await admin.submit(script_task("web1", body))
        while (await admin.events(task.id, 2**62, 10)).task.last_seq < 50000:
            pass  # each call is held until the task changes
    await server.kill()
    gate.touch()  # the second half is printed, in blocks, while the server is dead
    processes.append(await start_server_process(tmp_path / "server", *ports, **FAST_SERVER))
    async with AdminClient(admin_url, key) as admin:
        lines: list[Event] = []
        final = await admin.follow(task.id, lines.append)
    assert [e.text for e in lines] == [str(i) for i in range(1, total + 1)]
    assert [e.seq for e in lines] == list(range(1, total + 1))
    assert final.state == TaskState.SUCCEEDED and final.last_seq == total


@MODES
async def test_agent_killed_mid_task_reports_it_failed_and_never_reruns_it(
    tmp_path: Path, admin: AdminClient, processes: list[Daemon], agent_process: AgentProcess
) -> None:
    home, agent = agent_process
    runs = tmp_path / "runs"
    pid_file = tmp_path / "script.pid"
    body = f'echo run >> {runs}; echo "started with $TOKEN"; echo $$ > {pid_file}; sleep 300'
    token = secret("TOKEN", "s3cr3t-t0ken")
    task = await admin.submit(script_task("web1", body, variables=[token]))
    await wait_for_line(admin, task.id, "started")
    await agent.kill()
    script_pid = int(pid_file.read_text())
    assert process_running(script_pid)  # orphaned: the agent died, its script did not
    _assert_no_secret_on_disk(home.folder, "s3cr3t-t0ken")
    agent = await start_agent_process(home.folder, **FAST_AGENT)
    processes.append(agent)
    final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.FAILED
    assert final.reason == "agent restarted while the task ran"
    texts = [e.text for e in await all_events(admin, task.id)]
    assert texts[0] == "started with ********"
    assert texts[-1].startswith("agent restarted while the task ran; its processes")
    assert not process_running(script_pid)
    again, _ = await run_and_follow(admin, script_task("web1", "echo next"))
    assert again.state == TaskState.SUCCEEDED
    assert runs.read_text() == "run\n"  # started exactly once, across the restart


@pytest.mark.parametrize("forward_before_cut", [False, True])
async def test_connection_cut_right_after_the_poll_answer_runs_the_task_at_most_once(
    tmp_path: Path, forward_before_cut: bool
) -> None:
    server = await start_server(tmp_path / "server", lease_seconds=1.0, hold_seconds=30.0)
    api_key = await server.state.store.create_api_key("tests")
    try:
        async with CuttingRelay(server.comms_port) as relay:
            home = await register_agent(server, api_key, tmp_path / "web1", "web1")
            # Point the agent at the relay instead of the server; TLS passes through it untouched.
            settings = home.settings()
            node = settings.servers[0].model_copy(update={"url": f"https://127.0.0.1:{relay.port}"})
            agent = RunningAgent(home, servers=[node])
            agent_record = await server.state.store.agent_by_name("web1")
            assert agent_record is not None
            await server.state.dispatcher.wait_until_polling(agent_record.id)
            relay.cut_after_next_answer(forward_first=forward_before_cut)
            runs = tmp_path / "runs"
            async with AdminClient(
                f"http://127.0.0.1:{server.admin_port}", api_key
            ) as server_admin:
                task = script_task("web1", f"echo run >> {runs}; echo ran")
                final, events = await run_and_follow(server_admin, task)
            assert relay.cuts == 1
            assert final.state == TaskState.SUCCEEDED
            assert [e.text for e in events] == ["ran"]
            assert runs.read_text() == "run\n"
            await agent.stop()
    finally:
        await server.shutdown()


@MODES
async def test_sigterm_drains_a_running_task_then_exits_zero(
    tmp_path: Path, admin: AdminClient, agent_process: AgentProcess
) -> None:
    _, agent = agent_process
    gate = tmp_path / "gate"
    body = f"echo started; while [ ! -e {gate} ]; do sleep 0.02; done; echo finished"
    task = await admin.submit(script_task("web1", body))
    await wait_for_line(admin, task.id, "started")
    agent.process.send_signal(signal.SIGTERM)
    await agent.wait_for("waiting for 1 tasks")
    late = await admin.submit(script_task("web1", "echo late"))
    gate.touch()
    assert await agent.stop(signal.SIGCONT) == 0  # SIGCONT: just wait, it is draining already
    final = await admin.task(task.id)
    assert final.state == TaskState.SUCCEEDED
    assert [e.text for e in await all_events(admin, task.id)] == ["started", "finished"]
    assert (await admin.task(late.id)).state == TaskState.QUEUED  # no new work while draining


@MODES
async def test_second_sigterm_cancels_running_tasks_and_reports_them(
    admin: AdminClient, agent_process: AgentProcess
) -> None:
    _, agent = agent_process
    task = await admin.submit(script_task("web1", "echo started; sleep 300"))
    await wait_for_line(admin, task.id, "started")
    agent.process.send_signal(signal.SIGTERM)
    await agent.wait_for("waiting for 1 tasks")
    assert await agent.stop(signal.SIGTERM) == 0
    final = await admin.task(task.id)
    assert final.state == TaskState.CANCELLED and final.reason == "the agent is stopping"


async def test_a_drain_with_the_server_away_ends_at_its_deadline_and_keeps_the_result(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    """SIGTERM while a task runs and the server is down: at the drain deadline the task is
    cancelled, its result spooled, and the agent exits (it used to retry the delivery for
    ever); started again, it delivers the result."""
    server, key, ports = await _server_and_agent_processes(tmp_path, processes, drain_seconds="1")
    agent_home = tmp_path / "web1"
    admin_url = f"http://127.0.0.1:{ports[1]}"
    async with AdminClient(admin_url, key) as admin:
        task = await admin.submit(script_task("web1", "echo started; sleep 300"))
        await wait_for_line(admin, task.id, "started")
    await server.kill()
    agent = processes[-1]
    agent.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):  # drain 1 s + cancel grace 1 s + spool margin 5 s
        code = await agent.process.wait()
    await agent.stop()
    assert code == 0, agent.output
    assert "results not yet delivered stay in" in agent.output
    assert list((agent_home / "spool").iterdir()), "the result waits in the spool"
    processes.append(await start_server_process(tmp_path / "server", *ports, **FAST_SERVER))
    processes.append(await start_agent_process(agent_home, **FAST_AGENT))
    async with AdminClient(admin_url, key) as admin:
        final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.CANCELLED and final.reason == "the agent is stopping"


async def test_silent_agent_shows_lost_and_its_real_result_still_lands(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    server = await start_server(tmp_path / "server", hold_seconds=0.5, agent_lost_seconds=1.0)
    key = await server.state.store.create_api_key("tests")
    try:
        home = await register_agent(server, key, tmp_path / "web1", "web1")
        agent = await start_agent_process(home.folder, **FAST_AGENT)
        processes.append(agent)
        gate = tmp_path / "gate"
        async with AdminClient(f"http://127.0.0.1:{server.admin_port}", key) as admin:
            body = f"echo started; while [ ! -e {gate} ]; do sleep 0.02; done; echo done"
            task = await admin.submit(script_task("web1", body))
            await wait_for_line(admin, task.id, "started")
            agent.process.send_signal(signal.SIGSTOP)  # frozen: no poll, no post
            lost = await wait_for_state(admin, task.id, TaskState.LOST)
            assert "agent lost" in lost.reason
            gate.touch()
            agent.process.send_signal(signal.SIGCONT)
            final = await wait_for_state(admin, task.id, TaskState.SUCCEEDED)
            assert final.exit_code == 0
            assert [e.text for e in await all_events(admin, task.id)] == ["started", "done"]
    finally:
        await server.shutdown()


async def test_an_agent_posting_output_between_polls_is_not_lost(tmp_path: Path) -> None:
    """Silence marks an agent lost, not a missing poll: one busy posting a task's output (as
    a simulated agent that polls only between tasks does) keeps its task running."""
    server = await start_server(tmp_path / "server", hold_seconds=0.5, agent_lost_seconds=1.0)
    key = await server.state.store.create_api_key("tests")
    client = client_for(server, await register_agent(server, key, tmp_path / "web1", "web1"))
    try:
        async with AdminClient(f"http://127.0.0.1:{server.admin_port}", key) as admin:
            task = await admin.submit(script_task("web1", "echo hi"))
            await client.post(POLL, PollRequest(free_slots=1, hold_seconds=5), PollResponse)
            await client.post(task_path(TASK_ACCEPT, task.id), AcceptRequest(), AcceptResponse)
            for seq in range(1, 16):  # 3 s of output, three times agent_lost_seconds, no poll
                line = Event(seq=seq, stream="stdout", text="x", ts=time.time())
                events = EventsRequest(events=[line])
                await client.post(task_path(TASK_EVENTS, task.id), events, EventsResponse)
                await asyncio.sleep(0.2)
            assert (await admin.task(task.id)).state == TaskState.RUNNING
    finally:
        await client.close()
        await server.shutdown()


async def test_an_agent_stalled_half_way_through_a_post_is_still_lost(tmp_path: Path) -> None:
    """Talking starts once a request's body is in: a connection that sent the head of an
    events post and stalls (a frozen agent, a black-holed link) does not keep its task alive."""
    server = await start_server(tmp_path / "server", hold_seconds=0.5, agent_lost_seconds=1.0)
    key = await server.state.store.create_api_key("tests")
    home = await register_agent(server, key, tmp_path / "web1", "web1")
    client = client_for(server, home)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(*identity_paths(home.identity_folder))
    try:
        async with AdminClient(f"http://127.0.0.1:{server.admin_port}", key) as admin:
            task = await admin.submit(script_task("web1", "echo hi"))
            await client.post(POLL, PollRequest(free_slots=1, hold_seconds=5), PollResponse)
            await client.post(task_path(TASK_ACCEPT, task.id), AcceptRequest(), AcceptResponse)
            _, writer = await asyncio.open_connection("127.0.0.1", server.comms_port, ssl=context)
            head = (
                f"POST {task_path(TASK_EVENTS, task.id)} HTTP/1.1\r\nHost: server\r\n"
                f"Content-Type: application/json\r\n{PROTOCOL_HEADER}: 1\r\n"
                'Content-Length: 1000\r\n\r\n{"events":['
            )
            writer.write(head.encode())  # and nothing more: 988 bytes never come
            lost = await wait_for_state(admin, task.id, TaskState.LOST)
            assert "agent lost" in lost.reason
            writer.close()
    finally:
        await client.close()
        await server.shutdown()


async def test_an_answered_poll_counts_as_seen_when_it_ends(
    server: Server, api_key: str, admin: AdminClient, agent_client: CommsClient
) -> None:
    """A poll held for long shows the agent alive until it was answered, not since it came."""
    await agent_client.post(POLL, PollRequest(free_slots=1, hold_seconds=1.5), PollResponse)
    answered = time.time()
    [target] = await admin.targets()
    assert target.last_seen is not None and target.last_seen >= answered - 0.5


async def test_output_over_the_cap_gets_a_marker_and_the_task_keeps_running(
    start_agent: AgentFactory, admin: AdminClient
) -> None:
    await start_agent("web1", max_output_mb=0.001)  # 1048 bytes
    body = 'for i in $(seq 1 2000); do echo "line $i"; done; echo finished >&2; exit 0'
    final, events = await run_and_follow(admin, script_task("web1", body))
    assert final.state == TaskState.SUCCEEDED  # the script ran to the end
    markers = [e for e in events if e.stream == "system"]
    assert len(markers) == 1 and "output limit of 1048 bytes reached" in markers[0].text
    assert sum(len(e.text) + 1 for e in events if e.stream != "system") <= 1048
    assert events[0].text == "line 1"


async def test_a_full_spool_stops_the_agent_taking_work(
    tmp_path: Path, server: Server, api_key: str, admin: AdminClient, log_seen: object
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    # An undeliverable result from the past fills the spool past its cap.
    stale = home.spool_folder / "old-task"
    stale.mkdir(parents=True)
    (stale / "events.jsonl").write_text("x" * 4096)
    entry = {"task": "old-task", "step": "finished", "server": "https://gone:1"}
    home.journal_file.write_text(json.dumps(entry) + "\n")
    full = log_seen("at its size limit")  # type: ignore[operator]
    agent = RunningAgent(home, spool_max_mb=0.001)
    await full.wait()
    record = await server.state.store.agent_by_name("web1")
    assert record is not None
    await server.state.dispatcher.wait_until_polling(record.id)
    task = await admin.submit(script_task("web1", "echo never"))
    await server.state.dispatcher.wait_until_polling(record.id)
    assert (await admin.task(task.id)).state == TaskState.QUEUED
    assert stale.exists()  # kept: nothing is thrown away to make room
    await agent.stop()


async def _api_key(server_home: Path) -> str:
    store = await ServerHome(server_home).open_store()
    try:
        return await store.create_api_key("tests")
    finally:
        await store.close()


def _assert_no_secret_on_disk(folder: Path, value: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert value.encode() not in path.read_bytes(), path


async def test_leftover_scripts_are_found_by_their_working_folder(tmp_path: Path) -> None:
    """What the no_leftover_scripts fixture ends after each test: a process, in a session of
    its own as a task's script is, still working inside the test's folder."""
    (tmp_path / "elsewhere").mkdir()
    process = await asyncio.create_subprocess_exec(
        "sleep", "30", cwd=tmp_path, start_new_session=True
    )
    try:
        assert process.pid in _working_in(tmp_path)
        assert process.pid not in _working_in(tmp_path / "elsewhere")
    finally:
        process.kill()
        await process.wait()
