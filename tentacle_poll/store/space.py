"""SQLite connections whose writes, when the disk is full, raise ``StorageFull`` (which the
server answers 503 + Retry-After and reports in health) instead of an OperationalError that
would read as a bug."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from tentacle_poll.exceptions import StorageFull

SQLITE_FULL = 13


class SpaceAwareConnection(sqlite3.Connection):
    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        with _full_disk_named():
            return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        with _full_disk_named():
            return super().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        with _full_disk_named():
            return super().executescript(*args, **kwargs)

    def commit(self) -> None:
        with _full_disk_named():
            super().commit()


@contextlib.contextmanager
def _full_disk_named() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc):
            raise StorageFull(f"the database's disk is full ({exc})") from exc
        raise
