"""Streams one task's output to the server in sequence-numbered batches, then its result.

Lines are batched by what accumulates while the previous post is in flight: an idle stream
sends each line at once, a busy one sends large batches. A batch stays pending until the
server acknowledges it, and every post is idempotent (by seq, by task id), so a retry after
a lost answer duplicates nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from loguru import logger

from tentacle_poll.agent.backoff import retrying
from tentacle_poll.agent.transport import CommsClient
from tentacle_poll.exceptions import CommunicationError
from tentacle_poll.protocol.models import (
    MAX_EVENTS_PER_BATCH,
    Event,
    EventsRequest,
    EventsResponse,
    ResultRequest,
    TaskView,
)
from tentacle_poll.protocol.routes import TASK_EVENTS, TASK_RESULT, task_path
from tentacle_poll.workers import Outcome
from tentacle_poll.workers.outcome import Stream

A = TypeVar("A", EventsResponse, TaskView)


class TaskReporter:
    def __init__(
        self,
        client: CommsClient,
        task_id: str,
        stop: asyncio.Event,
        max_backoff: float,
        on_cancel: Callable[[str], None],
    ) -> None:
        self._client = client
        self._task_id = task_id
        self._stop = stop
        self._max_backoff = max_backoff
        self._on_cancel = on_cancel
        self._seq = 0
        self._pending: list[Event] = []
        self._has_lines = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name=f"flush-{self._task_id}")

    def line(self, stream: Stream, text: str) -> None:
        self._seq += 1
        self._pending.append(Event(seq=self._seq, stream=stream, text=text, ts=time.time()))
        self._has_lines.set()

    async def finish(self, outcome: Outcome) -> None:
        """Flush every line, then post the result. Shielded: a cancel cannot lose the result."""
        await asyncio.shield(self._finish(outcome))

    async def _finish(self, outcome: Outcome) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            while self._pending:
                await self._post_batch()
            result = ResultRequest(
                state=outcome.state, exit_code=outcome.exit_code,
                last_seq=self._seq, reason=outcome.reason,
            )  # fmt: skip
            await self._post(TASK_RESULT, result, TaskView)
        except CommunicationError as exc:
            logger.error("could not report task {}: {}", self._task_id, exc)

    async def _flush_forever(self) -> None:
        try:
            while True:
                await self._has_lines.wait()
                self._has_lines.clear()
                while self._pending:
                    await self._post_batch()
        except CommunicationError as exc:
            logger.error("could not stream output of task {}: {}", self._task_id, exc)

    async def _post_batch(self) -> None:
        batch = self._pending[:MAX_EVENTS_PER_BATCH]
        answer = await self._post(TASK_EVENTS, EventsRequest(events=batch), EventsResponse)
        self._pending = [e for e in self._pending if e.seq > answer.acked_seq]
        if answer.cancel:
            self._on_cancel("cancelled on the server")

    async def _post(
        self, route: str, body: EventsRequest | ResultRequest, answer_type: type[A]
    ) -> A:
        path = task_path(route, self._task_id)
        async for attempt in retrying(
            f"reporting task {self._task_id}", self._stop, self._max_backoff
        ):
            with attempt:
                return await self._client.post(path, body, answer_type)
        raise AssertionError("unreachable: retrying re-raises its last error")
