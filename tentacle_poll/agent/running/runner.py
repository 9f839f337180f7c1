"""Runs one delivered envelope: parse, journal, accept, wait for isolation, run, report.

The journal steps make execution at-most-once: "accepted" is durable before the server hears
of it, "started" before the script is spawned; see ``journal.py``. Never raises.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from tentacle_poll.agent.connections.backoff import retrying
from tentacle_poll.agent.connections.transport import Channel
from tentacle_poll.agent.kinds.deploy import DeployContext, DeployJob
from tentacle_poll.agent.kinds.files import FileJob
from tentacle_poll.agent.kinds.health import HealthJob
from tentacle_poll.agent.kinds.packages import PackageCache
from tentacle_poll.agent.running.disk import HomeSpace
from tentacle_poll.agent.running.isolation import IsolationMutexes, IsolationTimeout
from tentacle_poll.agent.running.journal import Journal, Step, delivered_step
from tentacle_poll.agent.running.reporter import TaskReporter
from tentacle_poll.agent.running.spool import Spool
from tentacle_poll.exceptions import CommunicationError, LeaseLost, ProtocolError
from tentacle_poll.logs import hide_secret
from tentacle_poll.protocol.codec import decode_object
from tentacle_poll.protocol.models import (
    AcceptRequest,
    AcceptResponse,
    Envelope,
    ResultRequest,
    TaskSpec,
)
from tentacle_poll.protocol.routes import TASK_ACCEPT, task_path
from tentacle_poll.workers import Outcome, ScriptJob, ScriptWorker, Worker
from tentacle_poll.workers.cgroups import CgroupRoot, TaskCgroup, describe
from tentacle_poll.workers.extract import Limits
from tentacle_poll.workers.process_group import group_record

ACCEPT_PATIENCE_SECONDS = 20.0


@dataclass(frozen=True)
class RunnerContext:
    client: Channel
    journal: Journal
    spool: Spool
    mutexes: IsolationMutexes
    work_folder: Path
    grace_seconds: float
    max_backoff: float
    max_output_bytes: int
    max_envelope_bytes: int
    stop_reporting: asyncio.Event
    packages: PackageCache
    applications_root: Path
    extract_limits: Limits
    identity_folder: Path
    free_slots: Callable[[], int]
    file_roots: list[Path]
    home_space: HomeSpace
    cgroups: CgroupRoot | None = None  # None: process groups only
    unregistered_give_up_seconds: float = 300.0


class TaskRunner:
    def __init__(self, envelope: Envelope, context: RunnerContext) -> None:
        self.task_id = envelope.task_id
        self._envelope = envelope
        self._context = context
        self._worker: Worker | None = None
        self._cancel_reason: str | None = None
        self._reporter = TaskReporter(
            context.client,
            context.spool.task(envelope.task_id),
            context.stop_reporting,
            context.max_backoff,
            on_cancel=self.cancel,
        )

    def cancel(self, reason: str) -> None:
        self._cancel_reason = self._cancel_reason or reason
        if self._worker is not None:
            self._worker.cancel(reason)

    async def run(self) -> None:
        started = time.monotonic()
        try:
            spec = self._parse()
        except ProtocolError as exc:
            await self._report(Outcome.failed(f"malformed or unsupported task: {exc}"))
            return
        if not await self._accept():
            return
        logger.bind(event="task_started").info("task {} started: {}", self.task_id, spec.kind)
        try:
            outcome = await self._run_isolated(spec)
            if self._reporter.spool_failure is not None:  # stopped for want of disk space
                outcome = Outcome("failed", outcome.exit_code, self._reporter.spool_failure)
            await self._report(outcome)
        finally:
            self._reporter.close()  # also when cancelled outright at the third signal
        logger.bind(event="task_ended").info(
            "task {} {} in {:.2f} s{}",
            self.task_id,
            outcome.state,
            time.monotonic() - started,
            f" ({outcome.reason})" if outcome.reason else "",
        )

    async def give_back(self, reason: str) -> None:
        """Hands the task back unstarted (never accepted): the server queues it again."""
        logger.bind(event="task_given_back").warning(
            "task {} not started: {}; giving it back to the server", self.task_id, reason
        )
        try:
            await self._report(Outcome.failed(f"not started: {reason}"), requeue=True)
        finally:
            self._reporter.close()

    def _parse(self) -> TaskSpec:
        size = len(json.dumps(self._envelope.spec))
        if size > self._context.max_envelope_bytes:
            limit = self._context.max_envelope_bytes
            raise ProtocolError(f"the envelope is {size} bytes, over this agent's limit of {limit}")
        spec = decode_object(TaskSpec, self._envelope.spec)
        for variable in spec.variables:
            if variable.sensitive:
                hide_secret(variable.value)
        return spec

    async def _accept(self) -> bool:
        """Journal, then tell the server, before anything starts. False: do not run."""
        try:
            self._journal("accepted")
        except OSError as exc:  # no durable accept, no start: the server gets the task back
            reason = f"not started: cannot write the journal ({exc.strerror or exc})"
            logger.error("task {} {}; giving it back to the server", self.task_id, reason)
            await self._report(Outcome.failed(reason), requeue=True)
            return False
        try:
            await self._post_accept()
        except LeaseLost:
            logger.warning("task {} not started: the server moved its lease on", self.task_id)
            self._journal("dropped")
            return False
        except CommunicationError as exc:
            reason = f"not started: the server did not confirm the accept ({exc})"
            logger.warning("task {} {}; giving it back to the server", self.task_id, reason)
            await self._report(Outcome.failed(reason), requeue=True)
            return False
        return True

    async def _post_accept(self) -> None:
        # Accept is idempotent on the server, so a lost answer is simply asked again.
        give_up = asyncio.Event()
        asyncio.get_running_loop().call_later(ACCEPT_PATIENCE_SECONDS, give_up.set)
        path = task_path(TASK_ACCEPT, self.task_id)
        async for attempt in retrying(f"accepting task {self.task_id}", give_up, 1.0):
            with attempt:
                await self._context.client.post(path, AcceptRequest(), AcceptResponse)

    async def _run_isolated(self, spec: TaskSpec) -> Outcome:
        self._reporter.start_streaming()
        isolation = self._context.mutexes.hold(
            spec.isolation_mutex,
            spec.isolation,
            self.task_id,
            spec.isolation_timeout_seconds,
            say=lambda text: self._reporter.line("system", text),
        )
        try:
            async with isolation:
                return await self._execute(spec)
        except IsolationTimeout as exc:
            return Outcome.failed(str(exc))

    async def _execute(self, spec: TaskSpec) -> Outcome:
        if self._cancel_reason is not None:
            return Outcome("cancelled", reason=f"{self._cancel_reason} before it started")
        workspace = self._context.work_folder / self.task_id
        self._worker = self._worker_for(spec, workspace)
        try:
            self._journal("started")
        except OSError as exc:  # not durable: a restart would count it never started
            return Outcome.failed(f"not started: cannot write the journal ({exc.strerror})")
        try:
            return await self._worker.run()
        finally:
            shutil.rmtree(workspace, ignore_errors=True)

    def _worker_for(self, spec: TaskSpec, workspace: Path) -> Worker:
        if spec.script is not None:
            job = ScriptJob(
                task_id=self.task_id,
                script=spec.script,
                workspace=workspace,
                variables=list(spec.variables),
                timeout_seconds=spec.timeout_seconds,
                grace_seconds=self._context.grace_seconds,
                max_output_bytes=self._context.max_output_bytes,
                on_spawn=self._record_process_group,
                cgroup=self._task_cgroup(),
            )
            return ScriptWorker(job, self._reporter.line)
        transfer = spec.send_file or spec.fetch_file
        if transfer is not None:
            context = self._context
            return FileJob(transfer, context.client, context.packages, context.file_roots,
                           self.task_id, self._reporter.line)  # fmt: skip
        if spec.health is not None:
            context = self._context
            return HealthJob(context.applications_root, context.identity_folder, context.free_slots,
                             context.home_space, describe(context.cgroups),
                             self._reporter.line)  # fmt: skip
        payload = spec.deploy or spec.rollback
        assert payload is not None  # TaskSpec validates that the kind's payload is set
        deploy = DeployContext(
            client=self._context.client, cache=self._context.packages,
            applications_root=self._context.applications_root,
            limits=self._context.extract_limits, workspace=workspace, task_id=self.task_id,
            variables=list(spec.variables), grace_seconds=self._context.grace_seconds,
            max_output_bytes=self._context.max_output_bytes, timeout_seconds=spec.timeout_seconds,
            cgroup=self._task_cgroup,
        )  # fmt: skip
        return DeployJob(payload, deploy, self._reporter.line)

    def _task_cgroup(self) -> TaskCgroup | None:
        cgroups = self._context.cgroups
        return cgroups.for_task(self.task_id) if cgroups is not None else None

    async def _report(self, outcome: Outcome, requeue: bool = False) -> None:
        """``requeue``: the task never started here; the server is to queue it again."""
        result = ResultRequest(state=outcome.state, exit_code=outcome.exit_code, last_seq=0,
                               reason=outcome.reason, requeue=requeue)  # fmt: skip
        self._reporter.spool_result(result)
        self._journal("finished")
        if await self._reporter.deliver():
            self._journal(delivered_step(result))

    def _journal(self, step: Step) -> None:
        """Records the step; "accepted" and "started" must be written (they raise): a later step
        lost to a full disk means at worst a result reported twice after a restart, never a
        rerun."""
        try:
            self._context.journal.record(self.task_id, step, self._context.client.url)
        except OSError as exc:
            if step in ("accepted", "started"):
                raise
            logger.error("task {}: cannot journal {!r} ({})", self.task_id, step, exc.strerror)

    def _record_process_group(self, pgid: int) -> None:
        journal, server = self._context.journal, self._context.client.url
        journal.record(self.task_id, "started", server, process_group=group_record(pgid))
