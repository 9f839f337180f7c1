"""The agent's task slots: how many tasks may run at once, shared by every poll loop.

With several server nodes, each loop reserves the slots its outstanding poll offers, so two
nodes can never lease more tasks than there are slots; and each poll offers at most an equal
share of the capacity, so a node whose poll is idly held cannot starve the others.
"""

from __future__ import annotations

import asyncio
import math


class Slots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.loops = 1
        self._running: dict[str, asyncio.Task[None]] = {}
        self._reserved: dict[str, int] = {}
        self._freed = asyncio.Event()

    @property
    def free(self) -> int:
        return max(self.capacity - len(self._running) - sum(self._reserved.values()), 0)

    def not_running(self) -> int:
        """Slots running no task (``free`` also counts out those a held poll offers)."""
        return self.capacity - len(self._running)

    @property
    def running_ids(self) -> list[str]:
        return list(self._running)

    def reserve(self, loop: str) -> int:
        """Reserves what ``loop``'s next poll may offer, and returns that number."""
        self._reserved.pop(loop, None)
        offer = min(self.free, math.ceil(self.capacity / self.loops))
        self._reserved[loop] = offer
        return offer

    def release(self, loop: str) -> None:
        if self._reserved.pop(loop, 0) > 0:
            self._signal_freed()

    def occupy(self, task_id: str, task: asyncio.Task[None]) -> None:
        self._running[task_id] = task
        task.add_done_callback(lambda _: self._finished(task_id))

    def is_running(self, task_id: str) -> bool:
        return task_id in self._running

    async def wait_freed(self) -> None:
        await self._freed.wait()

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._running.values())

    def _finished(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        self._signal_freed()

    def _signal_freed(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()
