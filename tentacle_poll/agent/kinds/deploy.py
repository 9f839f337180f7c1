"""Deploy and roll back a package: fetch (verified, cached), extract safely into a new release
folder, run the package's PreDeploy, Deploy and PostDeploy scripts there, switch ``current``,
keep the last N releases. A failing script leaves ``current`` on the previous release.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tentacle_poll.agent.connections.transport import Channel
from tentacle_poll.agent.kinds.packages import PackageCache
from tentacle_poll.exceptions import CommunicationError, TaskExecutionError
from tentacle_poll.protocol.models import DeploySpec, RollbackSpec, ScriptSpec, Variable
from tentacle_poll.workers import Outcome, OutputSink, ScriptJob, ScriptWorker
from tentacle_poll.workers.cgroups import TaskCgroup
from tentacle_poll.workers.extract import Limits, extract
from tentacle_poll.workers.releases import Releases

PHASES_BEFORE_SWITCH = ("PreDeploy", "Deploy")
PHASES_AFTER_SWITCH = ("PostDeploy",)
SCRIPT_KINDS = {".sh": "bash", ".py": "python", ".ps1": "pwsh"}


@dataclass(frozen=True)
class DeployContext:
    client: Channel
    cache: PackageCache
    applications_root: Path
    limits: Limits
    workspace: Path
    task_id: str
    variables: list[Variable]
    grace_seconds: float
    max_output_bytes: int
    timeout_seconds: float | None = None
    # A fresh cgroup for each script the deploy runs (None: process groups only).
    cgroup: Callable[[], TaskCgroup | None] = lambda: None


class DeployJob:
    """Runs a deploy or rollback task; ``cancel`` reaches the script that is running."""

    def __init__(
        self, spec: DeploySpec | RollbackSpec, context: DeployContext, emit: OutputSink
    ) -> None:
        self._spec = spec
        self._context = context
        self._emit = emit
        self._worker: ScriptWorker | None = None
        self._cancel_reason: str | None = None

    def cancel(self, reason: str) -> None:
        self._cancel_reason = self._cancel_reason or reason
        if self._worker is not None:
            self._worker.cancel(reason)

    async def run(self) -> Outcome:
        assert self._spec.environment is not None, "the server fills in the environment"
        releases = Releases(
            self._context.applications_root, self._spec.environment, self._spec.package_id
        )
        for repaired in releases.repair():  # what a crashed deploy left
            self._say(f"repaired {releases.folder}: {repaired}")
        try:
            async with asyncio.timeout(self._context.timeout_seconds):
                if isinstance(self._spec, DeploySpec):
                    return await self._deploy(self._spec, releases)
                return await self._rollback(self._spec, releases)
        except TimeoutError:
            return Outcome(
                "timed_out", reason=f"timed out after {self._context.timeout_seconds:g} s"
            )
        except (TaskExecutionError, CommunicationError) as exc:
            return Outcome.failed(str(exc))
        finally:
            releases.end()
            releases.forget_if_empty()

    async def _deploy(self, spec: DeploySpec, releases: Releases) -> Outcome:
        assert spec.sha256 is not None and spec.size is not None and spec.format is not None
        cached = self._context.cache.path_of(spec.sha256).exists()
        what = "using the cached" if cached else f"downloading ({spec.size} bytes)"
        self._say(f"{what} package {spec.package_id} {spec.version}, sha256 {spec.sha256}")
        cache = self._context.cache
        with cache.in_use(spec.sha256):
            archive = await cache.fetch(self._context.client, spec.sha256, spec.size)
            for pruned in cache.prune():
                self._say(f"removed the cached package {pruned} (package_cache_mb)")
            folder = releases.new_folder(spec.version)
            releases.begin(folder, new=True)
            count = await asyncio.to_thread(
                extract, archive, spec.format, folder, self._context.limits
            )
        self._say(f"extracted {count} files into {folder}")
        outcome = await self._activate(folder, releases, spec.version)
        if outcome.state != "succeeded":
            shutil.rmtree(folder, ignore_errors=True)  # a failed release is not kept
            return outcome
        for removed in releases.retain(spec.retain_releases):
            self._say(f"removed the old release {removed}")
        return outcome

    async def _rollback(self, spec: RollbackSpec, releases: Releases) -> Outcome:
        folder = releases.find(spec.version) if spec.version else releases.previous()
        self._say(f"rolling back {spec.package_id} to {folder.name}")
        releases.begin(folder, new=False)
        return await self._activate(folder, releases, releases.version_of(folder.name))

    async def _activate(self, folder: Path, releases: Releases, version: str) -> Outcome:
        """Scripts before the switch, the switch, scripts after it (switching back on failure)."""
        outcome = await self._run_phases(folder, PHASES_BEFORE_SWITCH, version)
        if outcome.state != "succeeded":
            return outcome
        previous = releases.current()
        releases.switch(folder)
        self._say(f"current -> {folder.name}")
        outcome = await self._run_phases(folder, PHASES_AFTER_SWITCH, version)
        if outcome.state != "succeeded":
            if previous is not None:
                releases.switch(previous)
                self._say(f"current switched back to {previous.name}")
            return outcome
        releases.record(folder, version)
        return outcome

    async def _run_phases(self, folder: Path, phases: tuple[str, ...], version: str) -> Outcome:
        for phase in phases:
            for script in sorted(folder.glob(f"{phase}.*")):
                if script.suffix not in SCRIPT_KINDS:
                    continue
                if script.suffix == ".ps1" and shutil.which("pwsh") is None:
                    self._say(f"skipping {script.name}: PowerShell (pwsh) is not installed")
                    continue
                if self._cancel_reason is not None:
                    return Outcome("cancelled", reason=self._cancel_reason)
                self._say(f"running {script.name}")
                outcome = await self._run_script(script, folder, version)
                if outcome.state != "succeeded":
                    return Outcome(
                        outcome.state, outcome.exit_code, f"{script.name}: {outcome.reason}"
                    )
        return Outcome("succeeded", 0)

    async def _run_script(self, script: Path, folder: Path, version: str) -> Outcome:
        spec = ScriptSpec(
            syntax=SCRIPT_KINDS[script.suffix],
            body=script.read_text(), working_directory=str(folder),
        )  # fmt: skip
        job = ScriptJob(
            task_id=self._context.task_id, script=spec,
            workspace=self._context.workspace / script.stem,
            variables=[*self._context.variables, *self._release_variables(folder, version)],
            grace_seconds=self._context.grace_seconds,
            max_output_bytes=self._context.max_output_bytes, cgroup=self._context.cgroup(),
        )  # fmt: skip
        self._worker = ScriptWorker(job, self._emit)
        if self._cancel_reason is not None:
            self._worker.cancel(self._cancel_reason)
        return await self._worker.run()

    def _release_variables(self, folder: Path, version: str) -> list[Variable]:
        values = {
            "TENTACLE_RELEASE_FOLDER": str(folder),
            "TENTACLE_PACKAGE_ID": self._spec.package_id,
            "TENTACLE_PACKAGE_VERSION": version,
            "TENTACLE_ENVIRONMENT": self._spec.environment or "",
        }
        return [Variable(name=name, value=value) for name, value in values.items()]

    def _say(self, text: str) -> None:
        self._emit("system", text)
