"""A malformed or unknown envelope fails its task with the reason; the agent keeps working."""

from __future__ import annotations

import json

import pytest

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store import NewTask

from .conftest import AgentFactory, run_and_follow, script_task


@pytest.mark.parametrize(
    "spec, reason",
    [
        ({"kind": "teleport", "script": {"body": "true"}}, "kind"),
        ({"kind": "script"}, "a script task needs its 'script' field"),
        ({"kind": "script", "script": {"syntax": "cobol", "body": "x"}}, "script.syntax"),
        ({"kind": "script", "script": {"body": "true"}, "timeout_seconds": -1}, "timeout_seconds"),
    ],
)
async def test_bad_envelope_fails_its_task_and_the_agent_runs_the_next(
    server: Server,
    start_agent: AgentFactory,
    admin: AdminClient,
    spec: dict[str, object],
    reason: str,
) -> None:
    await start_agent("web1")
    agent = await server.state.store.agent_by_name("web1")
    assert agent is not None
    # Written straight into the store: the admin API itself refuses such a task.
    bad = await server.state.store.create_task(NewTask(agent.id, json.dumps(spec)), 0.0)
    server.state.dispatcher.work_for(agent.id)
    final = await admin.follow(bad.id, lambda _: None)
    assert final.state == TaskState.FAILED
    assert final.reason.startswith("malformed or unsupported task:") and reason in final.reason
    good, _ = await run_and_follow(admin, script_task("web1", "echo fine"))
    assert good.state == TaskState.SUCCEEDED


async def test_envelope_over_the_agent_limit_fails_with_the_reason(
    start_agent: AgentFactory, admin: AdminClient
) -> None:
    await start_agent("web1", max_envelope_kb=16)
    big = script_task("web1", "# " + "x" * 20_000 + "\necho never")
    final, events = await run_and_follow(admin, big)
    assert final.state == TaskState.FAILED
    assert "over this agent's limit of 16384" in final.reason
    assert events == []
