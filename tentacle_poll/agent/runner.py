"""Runs one delivered envelope: parse, accept, run in a worker, report. Never raises."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from tentacle_poll.agent.reporter import TaskReporter
from tentacle_poll.agent.transport import CommsClient
from tentacle_poll.exceptions import CommunicationError, LeaseLost, ProtocolError
from tentacle_poll.logs import hide_secret
from tentacle_poll.protocol.codec import decode_object
from tentacle_poll.protocol.models import AcceptRequest, AcceptResponse, Envelope, TaskSpec
from tentacle_poll.protocol.routes import TASK_ACCEPT, task_path
from tentacle_poll.workers import Outcome, ScriptJob, ScriptWorker


@dataclass(frozen=True)
class RunnerContext:
    client: CommsClient
    work_folder: Path
    grace_seconds: float
    max_backoff: float
    stop_reporting: asyncio.Event


class TaskRunner:
    def __init__(self, envelope: Envelope, context: RunnerContext) -> None:
        self.task_id = envelope.task_id
        self._envelope = envelope
        self._context = context
        self._worker: ScriptWorker | None = None
        self._cancel_reason: str | None = None
        self._reporter = TaskReporter(
            context.client, envelope.task_id, context.stop_reporting, context.max_backoff,
            on_cancel=self.cancel,
        )  # fmt: skip

    def cancel(self, reason: str) -> None:
        self._cancel_reason = self._cancel_reason or reason
        if self._worker is not None:
            self._worker.cancel(reason)

    async def run(self) -> None:
        started = time.monotonic()
        try:
            spec = decode_object(TaskSpec, self._envelope.spec)
        except ProtocolError as exc:
            await self._reporter.finish(Outcome.failed(f"malformed or unsupported task: {exc}"))
            return
        for variable in spec.variables:
            if variable.sensitive:
                hide_secret(variable.value)
        if not await self._accept():
            return
        outcome = await self._execute(spec)
        await self._reporter.finish(outcome)
        logger.info(
            "task {} {} in {:.2f} s{}", self.task_id, outcome.state, time.monotonic() - started,
            f" ({outcome.reason})" if outcome.reason else "",
        )  # fmt: skip

    async def _accept(self) -> bool:
        """Tell the server before starting anything; a lost lease means: do not run."""
        path = task_path(TASK_ACCEPT, self.task_id)
        try:
            await self._context.client.post(path, AcceptRequest(), AcceptResponse)
        except LeaseLost:
            logger.warning("task {} was not started: the server moved its lease on", self.task_id)
            return False
        except CommunicationError as exc:
            logger.warning("task {} was not started: accept failed ({})", self.task_id, exc)
            return False
        return True

    async def _execute(self, spec: TaskSpec) -> Outcome:
        workspace = self._context.work_folder / self.task_id
        job = ScriptJob(
            task_id=self.task_id, script=spec.script, workspace=workspace,
            variables=list(spec.variables), timeout_seconds=spec.timeout_seconds,
            grace_seconds=self._context.grace_seconds,
        )  # fmt: skip
        self._worker = ScriptWorker(job, self._reporter.line)
        if self._cancel_reason is not None:
            self._worker.cancel(self._cancel_reason)
        self._reporter.start()
        try:
            return await self._worker.run()
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
