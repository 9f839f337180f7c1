"""File transfer tasks, confined to the agent's file roots: put a file from the server at a
path on the target, or send a file from the target to the server. Both report the SHA-256;
a received file is checked against it before it is moved into place (atomically)."""

from __future__ import annotations

import os
from pathlib import Path

from tentacle_poll.agent.connections.transport import Channel
from tentacle_poll.agent.kinds.packages import PackageCache, sha256_of
from tentacle_poll.exceptions import CommunicationError, TaskExecutionError
from tentacle_poll.protocol.models import FetchFileSpec, FileView, SendFileSpec
from tentacle_poll.protocol.routes import TASK_FILE, task_path
from tentacle_poll.workers import Outcome, OutputSink


def confined(path: str, roots: list[Path]) -> Path:
    """``path`` resolved (links followed), or TaskExecutionError when it is outside every root."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved == root.resolve() or resolved.is_relative_to(root.resolve()):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise TaskExecutionError(f"{path} is outside this agent's file roots ({allowed}); refused")


class FileJob:
    def __init__(
        self, spec: SendFileSpec | FetchFileSpec, client: Channel, cache: PackageCache,
        roots: list[Path], task_id: str, emit: OutputSink,
    ) -> None:  # fmt: skip
        self._spec, self._client, self._cache = spec, client, cache
        self._roots, self._task_id, self._emit = roots, task_id, emit

    def cancel(self, reason: str) -> None:
        """Transfers are short and safe to finish; nothing to interrupt."""

    async def run(self) -> Outcome:
        try:
            if isinstance(self._spec, SendFileSpec):
                return await self._receive(self._spec)
            return await self._send(self._spec)
        except (TaskExecutionError, CommunicationError) as exc:
            return Outcome.failed(str(exc))

    async def _receive(self, spec: SendFileSpec) -> Outcome:
        destination = confined(spec.destination, self._roots)
        if destination.exists() and not spec.overwrite:
            raise TaskExecutionError(f"{destination} exists; ask for overwrite to replace it")
        cached = await self._cache.fetch(self._client, spec.sha256, spec.size)  # verified
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(f".{destination.name}.incoming")
        _copy(cached, temporary)
        os.replace(temporary, destination)
        self._emit("stdout", f"wrote {destination} ({spec.size} bytes, sha256 {spec.sha256})")
        return Outcome("succeeded", 0)

    async def _send(self, spec: FetchFileSpec) -> Outcome:
        source = confined(spec.path, self._roots)
        if not source.exists():
            raise TaskExecutionError(f"{source} does not exist on this target")
        if not source.is_file():
            raise TaskExecutionError(f"{source} is not a file (a folder? fetch one file at a time)")
        digest = sha256_of(source)
        path = task_path(TASK_FILE, self._task_id)
        stored = await self._client.upload(path, source, FileView)
        if stored.sha256 != digest:
            raise TaskExecutionError(f"the server stored sha256 {stored.sha256}, not {digest}")
        self._emit("stdout", f"sent {source} ({stored.size} bytes, sha256 {digest})")
        return Outcome("succeeded", 0)


def _copy(source: Path, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(1024 * 1024):
            writer.write(chunk)
