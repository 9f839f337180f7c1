"""register → poll → run a script → live output in order → result with exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tentacle_poll.protocol.models import EventsPage, TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import FOLLOW_PAGE_LINES, AdminClient
from tentacle_poll.tls import load_identity

from .conftest import AgentFactory, run_and_follow, script_task, wait_for_line

# Every test here in both modes: the agent polling the server, and the server connecting to the
# listening agent (one exchange over either, docs/protocol.md "Listening mode").
pytestmark = pytest.mark.parametrize("mode", ["polling", "listening"])


async def test_script_output_arrives_in_order_with_exit_code(
    start_agent: AgentFactory, admin: AdminClient
) -> None:
    await start_agent("web1")
    body = 'for i in $(seq 1 500); do echo "line $i"; done; echo "to stderr" >&2; exit 3'
    final, events = await run_and_follow(admin, script_task("web1", body))
    assert final.state == TaskState.FAILED
    assert final.exit_code == 3
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    stdout = [e.text for e in events if e.stream == "stdout"]
    assert stdout == [f"line {i}" for i in range(1, 501)]
    assert [e.text for e in events if e.stream == "stderr"] == ["to stderr"]
    assert final.last_seq == len(events)


async def test_output_is_streamed_while_the_script_runs(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1")
    gate = tmp_path / "gate"
    body = f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second"
    task = await admin.submit(script_task("web1", body))
    seen = await wait_for_line(admin, task.id, "first")
    assert [e.text for e in seen] == ["first"]  # arrived while the script still waited
    gate.touch()
    final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.SUCCEEDED and final.exit_code == 0


async def test_python_script_with_arguments_and_variables(
    start_agent: AgentFactory, admin: AdminClient
) -> None:
    await start_agent("web1")
    task = script_task(
        "web1",
        "import os, sys\nprint(sys.argv[1:], os.environ['GREETING'])",
        syntax="python",
        variables=[{"name": "GREETING", "value": "hello"}],
    )
    task = task.model_copy(
        update={"script": task.script.model_copy(update={"arguments": ["a b", "c"]})}
    )
    final, events = await run_and_follow(admin, task)
    assert final.state == TaskState.SUCCEEDED
    assert [e.text for e in events] == ["['a b', 'c'] hello"]


async def test_targets_list_shows_registration_and_connection(
    start_agent: AgentFactory, admin: AdminClient
) -> None:
    running = await start_agent("web1")
    await run_and_follow(admin, script_task("web1", "true"))
    [target] = await admin.targets()
    assert target.name == "web1"
    assert target.environments == ["Test"] and target.roles == ["web"]
    assert target.connected is True and target.last_seen is not None
    identity = load_identity(running.agent.home.identity_folder)
    assert target.thumbprint == identity.thumbprint


class CountingAdmin(AdminClient):
    """The real admin client, counting the pages it asks for."""

    pages = 0

    async def events(
        self, task_id: str, after: int, wait: float, limit: int = FOLLOW_PAGE_LINES
    ) -> EventsPage:
        self.pages += 1
        return await super().events(task_id, after, wait, limit)


async def test_follow_stops_at_the_ended_task_s_last_page(
    start_agent: AgentFactory, admin: AdminClient, server: Server, api_key: str
) -> None:
    await start_agent("web1")
    short = await admin.submit(script_task("web1", "echo one; echo two"))
    long = await admin.submit(script_task("web1", "seq 1 2500"))
    for task in (short, long):
        await admin.follow(task.id, lambda _: None)
    async with CountingAdmin(f"http://127.0.0.1:{server.admin_port}", api_key) as counting:
        lines: list[str] = []
        await counting.follow(short.id, lambda e: lines.append(e.text))
        assert (lines, counting.pages) == (["one", "two"], 1)  # no extra request for an empty page
        lines.clear()
        await counting.follow(long.id, lambda e: lines.append(e.text))
        assert lines == [str(i) for i in range(1, 2501)]  # full pages are followed by more
        assert counting.pages == 1 + 3
