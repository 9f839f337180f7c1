"""Stored bytes (packages, transferred files), named by their SHA-256.

With SQLite they are files in the server home. With PostgreSQL they are rows of 1 MiB chunks,
so every node can serve every package; each node keeps the files it served or received in its
home as a cache, and answers downloads (with ``Range``) from that file, never from memory.
Chunks in rows rather than large objects: rows go with the schema (pg_dump, a dropped schema,
ON CONFLICT for two nodes storing the same bytes), where large objects need their own clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

CHUNK_BYTES = 1024 * 1024


class Blobs(Protocol):
    folder: Path  # where uploads land before they are kept

    async def keep(self, temporary: Path, sha256: str) -> None:
        """The uploaded file becomes the stored bytes (dropped if they were stored already)."""
        ...

    async def local(self, sha256: str) -> Path | None:
        """A file on this node with the bytes, or None when nothing is stored under them."""
        ...

    async def forget(self, sha256: str) -> None: ...


class FileBlobs:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def keep(self, temporary: Path, sha256: str) -> None:
        _move_into(temporary, self.folder / sha256)

    async def local(self, sha256: str) -> Path | None:
        path = self.folder / sha256
        return path if path.exists() else None

    async def forget(self, sha256: str) -> None:
        (self.folder / sha256).unlink(missing_ok=True)


class ChunkStore(Protocol):
    async def blob_stored(self, sha256: str) -> bool: ...
    async def put_blob(self, sha256: str, size: int, chunks: AsyncIterator[bytes]) -> None: ...
    def blob_chunks(self, sha256: str) -> AsyncIterator[bytes]: ...
    async def delete_blob(self, sha256: str) -> None: ...


class DatabaseBlobs:
    def __init__(self, store: ChunkStore, folder: Path) -> None:
        self.folder = folder  # this node's cache
        self._store = store

    async def keep(self, temporary: Path, sha256: str) -> None:
        if not await self._store.blob_stored(sha256):
            size = temporary.stat().st_size
            await self._store.put_blob(sha256, size, _read_chunks(temporary))
        _move_into(temporary, self.folder / sha256)

    async def local(self, sha256: str) -> Path | None:
        cached = self.folder / sha256
        if not await self._store.blob_stored(sha256):
            cached.unlink(missing_ok=True)  # deleted through another node
            return None
        if not cached.exists():
            await self._fetch(sha256, cached)
        return cached

    async def forget(self, sha256: str) -> None:
        await self._store.delete_blob(sha256)
        (self.folder / sha256).unlink(missing_ok=True)

    async def _fetch(self, sha256: str, cached: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".fetch-{os.getpid()}-{sha256}"
        try:
            with open(temporary, "wb") as handle:
                async for chunk in self._store.blob_chunks(sha256):
                    await asyncio.to_thread(handle.write, chunk)
            _move_into(temporary, cached)
        finally:
            temporary.unlink(missing_ok=True)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk


def _move_into(temporary: Path, blob: Path) -> None:
    """The first copy of some bytes becomes their file; later identical ones are dropped."""
    if temporary.exists() and not blob.exists():
        temporary.replace(blob)
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
