"""SQLite connections whose writes, when the disk is full, raise ``StorageFull`` (which the
server answers 503 + Retry-After and reports in health) instead of an OperationalError that
would read as a bug."""

from __future__ import annotations

import sqlite3
from typing import Any, Self

from tentacle_poll.exceptions import StorageFull

SQLITE_FULL = 13


class SpaceAwareCursor(sqlite3.Cursor):
    """Fetching writes too, not only executing: a statement with RETURNING, like any statement
    in autocommit mode, commits when it is stepped to its end, which a fetch does."""

    def execute(self, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().execute(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise

    def executemany(self, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().executemany(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise

    def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        try:
            return super().executescript(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        try:
            return super().fetchmany(size)
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise


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

    def commit(self) -> None:
        try:
            super().commit()
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise

    def __exit__(self, *exc_info: Any) -> Any:
        # the commit of ``with connection:`` is sqlite3's own, not the method above
        try:
            return super().__exit__(*exc_info)
        except sqlite3.OperationalError as exc:
            _raise_if_full(exc)
            raise


def _raise_if_full(exc: sqlite3.OperationalError) -> None:
    """A try/except at each call, not a context manager: fetches are per row, and cheap."""
    if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc):
        raise StorageFull(f"the database's disk is full ({exc})") from exc
