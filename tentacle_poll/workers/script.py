"""Run one script task in a subprocess and supervise its whole process group, and its cgroup
where the agent may make one (``cgroups.py``: what a process group cannot hold)."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tentacle_poll.exceptions import UnsupportedTaskError
from tentacle_poll.protocol.models import MAX_LINE_CHARS, ScriptSpec, Variable
from tentacle_poll.workers.cgroups import TaskCgroup
from tentacle_poll.workers.lines import LineSplitter, pump_lines
from tentacle_poll.workers.masking import SecretMasker
from tentacle_poll.workers.outcome import Outcome, OutputSink, Stream
from tentacle_poll.workers.process_group import (
    end_group,
    group_alive,
    signal_group,
    watch_exit,
)

Pumps = asyncio.Future[Any]
ESCAPEES_KILLED = "sending SIGKILL to {count} processes that left the task's process group"
SCRIPT_SUFFIX = {"bash": ".sh", "sh": ".sh", "python": ".py", "pwsh": ".ps1", "cmd": ".cmd"}


@dataclass
class ScriptJob:
    task_id: str
    script: ScriptSpec
    workspace: Path
    variables: list[Variable] = field(default_factory=list)
    timeout_seconds: float | None = None
    grace_seconds: float = 10.0
    # How long stray processes may keep the output pipes open after the script has exited.
    straggler_seconds: float = 2.0
    # Output past this is read and discarded (the child must never block on a full pipe).
    max_output_bytes: int | None = None
    # Told the process group id right after the spawn (the agent keeps it to end orphans).
    on_spawn: Callable[[int], None] | None = None
    # The task's own cgroup: also holds children that left the process group (setsid).
    cgroup: TaskCgroup | None = None


class ScriptWorker:
    """Runs a ``ScriptJob``; ``cancel()`` may be called at any time, any number of times."""

    def __init__(self, job: ScriptJob, sink: OutputSink) -> None:
        self._job = job
        self._masker = SecretMasker(v.value for v in job.variables if v.sensitive)
        self._sink = sink
        self._cancelled = asyncio.Event()
        self._cancel_reason = ""
        self._output_bytes = 0
        self._cap_announced = False

    def cancel(self, reason: str) -> None:
        if not self._cancelled.is_set():
            self._cancel_reason = reason
            self._cancelled.set()

    async def run(self) -> Outcome:
        try:
            command = build_command(self._job.script, self._write_script())
            if self._job.cgroup is not None:
                command = self._job.cgroup.wrap(command)
            cwd = self._working_directory()
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=self._environment(),
                start_new_session=True,  # its own process group, so cancel reaches the tree
            )
        except (UnsupportedTaskError, OSError) as exc:
            if self._job.cgroup is not None:
                self._job.cgroup.remove()
            return Outcome.failed(f"could not start the script: {_describe(exc)}")
        if self._job.on_spawn is not None:
            self._job.on_spawn(process.pid)
        try:
            return await self._supervise(process)
        finally:
            await self._end_cgroup()
            if self._job.cgroup is not None:
                self._job.cgroup.remove()

    async def _end_cgroup(self, say: str = "") -> None:
        """Ends what is left in the task's cgroup, escaped children too (``say``: with a
        system line naming how many)."""
        cgroup = self._job.cgroup
        left = cgroup.pids() if cgroup is not None else []
        if cgroup is None or not left:
            return
        if say:
            self._emit("system", say.format(count=len(left)))
        await cgroup.kill_all()

    async def _supervise(self, process: asyncio.subprocess.Process) -> Outcome:
        assert process.stdout is not None and process.stderr is not None
        pumps = asyncio.gather(
            pump_lines(process.stdout, self._splitter("stdout")),
            pump_lines(process.stderr, self._splitter("stderr")),
        )
        exited = watch_exit(process.pid)
        try:
            stop_state = await self._wait_for_exit_or_stop(exited)
            if stop_state is not None:
                say = functools.partial(self._emit, "system")
                await end_group(process.pid, exited, self._job.grace_seconds, say)
                await self._end_cgroup(ESCAPEES_KILLED)
            returncode = await self._collect_exit(process, exited, pumps)
        except BaseException:
            # Cancelled from outside (agent shutting down hard): leave nothing running.
            signal_group(process.pid, signal.SIGKILL)
            raise
        finally:
            exited.cancel()
        return self._outcome(stop_state, returncode)

    async def _wait_for_exit_or_stop(self, exited: asyncio.Future[None]) -> str | None:
        """None when the script exited by itself, else "timed_out" or "cancelled"."""
        cancelled: asyncio.Future[Any] = asyncio.ensure_future(self._cancelled.wait())
        waiters: set[asyncio.Future[Any]] = {exited, cancelled}
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=self._job.timeout_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            cancelled.cancel()
        if exited in done:
            return None
        return "cancelled" if self._cancelled.is_set() else "timed_out"

    async def _collect_exit(
        self, process: asyncio.subprocess.Process, exited: asyncio.Future[None], pumps: Pumps
    ) -> int:
        """The script has exited: drain its output, end what it left behind, return its code."""
        if not await _finishes(pumps, self._job.straggler_seconds):
            self._emit("system", "processes the script started still hold its output; ending them")
            await end_group(process.pid, exited, grace_seconds=0)
            await self._end_cgroup(ESCAPEES_KILLED)
            if not await _finishes(pumps, self._job.grace_seconds):
                return self._abandon_output(process, pumps)
        returncode = await process.wait()
        if group_alive(process.pid):
            self._emit("system", "the script left processes running in the background; ending them")
            await end_group(process.pid, exited, grace_seconds=0)
        await self._end_cgroup(ESCAPEES_KILLED)
        return returncode

    def _abandon_output(self, process: asyncio.subprocess.Process, pumps: Pumps) -> int:
        # Only a process that left the group with setsid() can still hold the pipes here; a
        # cgroup would catch it, a process group cannot. Stop reading rather than hang the task.
        self._emit(
            "system", "a process outside the task's group still holds its output; ignoring it"
        )
        pumps.cancel()
        process._transport.close()  # type: ignore[attr-defined]  # no public way to drop pipes
        return process.returncode if process.returncode is not None else -1

    def _outcome(self, stop_state: str | None, returncode: int) -> Outcome:
        code, how = exit_code_and_words(returncode)
        if stop_state == "timed_out":
            reason = f"timed out after {self._job.timeout_seconds:g} s"
            return Outcome("timed_out", code, reason)
        if stop_state == "cancelled":
            return Outcome("cancelled", code, self._cancel_reason)
        if returncode == 0:
            return Outcome("succeeded", 0)
        return Outcome("failed", code, f"the script {how}")

    def _splitter(self, stream: Stream) -> LineSplitter:
        return LineSplitter(functools.partial(self._emit, stream), MAX_LINE_CHARS, self._masker)

    def _emit(self, stream: Stream, text: str, continues: bool = False) -> None:
        """``text`` is one line or a block of lines, masked already by the splitter (so the
        cap below cuts masked text); past the output cap only whole lines that still fit are
        kept, then one system line says the rest is discarded."""
        if stream == "system":
            text = self._masker.mask(text)
        fitting = text if stream == "system" else self._part_within_output_cap(text)
        if fitting is not None and continues and fitting == text:
            self._sink(stream, fitting, continues=True)  # keyword: plain sinks take two
        elif fitting is not None:
            self._sink(stream, fitting)
        if fitting != text and not self._cap_announced:
            self._cap_announced = True
            self._sink(
                "system",
                f"output limit of {self._job.max_output_bytes} bytes reached: further output "
                "of this task is discarded; the task keeps running",
            )

    def _part_within_output_cap(self, text: str) -> str | None:
        cap = self._job.max_output_bytes
        if cap is None:
            return text
        room = cap - self._output_bytes
        self._output_bytes += len(text) + 1
        if len(text) < room:
            return text
        fitting, newline, _ = text[: max(room, 0)].rpartition("\n")
        return fitting if newline else None

    def _write_script(self) -> Path:
        self._job.workspace.mkdir(parents=True, exist_ok=True)
        path = self._job.workspace.resolve() / f"script{SCRIPT_SUFFIX[self._job.script.syntax]}"
        path.write_text(self._job.script.body)
        return path

    def _working_directory(self) -> Path:
        wanted = self._job.script.working_directory
        if wanted is None:
            return self._job.workspace
        path = Path(wanted)
        if not path.is_dir():
            raise UnsupportedTaskError(f"working directory {wanted} does not exist on this agent")
        return path

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({v.name: v.value for v in self._job.variables})
        env["TENTACLE_TASK_ID"] = self._job.task_id
        env["PYTHONUNBUFFERED"] = "1"
        return env


async def _finishes(pumps: Pumps, seconds: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(pumps), seconds)
    except TimeoutError:
        return False
    return True


def build_command(script: ScriptSpec, path: Path) -> list[str]:
    if script.syntax == "python":
        return [sys.executable, "-u", str(path), *script.arguments]
    launcher = {
        "bash": ["bash"],
        "sh": ["sh"],
        "pwsh": ["pwsh", "-NoLogo", "-NoProfile", "-NonInteractive", "-File"],
        "cmd": ["cmd.exe", "/d", "/c"],
    }[script.syntax]
    if shutil.which(launcher[0]) is None:
        raise UnsupportedTaskError(f"{launcher[0]} is not installed on this agent")
    return [*launcher, str(path), *script.arguments]


def exit_code_and_words(returncode: int) -> tuple[int, str]:
    """A process killed by signal N is reported as shells and containers do: exit code 128+N,
    with the signal's name (asyncio gives -N)."""
    if returncode >= 0:
        return returncode, f"exited with code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return 128 + number, f"was killed by {name} ({number}): exit code {128 + number}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc)
