"""The agent's package cache: content-addressed, verified, resumable.

    <home>/packages/<sha256>        a verified package (a second deploy moves no bytes)
    <home>/packages/<sha256>.part   an interrupted download, continued with Range

Bytes stream to disk as they arrive; nothing is used before its SHA-256 matches. The cache is
kept under ``package_cache_mb``: after each download the least recently used packages go,
never one a deploy on this agent is using (``in_use``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from loguru import logger

from tentacle_poll.agent.connections.transport import Channel
from tentacle_poll.exceptions import CommunicationError, TaskExecutionError
from tentacle_poll.protocol.routes import PACKAGE_BLOB

HASH_CHUNK = 1024 * 1024
FREE_SPACE_MARGIN = 64 * 1024 * 1024


DEFAULT_MAX_BYTES = 2 * 1024**3


class PackageCache:
    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self.bytes_downloaded = 0  # for tests and diagnostics: what crossed the network
        self._in_use: Counter[str] = Counter()

    def path_of(self, sha256: str) -> Path:
        return self.folder / sha256

    @contextlib.contextmanager
    def in_use(self, sha256: str) -> Iterator[None]:
        """While a deploy needs the package: pruning leaves it alone."""
        self._in_use[sha256] += 1
        try:
            yield
        finally:
            self._in_use[sha256] -= 1

    def prune(self) -> list[str]:
        """Deletes the least recently used packages beyond ``max_bytes``; returns their digests."""
        packages = sorted(
            (p.stat().st_mtime, p.stat().st_size, p.name)
            for p in self.folder.iterdir()
            if p.is_file() and not p.name.endswith(".part")
        )
        total = sum(size for _, size, _ in packages)
        pruned = []
        for _, size, name in packages:
            if total <= self.max_bytes:
                break
            if self._in_use[name] == 0:
                self.path_of(name).unlink(missing_ok=True)
                total -= size
                pruned.append(name)
        return pruned

    async def fetch(self, client: Channel, sha256: str, size: int) -> Path:
        """The verified package, from the cache or downloaded (resuming a partial download)."""
        final = self.path_of(sha256)
        if final.exists():
            os.utime(final)  # recently used: the last to be pruned
            return final
        partial = final.with_suffix(".part")
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > size:
            partial.unlink()
            offset = 0
        self._check_space(size - offset)
        with open(partial, "ab") as handle:
            try:
                self.bytes_downloaded += await client.download(
                    PACKAGE_BLOB.format(sha256=sha256), handle, offset
                )
            except CommunicationError:
                logger.warning(
                    "download of {} stopped at {} bytes; it resumes", sha256, handle.tell()
                )
                raise
        return self._verified(partial, final, sha256)

    def _verified(self, partial: Path, final: Path, sha256: str) -> Path:
        actual = sha256_of(partial)
        if actual != sha256:
            partial.unlink()
            raise TaskExecutionError(
                f"the downloaded package has sha256 {actual}, not {sha256}; it was deleted"
            )
        partial.replace(final)
        return final

    def _check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.folder).free
        if free < needed + FREE_SPACE_MARGIN:
            raise TaskExecutionError(
                f"not enough disk space for the package in {self.folder}: {needed} bytes needed, "
                f"{free} free (keeping {FREE_SPACE_MARGIN} spare)"
            )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
