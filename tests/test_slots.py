"""Several tasks at once within the slot limit; the rest wait in the queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, script_task, wait_for_line


async def test_tasks_beyond_the_slots_wait_until_a_slot_frees(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1", concurrency=2)
    gate = tmp_path / "gate"
    body = f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done"
    tasks = [await admin.submit(script_task("web1", body)) for _ in range(4)]
    await wait_for_line(admin, tasks[0].id, "started")
    await wait_for_line(admin, tasks[1].id, "started")
    waiting = [await admin.task(t.id) for t in tasks[2:]]
    assert [t.state for t in waiting] == [TaskState.QUEUED, TaskState.QUEUED]
    gate.touch()
    finals = await asyncio.gather(*(admin.follow(t.id, lambda _: None) for t in tasks))
    assert [f.state for f in finals] == [TaskState.SUCCEEDED] * 4
