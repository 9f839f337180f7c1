"""Spools one task's output lines and result on disk, and streams them to the server.

Every line goes to the spool first, then to the server in sequence-numbered batches: an idle
stream sends each line at once, a busy one sends what piled up while the previous post was in
flight. The spool is removed only once the server acknowledged the result; every post is
idempotent (by seq, by task id), so a retry after a lost answer duplicates nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from loguru import logger

from tentacle_poll.agent.backoff import retrying
from tentacle_poll.agent.spool import TaskSpool
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
from tentacle_poll.workers.outcome import Stream

A = TypeVar("A", EventsResponse, TaskView)
# Bodies stay well under aiohttp's 1 MiB "large body blocks the event loop" threshold.
MAX_BATCH_CHARS = 512 * 1024


def _next_batch(pending: list[Event]) -> list[Event]:
    """The oldest pending lines, at most MAX_EVENTS_PER_BATCH of them and about
    MAX_BATCH_CHARS of text (always at least one line)."""
    size = 0
    for count, event in enumerate(pending[:MAX_EVENTS_PER_BATCH]):
        size += len(event.text) + 64
        if size > MAX_BATCH_CHARS and count > 0:
            return pending[:count]
    return pending[:MAX_EVENTS_PER_BATCH]


def _ignore_cancel(_: str) -> None:
    return None


class TaskReporter:
    def __init__(
        self,
        client: CommsClient,
        spool: TaskSpool,
        stop: asyncio.Event,
        max_backoff: float,
        on_cancel: Callable[[str], None] = _ignore_cancel,
    ) -> None:
        self._client = client
        self._spool = spool
        self._stop = stop
        self._max_backoff = max_backoff
        self._on_cancel = on_cancel
        self._pending: list[Event] = spool.events()  # lines spooled by an earlier life
        self.seq = self._pending[-1].seq if self._pending else 0
        self._has_lines = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def task_id(self) -> str:
        return self._spool.task_id

    def close(self) -> None:
        self._spool.close()

    def start_streaming(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name=f"flush-{self.task_id}")

    def line(self, stream: Stream, text: str) -> None:
        self.seq += 1
        event = Event(seq=self.seq, stream=stream, text=text, ts=time.time())
        self._spool.append(event)
        self._pending.append(event)
        self._has_lines.set()

    def spool_result(self, result: ResultRequest) -> None:
        """Makes the result durable; from here on a restart still delivers it."""
        self._spool.write_result(result.model_copy(update={"last_seq": self.seq}))

    async def deliver(self) -> bool:
        """Sends the remaining lines and the spooled result; True once the server has both.

        Shielded: cancelling the caller cannot interrupt a post half-way and lose its answer.
        """
        return await asyncio.shield(self._deliver())

    async def _deliver(self) -> bool:
        if self._flusher is not None:
            self._flusher.cancel()
        result = self._spool.result()
        assert result is not None, "spool_result() comes before deliver()"
        try:
            while self._pending:
                await self._post_batch()
            await self._post(TASK_RESULT, result, TaskView)
        except CommunicationError as exc:
            logger.error("task {} stays spooled, not yet reported: {}", self.task_id, exc)
            return False
        self._spool.remove()
        return True

    async def _flush_forever(self) -> None:
        try:
            while True:
                await self._has_lines.wait()
                self._has_lines.clear()
                while self._pending:
                    await self._post_batch()
        except CommunicationError as exc:
            logger.warning("output of task {} waits in the spool: {}", self.task_id, exc)
        except Exception:  # a bug here must show, and the lines still go with the result
            logger.exception("streaming the output of task {} failed", self.task_id)

    async def _post_batch(self) -> None:
        self._spool.flush()
        batch = _next_batch(self._pending)
        answer = await self._post(TASK_EVENTS, EventsRequest(events=batch), EventsResponse)
        self._pending = [e for e in self._pending if e.seq > answer.acked_seq]
        if answer.cancel:
            self._on_cancel("cancelled on the server")

    async def _post(
        self, route: str, body: EventsRequest | ResultRequest, answer_type: type[A]
    ) -> A:
        path = task_path(route, self.task_id)
        what = f"reporting task {self.task_id}"
        async for attempt in retrying(what, self._stop, self._max_backoff):
            with attempt:
                return await self._client.post(path, body, answer_type)
        raise AssertionError("unreachable: retrying re-raises its last error")
