"""Disks fill up (real, small tmpfs mounts). The server's, while a task streams output: every
write that fails for space is answered 503 with Retry-After, logged once rather than a
traceback per request, and reported by /api/health and /readyz; once space is freed every line
arrives once. The agent's: the task that cannot spool its output is stopped and fails naming
the folder, the agent takes no new work while short of space, and takes it again after."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from tentacle_poll.exceptions import StorageFull
from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store.space import SpaceAwareConnection
from tentacle_poll.store.sqlite import PRAGMAS

from .conftest import RunningAgent, register_agent, script_task, start_server, wait_for_line

LINES = 20_000


@contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """A file taking all the free space of ``folder``'s disk but ``leave`` bytes."""
    disk = os.statvfs(folder)
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(disk.f_bavail * disk.f_frsize - leave, 0))
    return filler


async def test_a_full_server_disk_answers_503_says_so_once_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, log_seen: Callable[[str], asyncio.Event]
) -> None:
    with small_tmpfs(tmp_path / "server", "16m") as home:
        server = await start_server(home)
        try:
            key = await server.state.store.create_api_key("tests")
            agent = RunningAgent(await register_agent(server, key, tmp_path / "web1", "web1"))
            gate = tmp_path / "gate"
            body = f"echo ready\nwhile [ ! -e {gate} ]; do sleep 0.02; done\nseq 1 {LINES}\n"
            admin_url = f"http://127.0.0.1:{server.admin_port}"
            async with AdminClient(admin_url, key) as admin, aiohttp.ClientSession() as http:
                task = await admin.submit(script_task("web1", body))
                await wait_for_line(admin, task.id, "ready")
                filler = fill(home, leave=16 * 1024)
                full = log_seen("writes are refused with 503")  # the shortage log line
                gate.touch()
                async with asyncio.timeout(30):
                    await full.wait()
                async with http.get(f"{admin_url}/api/health") as response:
                    health = await response.json()
                async with http.get(f"{admin_url}/readyz") as response:
                    ready = response.status
                filler.unlink()  # space again: the agent's retries go through
                lines: list[str] = []
                final = await admin.follow(task.id, lambda event: lines.append(event.text))
            await agent.stop()
        finally:
            await server.shutdown()
    assert health["status"] == "degraded" and "out of disk space" in str(health["problems"])
    assert ready == 503
    assert final.state == TaskState.SUCCEEDED
    assert lines == ["ready", *(str(i) for i in range(1, LINES + 1))]
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "unexpected error" in m or "Traceback" in m]
    assert len([m for m in messages if m.startswith("cannot answer")]) <= 2  # once a minute


async def test_a_full_agent_disk_fails_the_task_by_name_and_stops_taking_work(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    with small_tmpfs(tmp_path / "agent", "4m") as home_folder:
        home = await register_agent(server, api_key, home_folder, "web1")
        agent = RunningAgent(home, min_free_home_mb=0.5)
        gate = tmp_path / "gate"
        body = (f"echo ready\nwhile [ ! -e {gate} ]; do sleep 0.02; done\n"
                "head -c 8000000 /dev/zero | tr '\\0' 'x' | fold -w 100\n")  # fmt: skip
        task = await admin.submit(script_task("web1", body))
        await wait_for_line(admin, task.id, "ready")
        filler = fill(home_folder, leave=64 * 1024)
        gate.touch()
        failed = await admin.follow(task.id, lambda _: None)
        short = log_seen("taking no new tasks until space is freed")
        waiting = await admin.submit(script_task("web1", "echo after"))
        async with asyncio.timeout(30):
            await short.wait()
            while (await admin.events(waiting.id, 2**62, 10)).task.state != TaskState.QUEUED:
                pass  # each call is held until the task changes: given back, queued again
        filler.unlink()
        after = await admin.follow(waiting.id, lambda _: None)
        await agent.stop()
    assert failed.state == TaskState.FAILED
    assert "No space left on device" in failed.reason and "spool" in failed.reason
    assert after.state == TaskState.SUCCEEDED


def _returning_update(db: sqlite3.Connection) -> None:
    # autocommit: the write is committed when the statement is stepped to its end, by fetchall
    db.execute("UPDATE t SET v = randomblob(30000) WHERE id = 1 RETURNING id").fetchall()


def _transaction(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE t SET v = randomblob(30000) WHERE id = 1")
    db.commit()


def _with_block(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    with db:  # sqlite3 commits on leaving the block, with its own commit
        db.execute("UPDATE t SET v = randomblob(30000) WHERE id = 1")


def _insert(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO t (v) VALUES (randomblob(30000))")


@pytest.mark.parametrize("write", [_returning_update, _transaction, _with_block, _insert])
def test_every_way_sqlite_writes_names_a_full_disk(
    tmp_path: Path, write: Callable[[sqlite3.Connection], None]
) -> None:
    """The server answers StorageFull with 503; a write whose full disk surfaced as a plain
    OperationalError (a RETURNING statement's fetch, a ``with`` block's commit) was a 500 and
    a traceback in the log."""
    with small_tmpfs(tmp_path / "db", "1m") as folder:
        path = folder / "t.sqlite"
        db = sqlite3.connect(path, isolation_level=None, factory=SpaceAwareConnection)
        try:
            db.executescript(PRAGMAS + "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);")
            db.execute("INSERT INTO t VALUES (1, x'00')")
            fill(folder, leave=0)
            with pytest.raises(StorageFull, match="disk is full"):
                for _ in range(100):  # a page freed earlier may still take one write
                    write(db)
        finally:
            db.close()
