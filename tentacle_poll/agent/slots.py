"""The agent's task slots: how many tasks may run at once, shared by every poll loop."""

from __future__ import annotations

import asyncio


class Slots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._running: dict[str, asyncio.Task[None]] = {}
        self._freed = asyncio.Event()

    @property
    def free(self) -> int:
        return max(self.capacity - len(self._running), 0)

    @property
    def running_ids(self) -> list[str]:
        return list(self._running)

    def occupy(self, task_id: str, task: asyncio.Task[None]) -> None:
        self._running[task_id] = task
        task.add_done_callback(lambda _: self._release(task_id))

    def is_running(self, task_id: str) -> bool:
        return task_id in self._running

    async def wait_freed(self) -> None:
        await self._freed.wait()

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._running.values())

    def _release(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        self._freed.set()
        self._freed = asyncio.Event()
