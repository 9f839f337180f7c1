"""Small helpers for tests that inspect processes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def read_pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(folder.glob("*.pid"))]


async def eventually(
    check: Callable[[], Awaitable[bool]], seconds: float, every: float = 0.05
) -> None:
    """Waits until ``check()`` is true, for state another process changes and announces to
    nobody this test can listen to (its timeout fails the test by name)."""
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110  (no event to await: another process's state)
            await asyncio.sleep(every)
