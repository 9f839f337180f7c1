"""Which store a server uses: SQLite in its home (the default), or the PostgreSQL database
named by ``store_url`` that several nodes share."""

from __future__ import annotations

import os
from pathlib import Path

from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.store.base import Store
from tentacle_poll.store.blobs import Blobs, DatabaseBlobs, FileBlobs

DATABASE_FILE = "server.db"
POSTGRESQL = ("postgresql://", "postgres://")
Opened = tuple[Store, Blobs, tuple[int, int] | None]


def is_postgresql(url: str) -> bool:
    return url.startswith(POSTGRESQL)


async def open_store(
    url: str, home: Path, migrate: bool
) -> tuple[Store, Blobs, tuple[int, int] | None]:
    """(store, its stored bytes, (from, to) schema versions if it was migrated now)."""
    blob_folder = home / "packages"
    blob_folder.mkdir(mode=0o700, exist_ok=True)
    if is_postgresql(url):
        from tentacle_poll.store.postgres import PostgresStore  # lazy: SQLite servers skip it

        database = await PostgresStore.open(url, migrate)
        return database, DatabaseBlobs(database, blob_folder), database.schema_change
    if url:
        raise ConfigurationError(
            f"store_url must be empty (SQLite in the server home) or a postgresql:// URL, "
            f"not {url.split('://')[0]}://..."
        )
    from tentacle_poll.store.sqlite import SqliteStore

    path = home / DATABASE_FILE
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # before SQLite makes it
    sqlite = SqliteStore(path, migrate)
    return sqlite, FileBlobs(blob_folder), sqlite.schema_change
