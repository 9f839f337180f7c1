"""One long-poll loop per server node: keep exactly one poll outstanding, start what arrives.

A poll sent with no free slot can lease nothing (the server only leases into free slots), so
it is safe to abandon the moment a slot frees up and poll again at once: new work then waits
milliseconds, not a whole hold period.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from loguru import logger

from tentacle_poll import __version__
from tentacle_poll.agent.connections.backoff import retrying
from tentacle_poll.agent.connections.status import NodeStatus
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.running.memory import release_freed_memory
from tentacle_poll.agent.running.runner import RunnerContext, TaskRunner
from tentacle_poll.agent.running.slots import Slots
from tentacle_poll.exceptions import (
    AgentUnregistered,
    CertificateRejected,
    CommunicationError,
    RequestRejected,
)
from tentacle_poll.protocol.models import PollRequest, PollResponse
from tentacle_poll.protocol.routes import POLL

DEFAULT_HOLD_SECONDS = 25.0
# How long a poll sent with no free slot may take to come back once a slot frees (the server
# answers it when the result arrives) before it is abandoned, closing its connection.
SLOT_FREED_GRACE_SECONDS = 1.0


SHORT_OF_SPACE_HOLD = 5.0
# A certificate refused once may be a rotation caught half-way: give up only after a few.
MIN_REFUSALS = 3


class PollLoop:
    def __init__(
        self,
        client: CommsClient,
        slots: Slots,
        context: RunnerContext,
        stop_polling: asyncio.Event,
        runners: dict[str, TaskRunner],
        on_server_thumbprints: Callable[[CommsClient, list[str]], None],
        on_nodes: Callable[[CommsClient, list[str]], None] = lambda client, nodes: None,
        status: NodeStatus | None = None,
    ) -> None:
        self._status = status or NodeStatus()
        self._on_nodes = on_nodes
        self._on_server_thumbprints = on_server_thumbprints
        self._client = client
        self._slots = slots
        self._context = context
        self._stop = stop_polling
        self._runners = runners  # every server's, shared by the poll loops
        self._own: set[str] = set()  # the ones this server delivered
        self._hold = DEFAULT_HOLD_SECONDS
        self._no_work_said: str | None = None  # the reason last logged for taking no work

    async def run(self) -> None:
        logger.info("polling {}", self._client.name)
        while not self._stop.is_set():
            try:
                answer = await self._poll_with_backoff()
            except CommunicationError:
                continue  # only when stopping: retrying re-raises its last error then
            if answer is not None:
                self._handle(answer)

    async def _poll_with_backoff(self) -> PollResponse | None:
        async for attempt in retrying(
            f"polling {self._client.name}",
            self._stop,
            self._context.max_backoff,
            retry_on=(CommunicationError,),
        ):
            with attempt:
                if self._stop.is_set():
                    return None
                return await self._poll_counted()
        return None

    async def _poll_counted(self) -> PollResponse | None:
        try:
            answer = await self._poll_once()
        except CommunicationError as exc:
            self._status.failed(refused=_refuses_our_certificate(exc))
            self._give_up_if_unregistered(exc)
            raise
        if answer is not None:
            self._status.answered()
        return answer

    def _give_up_if_unregistered(self, exc: CommunicationError) -> None:
        refused_for, limit = self._status.refused_for(), self._context.unregistered_give_up_seconds
        if refused_for >= limit and self._status.failures_in_a_row >= MIN_REFUSALS:
            raise AgentUnregistered(
                f"{self._client.name} has refused this agent's certificate for {refused_for:.0f} s "
                f"({self._status.failures_in_a_row} polls; {exc}): its target was deleted there, "
                "or the server lost it. Stopped polling it. Register again with `tentacle-poll "
                "register ... --replace`, or remove this agent with `tentacle-poll deregister`"
            ) from exc

    async def _poll_once(self) -> PollResponse | None:
        """The answer, or None when the poll was abandoned (slot freed, or stopping)."""
        if self._client.reload_identity_if_changed():
            logger.info("using the rotated certificate for {}", self._client.name)
        free = self._free_slots()
        request = PollRequest(
            free_slots=free,
            running=self._slots.running_ids,
            agent_version=__version__,
            trusted_server_thumbprints=self._client.thumbprints,
            # Taking no work for want of space: poll again soon, to take work soon after.
            hold_seconds=SHORT_OF_SPACE_HOLD if self._no_work_said else None,
        )
        try:
            answer = await self._send(request)
        finally:
            self._slots.release(self._client.url)
        if (
            answer is not None
            and not request.free_slots
            and not (answer.envelopes or answer.cancels)
        ):
            # Answered early because a result came in: that task's slot frees in a moment,
            # and the next poll should offer it rather than none.
            await self._wait_for_a_slot()
        return answer

    async def _wait_for_a_slot(self) -> None:
        waiters = [asyncio.ensure_future(f) for f in (self._slots.wait_freed(), self._stop.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=SLOT_FREED_GRACE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _send(self, request: PollRequest) -> PollResponse | None:
        own_tasks = len(self._own)
        poll = asyncio.ensure_future(self._client.post(POLL, request, PollResponse, self._hold))
        interrupts: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stop.wait())]
        if request.free_slots == 0:
            interrupts.append(asyncio.ensure_future(self._slots.wait_freed()))
        try:
            await asyncio.wait([poll, *interrupts], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in interrupts:
                waiter.cancel()
        if not poll.done():
            return await self._answer_or_abandon(poll, len(self._own) < own_tasks)
        return poll.result()

    async def _answer_or_abandon(
        self, poll: asyncio.Future[PollResponse], freed_by_own_task: bool
    ) -> PollResponse | None:
        if freed_by_own_task and not self._stop.is_set():
            # This server answers a zero-slot poll once the result that freed the slot has
            # arrived (usually already): the answer keeps the connection for the next poll.
            await asyncio.wait([poll], timeout=SLOT_FREED_GRACE_SECONDS)
            if poll.done():
                return poll.result()
        # Safe to abandon: no free slot means nothing was leased; when stopping, a lease in
        # flight is never accepted and goes back to the queue when it expires.
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poll
        return None

    def _news(self, announced: list[str]) -> bool:
        """A next certificate was prepared, or the current one changed (rotation activated).
        Pins added by hand (`tentacle-poll trust`) stay while the current one is unchanged."""
        pins = self._client.thumbprints
        return announced[0] != pins[0] or not set(announced) <= set(pins)

    def _free_slots(self) -> int:
        """0 while the spool is at its limit or the home's disk is short of space (better to
        take no work than to fail it), said once per condition; else the slots to offer."""
        why = self._why_no_work()
        if why != self._no_work_said:
            if why is not None:
                logger.warning("{}", why)
            elif self._no_work_said is not None:
                logger.info("taking tasks again")
            self._no_work_said = why
        return 0 if why is not None else self._slots.reserve(self._client.url)

    def _why_no_work(self) -> str | None:
        if self._context.spool.full:
            return (
                f"the spool in {self._context.spool.folder} is at its size limit: taking no new "
                "tasks until the server has the spooled results"
            )
        return self._context.home_space.shortage()

    def _handle(self, answer: PollResponse) -> None:
        self._hold = answer.hold_seconds
        announced = list(answer.server_thumbprints)
        if announced and self._news(announced):
            self._on_server_thumbprints(self._client, announced)
        if answer.nodes:  # a cluster: its live nodes
            self._on_nodes(self._client, list(answer.nodes))
        for task_id in answer.cancels:
            if task_id in self._runners:
                self._runners[task_id].cancel("cancelled on the server")
        short = self._why_no_work()  # a poll sent earlier may bring work the disk cannot take
        for envelope in answer.envelopes:
            if self._slots.is_running(envelope.task_id) or self._context.journal.blocks(
                envelope.task_id
            ):
                logger.warning(
                    "task {} was delivered again; this agent accepted it before, so it "
                    "is not started again",
                    envelope.task_id,
                )
                continue
            runner = TaskRunner(envelope, self._context)
            self._runners[envelope.task_id] = runner
            self._own.add(envelope.task_id)
            task = asyncio.create_task(self._run(runner, short), name=f"task-{envelope.task_id}")
            self._slots.occupy(envelope.task_id, task)

    async def _run(self, runner: TaskRunner, give_back_because: str | None) -> None:
        # Every line logged while the task runs carries its id and server (JSON logs).
        context = logger.contextualize(task_id=runner.task_id, server=self._client.url)
        try:
            with context:
                if give_back_because is not None:
                    await runner.give_back(give_back_because)
                else:
                    await runner.run()
        finally:
            self._runners.pop(runner.task_id, None)
            self._own.discard(runner.task_id)
            release_freed_memory()  # a task's output may have grown the heap: give it back


def _refuses_our_certificate(exc: CommunicationError) -> bool:
    """The TLS handshake refused our certificate, or the server said it is not registered."""
    return isinstance(exc, CertificateRejected) or (
        isinstance(exc, RequestRejected) and exc.status == 403
    )
