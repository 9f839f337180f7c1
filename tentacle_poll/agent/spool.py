"""The agent's spool: each task's output lines and result on disk until the server has them.

    <home>/spool/<task id>/events.jsonl   one masked line per output line, appended
    <home>/spool/<task id>/result.json    the final result, written atomically

A task's folder is removed only after the server acknowledged its result. Lines are masked by
the worker before they get here, so the spool never holds a secret.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

from tentacle_poll.protocol.codec import encode
from tentacle_poll.protocol.models import Event, ResultRequest
from tentacle_poll.workers.process_group import group_of_record

EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"
PROCESS_GROUP_FILE = "pgid"


class TaskSpool:
    def __init__(self, folder: Path, on_bytes: Spool) -> None:
        self.folder = folder
        self._owner = on_bytes
        self._events: IO[bytes] | None = None

    @property
    def task_id(self) -> str:
        return self.folder.name

    def append(self, event: Event) -> bytes:
        """Appends the event; returns its JSON, which is also what goes on the wire."""
        if self._events is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._events = open(self.folder / EVENTS_FILE, "ab")  # noqa: SIM115
        encoded = encode(event)
        self._events.write(encoded + b"\n")
        self._owner.used_bytes += len(encoded) + 1
        return encoded

    def close(self) -> None:
        """Closes the lines file (lines appended later reopen it)."""
        if self._events is not None:
            self._events.close()
            self._events = None

    def flush(self) -> None:
        """Hands buffered lines to the OS: they then survive the agent being killed."""
        if self._events is not None:
            self._events.flush()

    def events(self) -> list[Event]:
        path = self.folder / EVENTS_FILE
        if not path.exists():
            return []
        events = []
        for line in path.read_bytes().splitlines():
            try:
                events.append(Event.model_validate_json(line))
            except ValueError:
                continue  # the last line may be torn by a crash
        return events

    def process_group(self) -> int | None:
        """The process group earlier agents recorded here (the journal holds it now)."""
        try:
            return group_of_record((self.folder / PROCESS_GROUP_FILE).read_text())
        except OSError:
            return None

    def write_result(self, result: ResultRequest) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._events is not None:  # no line comes after the result
            self._events.flush()
            os.fsync(self._events.fileno())
            self.close()
        temporary = self.folder / (RESULT_FILE + ".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(result.model_dump_json())
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.folder / RESULT_FILE)

    def result(self) -> ResultRequest | None:
        path = self.folder / RESULT_FILE
        return ResultRequest.model_validate_json(path.read_text()) if path.exists() else None

    def remove(self) -> None:
        self.close()
        self._owner.used_bytes -= _folder_size(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)


class Spool:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self.used_bytes = _folder_size(folder)

    def task(self, task_id: str) -> TaskSpool:
        return TaskSpool(self.folder / task_id, self)

    def spooled_tasks(self) -> list[TaskSpool]:
        return [self.task(p.name) for p in sorted(self.folder.iterdir()) if p.is_dir()]

    @property
    def full(self) -> bool:
        return self.used_bytes >= self.max_bytes


def _folder_size(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
