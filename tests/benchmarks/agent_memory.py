"""The agent's memory under load (issue 15): peak RSS while a 100 MB task streams with a live
follower (`tentacle-poll task follow`, a separate process, slowing the server), RSS after it
against RSS before it, and RSS after many tiny tasks against RSS after a hundred (flatness)."""

from __future__ import annotations

import asyncio
import os
import subprocess

from tentacle_poll.server.admin_client import AdminClient

from ..processes import CLI, Daemon
from .figures import MB, Bench, Row, script_task
from .fleet import rss_bytes

PEAK_TARGET = 80 * MB
SETTLE_TARGET = 5 * MB
BATCH = 200


async def agent_memory(bench: Bench, stream_mb: int, tiny_tasks: int) -> list[Row]:
    await bench.agent_home("memory")
    agent = await Daemon.start("--home", str(bench.folder / "memory"))
    await agent.wait_for("polling")
    pid = agent.process.pid
    async with AdminClient(bench.admin_url, bench.key) as admin:
        await _run_tiny(admin, 1)  # the first task loads what every task needs
        idle = rss_bytes(pid)
        await _stream_with_follower(bench, admin, stream_mb)
        peak, after = rss_bytes(pid, "VmHWM"), rss_bytes(pid)
        await _run_tiny(admin, 100)
        after_100 = rss_bytes(pid)
        await _run_tiny(admin, tiny_tasks - 100)
        after_many = rss_bytes(pid)
    await agent.stop()
    return _rows(stream_mb, tiny_tasks, idle, peak, after, after_100, after_many)


async def _stream_with_follower(bench: Bench, admin: AdminClient, stream_mb: int) -> None:
    body = f"head -c {stream_mb * 1000 * 1000} /dev/zero | tr '\\0' 'x' | fold -w 100"
    task = await admin.submit(script_task("memory", body))
    env = {**os.environ, "TENTACLE_POLL_API_KEY": bench.key,
           "TENTACLE_POLL_ADMIN_URL": bench.admin_url}  # fmt: skip
    follower = await asyncio.create_subprocess_exec(
        *CLI, "task", "follow", task.id, env=env, stdout=subprocess.DEVNULL
    )
    await follower.wait()
    await admin.follow(task.id, lambda _: None)


async def _run_tiny(admin: AdminClient, count: int) -> None:
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        tasks = await asyncio.gather(
            *(admin.submit(script_task("memory", "echo tiny")) for _ in range(size))
        )
        await asyncio.gather(*(admin.follow(t.id, lambda _: None) for t in tasks))


def _rows(
    stream_mb: int, tiny: int, idle: int, peak: int, after: int, after_100: int, after_many: int
) -> list[Row]:
    return [
        Row(
            f"agent peak RSS, {stream_mb} MB task with a live follower",
            f"{peak / MB:.1f} MiB",
            f"idle before it {idle / MB:.1f} MiB",
            f"{peak / idle:.2f}x",
            "<= 80 MiB",
            peak <= PEAK_TARGET,
        ),
        Row(
            f"agent RSS after the {stream_mb} MB task",
            f"{after / MB:.1f} MiB",
            f"idle before it {idle / MB:.1f} MiB",
            f"{(after - idle) / MB:+.1f} MiB",
            "within 5 MiB of idle",
            abs(after - idle) <= SETTLE_TARGET,
        ),
        Row(
            f"agent RSS after {tiny} tiny tasks",
            f"{after_many / MB:.1f} MiB",
            f"after 100: {after_100 / MB:.1f} MiB",
            f"{(after_many - after_100) / MB:+.1f} MiB",
            "within 5 MiB of after 100",
            abs(after_many - after_100) <= SETTLE_TARGET,
        ),
    ]
