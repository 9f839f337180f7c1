"""Script isolation: full isolation runs alone on its mutex; waiters say what they wait for."""

from __future__ import annotations

from pathlib import Path

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, script_task, wait_for_line


def gated(gate: Path, name: str) -> str:
    return f"echo {name} started; while [ ! -e {gate} ]; do sleep 0.02; done; echo {name} done"


async def test_full_isolation_waits_for_running_tasks_and_blocks_new_ones(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1", concurrency=4)
    first_gate, exclusive_gate = tmp_path / "g1", tmp_path / "g2"
    shared = await admin.submit(script_task("web1", gated(first_gate, "shared")))
    await wait_for_line(admin, shared.id, "shared started")
    exclusive = await admin.submit(
        script_task("web1", gated(exclusive_gate, "exclusive"), isolation="full")
    )
    waiting = await wait_for_line(admin, exclusive.id, "waiting for the isolation mutex")
    assert waiting[-1].stream == "system"
    assert "'RunningScript', held by task(s) " + shared.id in waiting[-1].text
    first_gate.touch()
    await wait_for_line(admin, exclusive.id, "exclusive started")
    later = await admin.submit(script_task("web1", "echo later"))
    await wait_for_line(admin, later.id, "waiting for the isolation mutex")
    exclusive_gate.touch()
    final = await admin.follow(later.id, lambda _: None)
    assert final.state == TaskState.SUCCEEDED
    assert (await admin.task(exclusive.id)).state == TaskState.SUCCEEDED


async def test_other_mutex_names_do_not_wait_and_a_wait_can_time_out(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1", concurrency=4)
    gate = tmp_path / "gate"
    holder = await admin.submit(script_task("web1", gated(gate, "holder"), isolation="full"))
    await wait_for_line(admin, holder.id, "holder started")
    elsewhere = await admin.submit(
        script_task("web1", "echo free", isolation="full", isolation_mutex="other")
    )
    assert (await admin.follow(elsewhere.id, lambda _: None)).state == TaskState.SUCCEEDED
    impatient = await admin.submit(script_task("web1", "echo never", isolation_timeout_seconds=0.5))
    final = await admin.follow(impatient.id, lambda _: None)
    assert final.state == TaskState.FAILED
    assert "timed out after 0.5 s waiting for the isolation mutex 'RunningScript'" in final.reason
    gate.touch()
    assert (await admin.follow(holder.id, lambda _: None)).state == TaskState.SUCCEEDED
