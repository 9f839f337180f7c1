"""The agent's spool: each task's output lines and result on disk until the server has them.

    <home>/spool/<task id>/events.jsonl   one masked event per line, appended; then the
                                          result, {"result": {...}}, fsync'd with them

A task's folder is removed only after the server acknowledged its result. Lines are masked by
the worker before they get here, so the spool never holds a secret. The result is a line of
the same file, not a file of its own: creating a file can cost a millisecond of kernel time on
a VM, more than the rest of what a tiny task does on disk. A result line torn by a crash does
not count (the task is then reported as interrupted). Spools of earlier agents
(``result.json``, ``pgid``) are read too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO

from loguru import logger

from tentacle_poll.protocol.codec import encode
from tentacle_poll.protocol.models import Event, ResultRequest
from tentacle_poll.workers.process_group import group_of_record

EVENTS_FILE = "events.jsonl"
RESULT_LINE = b'{"result":'
RESULT_LINE_MAX_BYTES = 64 * 1024  # a 4,096-character reason, every character escaped, fits
OLDER_RESULT_FILE = "result.json"  # where earlier agents kept the result
PROCESS_GROUP_FILE = "pgid"  # where earlier agents kept a running script's process group


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
        encoded = encode(event)
        self._write_line(encoded)
        return encoded

    def _write_line(self, encoded: bytes) -> None:
        if self._events is None:
            self._events = self._open_for_appending()
        self._events.write(encoded + b"\n")
        self._owner.used_bytes += len(encoded) + 1

    def _open_for_appending(self) -> IO[bytes]:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / EVENTS_FILE, "a+b")  # noqa: SIM115  (+: to read its end)
        end = handle.tell()
        if end and os.pread(handle.fileno(), 1, end - 1) != b"\n":
            handle.write(b"\n")  # after a line torn by a crash: the next one starts clean
        return handle

    def close(self) -> None:
        """Closes the lines file (lines appended later reopen it)."""
        events, self._events = self._events, None
        if events is not None:
            try:
                events.close()
            except OSError as exc:  # a full disk: the reporter sends those lines from memory
                logger.warning("spool {}: buffered lines not written ({})", self.folder, exc)

    def flush(self) -> None:
        """Hands buffered lines to the OS: they then survive the agent being killed."""
        if self._events is not None:
            self._events.flush()

    def events(self) -> list[Event]:
        events = []
        for line in self._lines():
            if not line.startswith(RESULT_LINE):
                with contextlib.suppress(ValueError):  # a line torn by a crash
                    events.append(Event.model_validate_json(line))
        return events

    def size(self) -> int:
        """Bytes of the lines file so far, buffered ones included."""
        if self._events is not None:
            return self._events.tell()
        try:
            return (self.folder / EVENTS_FILE).stat().st_size
        except FileNotFoundError:
            return 0

    def read_events(self, offset: int, max_bytes: int) -> tuple[list[tuple[Event, bytes]], int]:
        """Whole lines from ``offset`` on, about ``max_bytes`` of them, as (event, its JSON),
        and the offset after them: what the reporter sends when it keeps no copy in memory."""
        self.flush()
        try:
            with open(self.folder / EVENTS_FILE, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read(max_bytes)
                while chunk and b"\n" not in chunk and (more := handle.read(max_bytes)):
                    chunk += more  # a line longer than max_bytes: read on to its end
        except FileNotFoundError:
            return [], offset
        whole = chunk[: chunk.rfind(b"\n") + 1]
        return _parsed(whole.splitlines()), offset + len(whole)

    def _lines(self) -> list[bytes]:
        try:
            return (self.folder / EVENTS_FILE).read_bytes().splitlines()
        except FileNotFoundError:
            return []

    def process_group(self) -> int | None:
        """The process group earlier agents recorded here (the journal holds it now)."""
        try:
            return group_of_record((self.folder / PROCESS_GROUP_FILE).read_text())
        except OSError:
            return None

    def write_result(self, result: ResultRequest) -> None:
        """The result after the last line, both durable (fsync) when this returns."""
        self._write_line(RESULT_LINE + result.model_dump_json().encode() + b"}")
        assert self._events is not None
        self._events.flush()
        os.fsync(self._events.fileno())
        self.close()

    def result(self) -> ResultRequest | None:
        """The result, if the last line is one (a torn one is not): read from the file's end,
        as it follows every line of the task's output."""
        last = self._last_line()
        if last.startswith(RESULT_LINE):
            with contextlib.suppress(ValueError):
                return ResultRequest.model_validate_json(last[len(RESULT_LINE) : -1])
            return None
        older = self.folder / OLDER_RESULT_FILE
        return ResultRequest.model_validate_json(older.read_text()) if older.exists() else None

    def _last_line(self) -> bytes:
        try:
            with open(self.folder / EVENTS_FILE, "rb") as handle:
                handle.seek(max(handle.seek(0, os.SEEK_END) - RESULT_LINE_MAX_BYTES, 0))
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return b""
        return lines[-1] if lines else b""

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


def _parsed(lines: list[bytes]) -> list[tuple[Event, bytes]]:
    """Events of spooled lines (written by this agent: no validation needed), skipping the
    result line and lines torn by a crash."""
    parsed = []
    for line in lines:
        if line.startswith(RESULT_LINE):
            continue
        with contextlib.suppress(ValueError, TypeError):
            parsed.append((Event.model_construct(**json.loads(line)), line))
    return parsed
