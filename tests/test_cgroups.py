"""Whole-tree control that catches escapees: with a writable cgroup v2 (this machine's hybrid
layout mounts it at /sys/fs/cgroup/unified), each task runs in its own cgroup, and its end, a
timeout or a cancel leave nothing running, `setsid` and double-forked children included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tentacle_poll.protocol.models import HealthSpec, SubmitTask, TaskState
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.workers.cgroups import CgroupRoot

from .conftest import AgentFactory, run_and_follow, script_task, wait_for_line
from .helpers import process_running, read_pids

needs_cgroups = pytest.mark.skipif(
    CgroupRoot.find(Path.cwd(), make=False) is None,
    reason="no writable cgroup v2 here (not root, or no delegated subtree)",
)


def escaping_script(pids: Path, then: str) -> str:
    """Children that leave the task's process group: one through setsid, one through a
    double fork into a new session; one keeps the output pipe, one does not."""
    return (
        f"setsid sleep 600 > /dev/null 2>&1 & echo $! > {pids}/setsid.pid\n"
        f"( setsid sh -c 'echo $$ > {pids}/double.pid; exec sleep 600' & )\n"
        f"while [ ! -s {pids}/double.pid ]; do sleep 0.01; done\n"
        "echo started\n"
        f"{then}\n"
    )


async def run_escaping(admin: AdminClient, pids: Path, then: str, **extra: object) -> TaskState:
    task = await admin.submit(script_task("web1", escaping_script(pids, then), **extra))
    await wait_for_line(admin, task.id, "started")
    escapees = read_pids(pids)
    assert len(escapees) == 2 and all(process_running(p) for p in escapees)
    final = await admin.follow(task.id, lambda _: None)
    assert [p for p in escapees if process_running(p)] == []
    return final.state


@needs_cgroups
@pytest.mark.parametrize(
    ("then", "extra", "state"),
    [
        ("exit 0", {}, TaskState.SUCCEEDED),  # the task's end
        ("sleep 300", {"timeout_seconds": 1.0}, TaskState.TIMED_OUT),
    ],
)
async def test_escaped_children_end_with_their_task(
    start_agent: AgentFactory,
    admin: AdminClient,
    tmp_path: Path,
    then: str,
    extra: dict[str, object],
    state: TaskState,
) -> None:
    await start_agent("web1")
    assert await run_escaping(admin, tmp_path, then, **extra) == state


@needs_cgroups
async def test_a_cancel_ends_escaped_children_and_health_says_cgroups_are_used(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1")
    task = await admin.submit(script_task("web1", escaping_script(tmp_path, "sleep 300")))
    await wait_for_line(admin, task.id, "started")
    escapees = read_pids(tmp_path)
    await admin.cancel(task.id)
    final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.CANCELLED
    assert [p for p in escapees if process_running(p)] == []
    _, events = await run_and_follow(
        admin, SubmitTask(target="web1", kind="health", health=HealthSpec())
    )
    assert json.loads(events[0].text)["process_control"].startswith("cgroup v2 per task")
    root = CgroupRoot.find(tmp_path / "web1")
    assert root is not None and list(root.path.glob("task-*")) == []  # each one removed


@needs_cgroups
async def test_a_second_agent_started_in_the_same_cgroup_leaves_the_first_ones_tasks_alone(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    """Two agents on one host, started from one session: the second one's start-up ends the
    leftovers of a dead agent, and must not take the first one's running task for one."""
    await start_agent("web1")
    gate = tmp_path / "gate"
    body = f"echo started; while [ ! -e {gate} ]; do sleep 0.02; done; echo done"
    task = await admin.submit(script_task("web1", body))
    await wait_for_line(admin, task.id, "started")
    second = await start_agent("web2")
    await asyncio.wait_for(second.agent.started.wait(), 30)  # its recovery has run
    gate.touch()
    final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.SUCCEEDED
    await second.stop()
    folder = CgroupRoot.find(tmp_path / "web2", make=False)
    assert folder is not None and not folder.path.exists()  # an agent leaves no cgroup behind
