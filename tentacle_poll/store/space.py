"""SQLite connections whose writes, when the disk is full, raise ``StorageFull`` (which the
server answers 503 + Retry-After and reports in health) instead of an OperationalError that
would read as a bug."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from tentacle_poll.exceptions import StorageFull

SQLITE_FULL = 13
P = ParamSpec("P")
R = TypeVar("R")


def _naming_a_full_disk(method: Callable[P, R]) -> Callable[P, R]:
    """``method``, raising StorageFull for a full disk (a try/except, not a context manager:
    fetches run per row)."""

    @functools.wraps(method)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc):
                raise StorageFull(f"the database's disk is full ({exc})") from exc
            raise

    return checked


class SpaceAwareCursor(sqlite3.Cursor):
    """Fetching writes too, not only executing: a statement with RETURNING, like any statement
    in autocommit mode, commits when it is stepped to its end, which a fetch does."""

    execute = _naming_a_full_disk(sqlite3.Cursor.execute)
    executemany = _naming_a_full_disk(sqlite3.Cursor.executemany)
    executescript = _naming_a_full_disk(sqlite3.Cursor.executescript)
    fetchone = _naming_a_full_disk(sqlite3.Cursor.fetchone)
    fetchmany = _naming_a_full_disk(sqlite3.Cursor.fetchmany)
    fetchall = _naming_a_full_disk(sqlite3.Cursor.fetchall)

    @_naming_a_full_disk
    def __next__(self) -> Any:  # typeshed has it on Iterator, not on Cursor: not assigned
        return super().__next__()


class SpaceAwareConnection(sqlite3.Connection):
    """Its shortcuts go through ``SpaceAwareCursor`` (sqlite3's own would make a plain cursor,
    whose fetches would escape the check)."""

    def cursor(self, factory: Any = SpaceAwareCursor) -> Any:
        return super().cursor(factory)

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        return SpaceAwareCursor(self).execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        return SpaceAwareCursor(self).executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        return SpaceAwareCursor(self).executescript(*args, **kwargs)

    commit = _naming_a_full_disk(sqlite3.Connection.commit)
    # the commit of ``with connection:`` is sqlite3's own, not the method above
    __exit__ = _naming_a_full_disk(sqlite3.Connection.__exit__)
