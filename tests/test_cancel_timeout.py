"""Cancel and timeout end the script's whole process group: interrupt, grace period, kill."""

from __future__ import annotations

from pathlib import Path

import pytest

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, script_task, wait_for_line
from .helpers import process_running, read_pids


def tree_script(pids: Path) -> str:
    """A script with a background child and a foreground grandchild-holding subshell."""
    return (
        f"sleep 300 & echo $! > {pids}/child.pid\n"
        f"(sleep 300; true) & echo $! > {pids}/subshell.pid\n"
        f"echo $$ > {pids}/script.pid\n"
        "echo started\n"
        "sleep 300\n"
    )


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_cancel_ends_every_process_of_the_task(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1")
    task = await admin.submit(script_task("web1", tree_script(tmp_path)))
    await wait_for_line(admin, task.id, "started")
    pids = read_pids(tmp_path)
    assert len(pids) == 3 and all(process_running(p) for p in pids)
    await admin.cancel(task.id)
    final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.CANCELLED
    assert final.reason == "cancelled on the server"
    assert [p for p in pids if process_running(p)] == []


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_timeout_ends_every_process_of_the_task(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1")
    task = await admin.submit(script_task("web1", tree_script(tmp_path), timeout_seconds=1.0))
    await wait_for_line(admin, task.id, "started")
    pids = read_pids(tmp_path)
    lines: list[str] = []
    final = await admin.follow(task.id, lambda event: lines.append(event.text))
    assert final.state == TaskState.TIMED_OUT
    assert "timed out after 1 s" in final.reason
    assert [p for p in pids if process_running(p)] == []
    assert "sending SIGTERM to 5 processes of the task" in lines
    assert "every process ended within the grace period" in lines


async def test_a_script_ignoring_sigterm_is_killed_after_the_grace_period(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1", cancel_grace_seconds=0.5)
    body = f"trap '' TERM; echo $$ > {tmp_path}/script.pid; echo started; sleep 300"
    task = await admin.submit(script_task("web1", body))
    await wait_for_line(admin, task.id, "started")
    [pid] = read_pids(tmp_path)
    await admin.cancel(task.id)
    lines: list[str] = []
    final = await admin.follow(task.id, lambda event: lines.append(event.text))
    assert final.state == TaskState.CANCELLED
    assert final.exit_code == 128 + 9  # killed by SIGKILL, as shells report it
    assert not process_running(pid)
    assert "sending SIGTERM to 2 processes of the task" in lines  # the shell and its sleep
    assert "sending SIGKILL to 2 processes still running after the 0.5 s grace" in lines


async def test_a_script_killed_by_a_signal_is_reported_as_such(
    start_agent: AgentFactory, admin: AdminClient
) -> None:
    await start_agent("web1")
    task = await admin.submit(script_task("web1", "echo bye; kill -KILL $$"))
    final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.FAILED and final.exit_code == 137
    assert final.reason == "the script was killed by SIGKILL (9): exit code 137"


async def test_cancel_of_a_queued_task_never_runs_it(
    server: object, admin: AdminClient, start_agent: AgentFactory, tmp_path: Path
) -> None:
    running = await start_agent("web1")
    await running.stop()
    marker = tmp_path / "ran"
    task = await admin.submit(script_task("web1", f"touch {marker}"))
    cancelled = await admin.cancel(task.id)
    assert cancelled.state == TaskState.CANCELLED
    assert not marker.exists()
