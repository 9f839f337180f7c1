"""Retention: tasks that ended longer ago than retention_days go with their output (and
emptied deployments), at startup and periodically, in batches that never stall the event loop;
`server prune --dry-run` says what would go, `server prune` prunes now (admin keys only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tentacle_poll.exceptions import RequestRejected
from tentacle_poll.protocol.models import Event, ResultRequest
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.server.retention import DAY, prune
from tentacle_poll.store import NewAgent, NewTask, Store
from tentacle_poll.store.base import TaskQuery
from tentacle_poll.tls import generate_identity

from .conftest import start_server
from .test_deadlines import cli


async def ended_task(store: Store, agent_id: str, at: float, lines: int = 1) -> str:
    task = await store.create_task(NewTask(agent_id, '{"kind":"script"}'), at)
    await store.lease_tasks(agent_id, 1, at, 30)
    await store.accept_task(task.id, agent_id, at)
    events = [Event(seq=i, stream="stdout", text=f"line {i}", ts=at) for i in range(1, lines + 1)]
    await store.append_events(task.id, events)
    await store.finish_task(task.id, ResultRequest(state="succeeded", last_seq=lines), at)
    return task.id


async def history(home: Path, old_ages_days: list[float]) -> tuple[list[str], str]:
    """A server home whose store holds tasks that ended that many days ago, and one from now."""
    store = await ServerHome(home).open_store()
    try:
        pem = generate_identity("web1").cert_pem.decode()
        agent = await store.save_agent(NewAgent("web1", "a" * 64, pem, ["Test"], ["web"]), False,
                                       time.time())  # fmt: skip
        old = [await ended_task(store, agent.id, time.time() - d * DAY) for d in old_ages_days]
        return old, await ended_task(store, agent.id, time.time())
    finally:
        await store.close()


async def test_old_tasks_go_at_startup_and_recent_ones_stay(
    tmp_path: Path, log_seen: Callable[[str], asyncio.Event]
) -> None:
    old, recent = await history(tmp_path / "server", [40, 31])
    pruned = log_seen("retention: removed 2 tasks")
    server = await start_server(tmp_path / "server", retention_days=30)
    try:
        async with asyncio.timeout(30):
            await pruned.wait()
        store = server.state.store
        assert [await store.get_task(task_id) for task_id in old] == [None, None]
        assert await store.events_after(old[0], 0, 10) == []
        assert (await store.get_task(recent)) is not None
        assert len(await store.events_after(recent, 0, 10)) == 1
    finally:
        await server.shutdown()


async def test_pruning_thousands_never_stalls_the_event_loop(tmp_path: Path) -> None:
    await history(tmp_path / "server", [0])  # the agent and its home
    server = await start_server(tmp_path / "server", retention_days=0)  # no pruning by itself
    try:
        store = server.state.store
        agent = await store.agent_by_name("web1")
        assert agent is not None
        for _ in range(2000):
            await ended_task(store, agent.id, time.time() - 10 * DAY, lines=3)
        gaps: list[float] = []
        ticking = asyncio.create_task(_tick(gaps))
        removed = await prune(server.state, time.time() - DAY)
        ticking.cancel()
        assert removed == 2000
        assert max(gaps) < 0.25, f"the event loop stalled {max(gaps):.3f} s in one batch"
        assert (await store.prunable(time.time() - DAY)).tasks == 0
    finally:
        await server.shutdown()


async def _tick(gaps: list[float]) -> None:
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def test_prune_dry_run_then_prune_from_the_command_line(tmp_path: Path) -> None:
    await history(tmp_path / "server", [10, 12, 3])
    server = await start_server(tmp_path / "server", retention_days=0)
    try:
        key = await server.state.store.create_api_key("ops")
        code, output = await cli(server, key, "server", "prune", "--dry-run", "--older-than", "7")
        assert code == 0 and "would remove 2 tasks" in output, output
        assert len(await server.state.store.list_tasks(TaskQuery(limit=10))) == 4, (
            "a dry run removes nothing"
        )
        code, output = await cli(server, key, "server", "prune")
        assert code == 1 and "retention is off" in output and "Traceback" not in output
        code, output = await cli(server, key, "server", "prune", "--older-than", "0")
        assert code == 1 and "must be more than 0" in output, output
        code, output = await cli(server, key, "server", "prune", "--older-than", "7")
        assert code == 0 and "removed 2 tasks" in output, output
        assert len(await server.state.store.list_tasks(TaskQuery(limit=10))) == 2
    finally:
        await server.shutdown()


async def test_only_admin_keys_prune_but_read_keys_may_look(server: Server) -> None:
    read_key = await server.state.store.create_api_key("viewer", scope="read")
    async with AdminClient(f"http://127.0.0.1:{server.admin_port}", read_key) as viewer:
        seen = await viewer.prune(dry_run=True)
        assert seen.older_than_days == 30 and not seen.removed
        with pytest.raises(RequestRejected, match="needs admin"):
            await viewer.prune(dry_run=False)
