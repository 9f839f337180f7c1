"""Extraction of a package archive (zip, tar.gz) into a new release folder.

The writing goes through ``ReleaseTree`` (nothing outside the release can be created, linked
or overwritten, whatever the archive holds); this module reads the archives and meters what
they expand to. Sizes an archive declares are used only to refuse early, never to accept:
the bytes actually written are counted, and extraction stops at ``max_bytes``, at a
compression ratio over ``max_ratio`` (per entry, and for the whole archive), and before the
disk falls under ``min_free_bytes``. Extraction goes to a hidden sibling folder renamed into
place at the end: a refusal or a failure leaves nothing behind.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tentacle_poll.exceptions import TaskExecutionError
from tentacle_poll.workers.release_tree import (
    FOLDER_FLAGS,
    ReleaseTree,
    UnsafeArchive,
    entry_parts,
)

__all__ = ["Limits", "UnsafeArchive", "extract", "partial_folder"]

COPY_CHUNK = 1024 * 1024
# Below this many bytes written, a ratio proves nothing (a small text file compresses 100:1).
RATIO_FLOOR_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 2 * 1024**3
    max_entries: int = 100_000
    max_ratio: float = 100.0
    min_free_bytes: int = 512 * 1024**2


def partial_folder(destination: Path) -> Path:
    """Where ``destination`` is built before it is renamed into place."""
    return destination.with_name(f".{destination.name}.partial")


def extract(archive: Path, package_format: str, destination: Path, limits: Limits) -> int:
    """Extracts into ``destination`` (which must not exist); returns the number of files."""
    partial = partial_folder(destination)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        root_fd = os.open(partial, FOLDER_FLAGS)
        try:
            count = _extract_into(archive, package_format, ReleaseTree(root_fd), limits)
        finally:
            os.close(root_fd)
        partial.rename(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return count


def _extract_into(archive: Path, package_format: str, tree: ReleaseTree, limits: Limits) -> int:
    try:
        if package_format == "zip":
            _extract_zip(archive, tree, limits)
        else:
            _extract_tar(archive, tree, limits)
        tree.check_links()
        return tree.file_count
    finally:
        tree.close()


class Meter:
    """Counts the bytes written, per entry and in all, against the limits."""

    def __init__(self, limits: Limits, root_fd: int, consumed: Callable[[], int]) -> None:
        self._limits = limits
        self._root_fd = root_fd
        self._consumed = consumed  # compressed bytes of the archive read so far (or in all)
        self.written = 0
        self._entry_written = 0
        self._entry_compressed: int | None = None
        self.entries = 0

    def next_entry(self, compressed: int | None = None) -> None:
        self.entries += 1
        if self.entries > self._limits.max_entries:
            raise UnsafeArchive(f"the archive has over {self._limits.max_entries} entries")
        self._entry_written, self._entry_compressed = 0, compressed

    def copy(self, source: IO[bytes], fd: int) -> None:
        while chunk := source.read(COPY_CHUNK):
            self._count(len(chunk))
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]

    def _count(self, size: int) -> None:
        self.written += size
        self._entry_written += size
        if self.written > self._limits.max_bytes:
            raise UnsafeArchive(
                f"the archive expands past {self._limits.max_bytes} bytes (max_extract_mb)"
            )
        self._check_ratio(self._entry_written, self._entry_compressed, "an entry")
        self._check_ratio(self.written, self._consumed(), "the archive")
        self._check_free_space(size)

    def _check_ratio(self, written: int, compressed: int | None, what: str) -> None:
        if compressed is None or written < RATIO_FLOOR_BYTES:
            return
        if written > self._limits.max_ratio * max(compressed, 1):
            raise UnsafeArchive(
                f"{what} expands over {self._limits.max_ratio:g} times its compressed size "
                "(a zip bomb? max_extract_ratio); refused"
            )

    def _check_free_space(self, size: int) -> None:
        disk = os.fstatvfs(self._root_fd)
        free = disk.f_bavail * disk.f_frsize
        if free - size < self._limits.min_free_bytes:
            raise TaskExecutionError(
                f"extracting would leave under {self._limits.min_free_bytes // 1024**2} MiB free "
                "on the disk of the applications folder (min_free_disk_mb); free some space"
            )


# --- zip ---------------------------------------------------------------------------------------


def _extract_zip(archive: Path, tree: ReleaseTree, limits: Limits) -> None:
    size = archive.stat().st_size
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            _refuse_declared_bomb(members, limits)
            meter = Meter(limits, tree.root_fd, lambda: size)
            for member in members:
                meter.next_entry(member.compress_size)
                _write_zip_entry(zipped, member, tree, meter)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise UnsafeArchive(f"the package is not a readable zip: {exc}") from exc


def _refuse_declared_bomb(members: list[zipfile.ZipInfo], limits: Limits) -> None:
    """What the central directory admits to is refused before a byte is written."""
    if len(members) > limits.max_entries:
        raise UnsafeArchive(f"the archive has {len(members)} entries, over {limits.max_entries}")
    declared = sum(m.file_size for m in members)
    if declared > limits.max_bytes:
        raise UnsafeArchive(
            f"the archive would expand to {declared} bytes, over {limits.max_bytes} "
            "(max_extract_mb)"
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size >= RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
            raise UnsafeArchive(
                f"the entry {member.filename!r} expands {ratio:.0f} times "
                f"(over {limits.max_ratio:g}: a zip bomb? max_extract_ratio); refused"
            )


def _write_zip_entry(
    zipped: zipfile.ZipFile, member: zipfile.ZipInfo, tree: ReleaseTree, meter: Meter
) -> None:
    parts = entry_parts(member.filename)
    mode = member.external_attr >> 16
    if member.is_dir():
        tree.folder(parts)
    elif stat.S_ISLNK(mode):
        with zipped.open(member) as source:
            tree.symlink(parts, source.read(4096).decode(errors="replace"))
    elif stat.S_IFMT(mode) in (0, stat.S_IFREG):  # 0: written without a type, a plain file
        with zipped.open(member) as source:
            tree.write_file(parts, mode, lambda fd: meter.copy(source, fd))
    else:
        raise UnsafeArchive(f"the archive entry {member.filename!r} is a device or special file")


# --- tar.gz ------------------------------------------------------------------------------------


def _extract_tar(archive: Path, tree: ReleaseTree, limits: Limits) -> None:
    with open(archive, "rb") as raw:
        meter = Meter(limits, tree.root_fd, raw.tell)
        try:
            with tarfile.open(fileobj=raw, mode="r|gz") as tar:  # one pass, in archive order
                for member in tar:
                    meter.next_entry()
                    _write_tar_entry(tar, member, tree, meter)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise UnsafeArchive(f"the package is not a readable tar.gz: {exc}") from exc


def _write_tar_entry(
    tar: tarfile.TarFile, member: tarfile.TarInfo, tree: ReleaseTree, meter: Meter
) -> None:
    parts = entry_parts(member.name)
    if not parts:
        return  # "./": the release folder itself
    if member.isdir():
        tree.folder(parts)
    elif member.issym():
        tree.symlink(parts, member.linkname)
    elif member.islnk():
        tree.hard_link(parts, entry_parts(member.linkname))
    elif member.isreg():
        source = tar.extractfile(member)
        assert source is not None
        with source:
            tree.write_file(parts, member.mode, lambda fd: meter.copy(source, fd))
    else:
        raise UnsafeArchive(f"the archive entry {member.name!r} is a device or special file")
