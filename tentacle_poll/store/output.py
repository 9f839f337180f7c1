"""Task output: the text in one append-only file per task, an index of its blocks in SQLite.

    <server home>/server-output/<task id>.log   the text of every block, in arrival order
    <server home>/server-output.db              blocks (task, seq, lines, stream, ts, where)

Output is most of what a server writes (one task can print gigabytes), and it is written once
and read in order: what task logs are, and what Octopus Server and GitLab keep as plain files.
In SQLite the same bytes cost three copies (rows, write-ahead log, checkpoint) and about a third
of the server's CPU while a task streams; appended to a file they cost one.

Writes run on a thread of their own with a second SQLite connection, so the event loop never
waits for a disk write or a WAL checkpoint (SQLite and file writes release the GIL). A block's
text is written before its index row is committed, so a reader never finds a row without its
text; text written by a batch whose commit then failed is never referenced and only wastes
space. Like the index (WAL, ``synchronous=NORMAL``), the files are not fsync'd on every batch:
everything stored survives the server process being killed; a power cut can lose the last
moments, and a block whose text did not reach the disk is skipped when read.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from loguru import logger

from tentacle_poll.exceptions import StoreError
from tentacle_poll.protocol.models import Event, Stream
from tentacle_poll.store.blocks import TEXT_ERRORS, contiguous_end, uncovered_parts
from tentacle_poll.store.space import SpaceAwareConnection

# (seq, stream, ts, lines, offset, size): an index row, as the reader selects it
BlockRow = tuple[int, Stream, float, int, int, int, int]
# the columns a reader selects, in BlockRow's order
BLOCK_COLUMNS = "seq, stream, ts, lines, offset, size, continues"
TASK_ID = re.compile(r"[0-9a-f][0-9a-f-]*")


class OutputLog:
    def __init__(self, index: Path, folder: Path) -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        self.folder = folder
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="output-writer")
        self._db = self._executor.submit(_connect, index).result()

    async def append(self, task_id: str, events: list[Event], last_seq: int) -> int:
        """Stores the lines of the events not stored yet (each line once, however retries
        batch them); returns the highest seq stored with no gap after ``last_seq``, which the
        caller already knew to be stored."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._append, task_id, events, last_seq)

    def append_now(self, task_id: str, events: list[Event]) -> None:
        """``append`` for start-up, before the event loop runs (moving an older store's lines)."""
        self._executor.submit(self._append, task_id, events, 0).result()

    async def delete(self, task_ids: list[str]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._delete, task_ids)

    def close(self) -> None:
        self._executor.submit(self._db.close).result()
        self._executor.shutdown()

    def read(self, task_id: str, rows: Iterable[BlockRow]) -> Generator[Event, None, None]:
        """The blocks of these index rows with their text, each read only when it is taken: a
        reader after 1,000 lines needs a block or two, not a thousand. Safe on any thread;
        close it (``contextlib.closing``) when done, to close the file."""
        log: BinaryIO | None = None
        try:
            for row in rows:
                if log is None:
                    log = open(self._path(task_id), "rb")  # noqa: SIM115
                event = self._block(log.fileno(), task_id, row)
                if event is not None:
                    yield event
        except FileNotFoundError:
            return  # the target was deleted meanwhile
        finally:
            if log is not None:
                log.close()

    def _block(self, fd: int, task_id: str, row: BlockRow) -> Event | None:
        seq, stream, ts, lines, offset, size, continues = row
        data = os.pread(fd, size, offset)
        if len(data) < size:
            logger.warning("output of task {} lost lines {}+ (its file is short)", task_id, seq)
            return None
        text = data.decode(errors=TEXT_ERRORS)
        return Event.model_construct(
            seq=seq, stream=stream, text=text, ts=ts, lines=lines, continues=bool(continues)
        )

    def _append(self, task_id: str, events: list[Event], last_seq: int) -> int:
        # The file is closed (flushed) on leaving the block, before the commit: no row may
        # point past the file's end.
        with self._db, open(self._path(task_id), "ab") as log:
            offset = log.tell()
            texts = []
            for event in events:
                for piece in self._not_yet_stored(task_id, event):
                    text = piece.text.encode(errors=TEXT_ERRORS)
                    if self._index(task_id, piece, offset, len(text)):
                        texts.append(text)
                        offset += len(text)
            log.write(b"".join(texts))
            return self._contiguous_end(task_id, last_seq)

    def _not_yet_stored(self, task_id: str, event: Event) -> list[Event]:
        """The parts of the block whose lines are not stored yet: two indexed look-ups find
        the only stored blocks that can cover any of its lines."""
        first, last = event.seq, event.last_seq
        covering = self._db.execute(
            "SELECT seq, lines FROM blocks WHERE task_id = ? AND seq <= ? "
            "ORDER BY seq DESC LIMIT 1",
            (task_id, first),
        ).fetchall()
        covering += self._db.execute(
            "SELECT seq, lines FROM blocks WHERE task_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
            (task_id, first, last),
        ).fetchall()
        return uncovered_parts(event, covering)

    def _index(self, task_id: str, event: Event, offset: int, size: int) -> bool:
        """Adds the block's row; False when it is already stored (a retried batch)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO blocks (task_id, seq, lines, stream, ts, offset, size, "
            "continues) VALUES (?,?,?,?,?,?,?,?)",
            (
                task_id,
                event.seq,
                event.lines,
                event.stream,
                event.ts,
                offset,
                size,
                int(event.continues),
            ),
        )
        return cursor.rowcount == 1

    def _contiguous_end(self, task_id: str, last_seq: int) -> int:
        rows = self._db.execute(
            "SELECT seq, lines FROM blocks WHERE task_id = ? AND seq > ? ORDER BY seq",
            (task_id, last_seq),
        )
        return contiguous_end(rows, last_seq)

    def _delete(self, task_ids: list[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM blocks WHERE task_id = ?", [(t,) for t in task_ids])
        for task_id in task_ids:
            self._path(task_id).unlink(missing_ok=True)

    def _path(self, task_id: str) -> Path:
        # The store makes task ids of hex digits and dashes; anything else must never become a
        # path (it would reach outside the folder).
        if not TASK_ID.fullmatch(task_id):
            raise StoreError(f"not a task id: {task_id!r}")
        return self.folder / f"{task_id}.log"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="IMMEDIATE", factory=SpaceAwareConnection)
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA busy_timeout = 5000")
    return db
