"""Writes task output on a thread of its own, into the output database.

A batch of output is up to half a megabyte, and every so often SQLite copies the write-ahead
log back into the database (tens of megabytes, with an fsync). Done on the event loop, that
stalls every held poll; done here, on a second connection with its own thread, the loop only
waits for the answer (SQLite releases the GIL while it writes). One thread: writes of one
database are serialised anyway.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tentacle_poll.protocol.models import Event


class OutputWriter:
    def __init__(self, path: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="output-writer")
        self._db = self._executor.submit(_connect, path).result()

    async def append(self, task_id: str, events: list[Event], last_seq: int) -> int:
        """Stores the events (a repeated one is ignored); returns the highest seq stored with
        no gap after ``last_seq``, which the caller already knew to be stored."""
        rows: list[tuple[object, ...]] = [
            (task_id, e.seq, e.stream, e.text, e.ts, e.lines) for e in events
        ]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._append, task_id, rows, last_seq)

    async def delete(self, task_ids: list[str]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._delete, task_ids)

    def close(self) -> None:
        self._executor.submit(self._db.close).result()
        self._executor.shutdown()

    def _append(self, task_id: str, rows: list[tuple[object, ...]], last_seq: int) -> int:
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO events (task_id, seq, stream, text, ts, lines) "
                "VALUES (?,?,?,?,?,?)",
                rows,
            )
            return self._contiguous_end(task_id, last_seq)

    def _contiguous_end(self, task_id: str, last_seq: int) -> int:
        # Past the known end there are only the batches that overtook a missing one (the agent
        # keeps two on the way, and sends a failed one again first): a short scan.
        rows = self._db.execute(
            "SELECT seq, lines FROM events WHERE task_id = ? AND seq > ? ORDER BY seq",
            (task_id, last_seq),
        )
        for seq, lines in rows:
            if seq != last_seq + 1:
                break
            last_seq = seq + lines - 1
        return int(last_seq)

    def _delete(self, task_ids: list[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM events WHERE task_id = ?", [(t,) for t in task_ids])


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="IMMEDIATE")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA busy_timeout = 5000")
    return db
