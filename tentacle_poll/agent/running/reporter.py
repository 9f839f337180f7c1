"""Spools one task's output lines and result on disk, and streams them to the server.

Every line goes to the spool first, then to the server in sequence-numbered batches: an idle
stream sends each line at once, a busy one what piled up meanwhile, with up to two posts on the
way (a busy pipe's lines come as blocks, one event per read). The spool is removed only
once the server acknowledged the result; every post is idempotent (by seq, by task id), so a
retry after a lost answer duplicates nothing.

Memory is bounded whatever the server's pace: up to MEMORY_QUEUE_BYTES of unsent lines are also
kept in memory; past that, lines wait in the spool only and are read back from it in order
(``_spilled_from``), so a slow server or a busy follower costs disk, not RAM.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from loguru import logger

from tentacle_poll.agent.connections.backoff import retrying
from tentacle_poll.agent.connections.transport import Channel
from tentacle_poll.agent.running.spool import TaskSpool
from tentacle_poll.exceptions import CommunicationError, RequestRejected
from tentacle_poll.protocol.codec import encode
from tentacle_poll.protocol.models import (
    MAX_EVENT_CHARS,
    MAX_EVENTS_PER_BATCH,
    Event,
    EventsResponse,
    ResultRequest,
    TaskView,
)
from tentacle_poll.protocol.routes import TASK_EVENTS, TASK_RESULT, task_path
from tentacle_poll.workers.outcome import Stream

A = TypeVar("A", EventsResponse, TaskView)
# Bodies stay well under aiohttp's 1 MiB "large body blocks the event loop" threshold.
MAX_BATCH_BYTES = 512 * 1024
# Posts of one task's output on the way at once; the server stores each batch whole, in any
# order, and acknowledges lines only up to the first gap.
MAX_IN_FLIGHT = 2
REFUSED_FOR_GOOD = {404, 409}  # no such task (deleted), or it ended otherwise
MEMORY_QUEUE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class _Pending:
    """A spooled event not yet acknowledged, with the JSON the spool wrote for it (encoded
    once: at 100 MB of output, encoding is a large part of the agent's work)."""

    event: Event
    encoded: bytes


def _take_batch(unsent: deque[_Pending]) -> list[_Pending]:
    """Takes the oldest unsent events: at most MAX_EVENTS_PER_BATCH of them and about
    MAX_BATCH_BYTES of JSON (always at least one)."""
    batch = [unsent.popleft()]
    size = len(batch[0].encoded)
    while unsent and len(batch) < MAX_EVENTS_PER_BATCH:
        size += len(unsent[0].encoded) + 1
        if size > MAX_BATCH_BYTES:
            break
        batch.append(unsent.popleft())
    return batch


def _events_body(batch: list[_Pending]) -> bytes:
    """An EventsRequest's JSON, assembled from the events' JSON."""
    return b'{"events":[' + b",".join(item.encoded for item in batch) + b"]}"


def _split_in_two(text: str) -> tuple[str, str]:
    """Lines that fit one event, and the rest; a single line too long for an event is cut
    (only masking can make one: the worker cuts lines far shorter)."""
    cut = text.rfind("\n", 0, MAX_EVENT_CHARS)
    if cut < 0:
        return text[:MAX_EVENT_CHARS], text[MAX_EVENT_CHARS:]
    return text[:cut], text[cut + 1 :]


def _ignore_cancel(_: str) -> None:
    return None


def _last_seq(spool: TaskSpool) -> int:
    """The last sequence number an earlier life spooled, read in bounded chunks."""
    last, offset = 0, 0
    while True:
        read, offset_after = spool.read_events(offset, MAX_BATCH_BYTES)
        if not read:
            return last
        last, offset = read[-1][0].last_seq, offset_after


class TaskReporter:
    def __init__(
        self,
        client: Channel,
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
        self._unsent: deque[_Pending] = deque()
        self._queued_bytes = 0
        # Lines from this spool offset on are in the spool only (None: all are queued here);
        # lines an earlier life spooled are read back from the start.
        self._spilled_from: int | None = 0 if spool.size() else None
        self.seq = _last_seq(spool)
        self._has_lines = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._last_lines_queued = False
        # Set when the spool could not take a line (a full disk): the task is stopped, its
        # lines and result then go to the server from memory.
        self.spool_failure: str | None = None
        self._result: ResultRequest | None = None

    @property
    def task_id(self) -> str:
        return self._spool.task_id

    @property
    def queued_bytes(self) -> int:
        """Unsent lines held in memory (the rest wait in the spool only)."""
        return self._queued_bytes

    def close(self) -> None:
        self._spool.close()

    def start_streaming(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name=f"flush-{self.task_id}")

    def line(self, stream: Stream, text: str, continues: bool = False) -> None:
        """Spools and queues one line, or a block of lines joined by newlines; ``continues``:
        its last line goes on in the next block."""
        if len(text) > MAX_EVENT_CHARS:  # a block that masking made longer than an event
            first, rest = _split_in_two(text)
            self.line(stream, first, continues=len(first) + len(rest) == len(text))  # mid-line
            self.line(stream, rest, continues)
            return
        lines = text.count("\n") + 1
        # Built without validation: the fields are right by construction (the server validates).
        event = Event.model_construct(
            seq=self.seq + 1, stream=stream, text=text, ts=time.time(), lines=lines,
            continues=continues,
        )  # fmt: skip
        self.seq = event.last_seq
        self._queue(event)
        self._has_lines.set()

    def _queue(self, event: Event) -> None:
        """Spools the event, and keeps it in memory too while there is room and no earlier
        line waits in the spool only."""
        encoded = self._spooled(event)
        spilled = self._spilled_from is not None
        if self.spool_failure is None and (spilled or self._queued_bytes > MEMORY_QUEUE_BYTES):
            if not spilled:  # this line starts the part kept in the spool only
                self._spilled_from = self._spool.size() - len(encoded) - 1
            return
        self._unsent.append(_Pending(event, encoded))
        self._queued_bytes += len(encoded)

    def _spooled(self, event: Event) -> bytes:
        """The event's JSON, written to the spool if the disk lets it."""
        if self.spool_failure is None:
            try:
                return self._spool.append(event)
            except OSError as exc:
                self._spool_failed(exc)
        return encode(event)

    def _refill(self) -> None:
        """Reads the next lines that wait in the spool only into the memory queue."""
        assert self._spilled_from is not None
        read, self._spilled_from = self._spool.read_events(self._spilled_from, MAX_BATCH_BYTES)
        self._unsent.extend(_Pending(event, encoded) for event, encoded in read)
        self._queued_bytes += sum(len(encoded) for _, encoded in read)
        if self._spilled_from >= self._spool.size():
            self._spilled_from = None  # caught up: new lines queue in memory again

    def _spool_failed(self, exc: OSError) -> None:
        self.spool_failure = (
            f"cannot write the task's output to {self._spool.folder}: "
            f"{exc.strerror or exc} (free space on the agent home's disk)"
        )
        logger.error("task {}: {}; stopping it", self.task_id, self.spool_failure)
        self._on_cancel(self.spool_failure)

    def spool_result(self, result: ResultRequest) -> None:
        """Makes the result durable; from here on a restart still delivers it. On a full
        disk it is kept in memory and sent from there (a restart would then lose it)."""
        self._result = result.model_copy(update={"last_seq": self.seq})
        try:
            self._spool.write_result(self._result)
        except OSError as exc:
            logger.error("task {}: cannot spool its result ({}); sending it from memory",
                         self.task_id, exc.strerror or exc)  # fmt: skip

    async def deliver(self) -> bool:
        """Sends the remaining lines and the spooled result; True once the server has both.

        Shielded: cancelling the caller cannot interrupt a post half-way and lose its answer.
        """
        return await asyncio.shield(self._deliver())

    async def _deliver(self) -> bool:
        if self._flusher is not None:
            # Let it finish the batches on their way: cancelled mid-post, a batch would close
            # its connection (a new TLS handshake) and be sent again.
            self._last_lines_queued = True
            self._has_lines.set()
            await self._flusher
        result = self._result or self._spool.result()
        assert result is not None, "spool_result() comes before deliver()"
        try:
            await self._send_all()
            await self._post(TASK_RESULT, result, TaskView)
        except RequestRejected as exc:
            if exc.status not in REFUSED_FOR_GOOD:
                logger.error("task {} stays spooled, not yet reported: {}", self.task_id, exc)
                return False
            # The server will never take it (the task was deleted with its target, or ended
            # otherwise): keeping it would retry it, and log this, at every start.
            logger.warning("task {}: the server refused its result for good ({}); dropped it",
                           self.task_id, exc)  # fmt: skip
        except CommunicationError as exc:
            logger.error("task {} stays spooled, not yet reported: {}", self.task_id, exc)
            return False
        self._spool.remove()
        return True

    async def _flush_forever(self) -> None:
        try:
            while not self._last_lines_queued:
                await self._has_lines.wait()
                self._has_lines.clear()
                await self._send_all()
        except CommunicationError as exc:
            logger.warning("output of task {} waits in the spool: {}", self.task_id, exc)
        except Exception:  # a bug here must show, and the lines still go with the result
            logger.exception("streaming the output of task {} failed", self.task_id)

    async def _send_all(self) -> None:
        """Posts every queued event, MAX_IN_FLIGHT batches at a time: one travels while the
        server stores the previous one. Raises CommunicationError; what was not answered is
        queued again."""
        posts: set[asyncio.Task[None]] = set()
        try:
            while self._unsent or posts or self._spilled_from is not None:
                while len(posts) < MAX_IN_FLIGHT and self._has_unsent():
                    batch = _take_batch(self._unsent)
                    self._queued_bytes -= sum(len(item.encoded) for item in batch)
                    posts.add(asyncio.create_task(self._post_batch(batch)))
                if not posts:
                    break
                done, posts = await asyncio.wait(posts, return_when=asyncio.FIRST_COMPLETED)
                for post in done:
                    post.result()
        finally:
            for post in posts:
                post.cancel()
            await asyncio.gather(*posts, return_exceptions=True)

    def _has_unsent(self) -> bool:
        if not self._unsent and self._spilled_from is not None:
            self._refill()
        return bool(self._unsent)

    async def _post_batch(self, batch: list[_Pending]) -> None:
        try:
            self._spool.flush()
        except OSError as exc:  # buffered lines that did not reach the disk: sent from memory
            if self.spool_failure is None:
                self._spool_failed(exc)
        try:
            answer = await self._post(TASK_EVENTS, _events_body(batch), EventsResponse)
        except BaseException:
            self._unsent = deque(sorted([*batch, *self._unsent], key=lambda p: p.event.seq))
            self._queued_bytes += sum(len(item.encoded) for item in batch)
            raise
        if answer.cancel:
            self._on_cancel("cancelled on the server")

    async def _post(self, route: str, body: bytes | ResultRequest, answer_type: type[A]) -> A:
        path = task_path(route, self.task_id)
        what = f"reporting task {self.task_id}"
        async for attempt in retrying(what, self._stop, self._max_backoff):
            with attempt:
                return await self._client.post(path, body, answer_type)
        raise AssertionError("unreachable: retrying re-raises its last error")
