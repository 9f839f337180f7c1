"""Script isolation, as Octopus Tentacle does it: a task with full isolation holds its mutex
exclusively (nothing else with that mutex runs meanwhile); a task with no isolation holds it
shared (many at once, but never beside a fully isolated one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Literal

from tentacle_poll.exceptions import TaskExecutionError

Isolation = Literal["full", "none"]


class IsolationTimeout(TaskExecutionError):
    """The task waited for its isolation mutex longer than it allowed."""


class _ReadWriteLock:
    def __init__(self) -> None:
        self.readers: set[str] = set()
        self.writer: str | None = None
        self.changed = asyncio.Condition()

    def holders(self) -> list[str]:
        return [self.writer] if self.writer else sorted(self.readers)

    def free_for(self, isolation: Isolation) -> bool:
        if isolation == "full":
            return self.writer is None and not self.readers
        return self.writer is None


class IsolationMutexes:
    def __init__(self) -> None:
        self._locks: dict[str, _ReadWriteLock] = {}

    @contextlib.asynccontextmanager
    async def hold(
        self,
        name: str,
        isolation: Isolation,
        task_id: str,
        timeout: float | None,
        say: Callable[[str], None],
    ) -> AsyncIterator[None]:
        """Holds mutex ``name``; IsolationTimeout after ``timeout`` seconds of waiting."""
        lock = self._locks.setdefault(name, _ReadWriteLock())
        async with lock.changed:
            if not lock.free_for(isolation):
                say(
                    f"waiting for the isolation mutex '{name}', held by task(s) "
                    f"{', '.join(lock.holders())}"
                )
                try:
                    await asyncio.wait_for(
                        lock.changed.wait_for(lambda: lock.free_for(isolation)), timeout
                    )
                except TimeoutError:
                    raise IsolationTimeout(
                        f"timed out after {timeout:g} s waiting for the isolation mutex '{name}'"
                    ) from None
            if isolation == "full":
                lock.writer = task_id
            else:
                lock.readers.add(task_id)
        try:
            yield
        finally:
            async with lock.changed:
                lock.readers.discard(task_id)
                if lock.writer == task_id:
                    lock.writer = None
                lock.changed.notify_all()
