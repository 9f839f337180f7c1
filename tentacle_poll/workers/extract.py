"""Safe extraction of a package archive (zip, tar.gz) into a new release folder.

Every entry is checked before anything is written: absolute paths, ``..`` segments, links that
point outside the release, device files and FIFOs are refused with the entry's name; so is an
archive that would expand past ``max_bytes`` or ``max_entries`` (zip bombs), and the byte count
is enforced again while writing, in case an archive lies about its sizes. Extraction goes to a
temporary sibling folder renamed into place at the end: a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tentacle_poll.exceptions import TaskExecutionError

COPY_CHUNK = 1024 * 1024


class UnsafeArchive(TaskExecutionError):
    """The archive holds an entry that must not be written, or would expand too far."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 2 * 1024**3
    max_entries: int = 100_000


def extract(archive: Path, package_format: str, destination: Path, limits: Limits) -> int:
    """Extracts into ``destination`` (which must not exist); returns the number of files."""
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if package_format == "zip":
            count = _extract_zip(archive, partial, limits)
        else:
            count = _extract_tar(archive, partial, limits)
        partial.rename(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return count


def safe_relative(name: str) -> PurePosixPath:
    """The entry's path inside the release, or UnsafeArchive."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchive(f"the archive entry {name!r} has an absolute path; refused")
    if ".." in path.parts:
        raise UnsafeArchive(f"the archive entry {name!r} climbs out with '..'; refused")
    return path


def _inside(link_from: PurePosixPath, target: str) -> bool:
    if target.startswith("/"):
        return False
    parts: list[str] = []
    for part in (*link_from.parent.parts, *PurePosixPath(target).parts):
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return True


def _check_totals(count: int, total: int, limits: Limits) -> None:
    if count > limits.max_entries:
        raise UnsafeArchive(
            f"the archive has {count} entries, over the limit of {limits.max_entries}"
        )
    if total > limits.max_bytes:
        raise UnsafeArchive(
            f"the archive would expand to {total} bytes, over the limit of {limits.max_bytes}"
        )


# --- zip ---------------------------------------------------------------------------------------


def _extract_zip(archive: Path, into: Path, limits: Limits) -> int:
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            _check_totals(len(members), sum(m.file_size for m in members), limits)
            plan = [(m, safe_relative(m.filename), _zip_kind(m)) for m in members]
            links = {p: zipped.read(m).decode() for m, p, kind in plan if kind == "link"}
            for path, target in links.items():
                if not _inside(path, target):
                    raise UnsafeArchive(f"the link {path} points outside the release ({target})")
            budget = [limits.max_bytes]
            for member, path, kind in plan:
                _write_zip_entry(zipped, member, into / path, kind, links.get(path), budget)
            return sum(1 for _, _, kind in plan if kind == "file")
    except zipfile.BadZipFile as exc:
        raise UnsafeArchive(f"the package is not a readable zip: {exc}") from exc


def _zip_kind(member: zipfile.ZipInfo) -> str:
    mode = member.external_attr >> 16
    if member.is_dir():
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    file_type = stat.S_IFMT(mode)
    if file_type not in (0, stat.S_IFREG):  # 0: written without a type, a plain file
        raise UnsafeArchive(f"the archive entry {member.filename!r} is a device or special file")
    return "file"


def _write_zip_entry(
    zipped: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, kind: str,
    link: str | None, budget: list[int],
) -> None:  # fmt: skip
    if kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":
        assert link is not None
        os.symlink(link, target)
        return
    with zipped.open(member) as source, open(target, "wb") as sink:
        _copy_within(source, sink, budget)
    mode = (member.external_attr >> 16) & 0o777
    if mode:
        target.chmod(mode)


def _copy_within(source, sink, budget: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Copies, counting against the remaining byte budget (archives can lie about sizes)."""
    while chunk := source.read(COPY_CHUNK):
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise UnsafeArchive("the archive expands past its size limit (its sizes lie)")
        sink.write(chunk)


# --- tar.gz ------------------------------------------------------------------------------------


def _extract_tar(archive: Path, into: Path, limits: Limits) -> int:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            _check_totals(len(members), sum(m.size for m in members if m.isfile()), limits)
            for member in members:
                _check_tar_member(member)
            budget = [limits.max_bytes]
            for member in members:
                _write_tar_entry(tar, member, into, budget)
            return sum(1 for m in members if m.isfile())
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, UnsafeArchive):
            raise
        raise UnsafeArchive(f"the package is not a readable tar.gz: {exc}") from exc


def _check_tar_member(member: tarfile.TarInfo) -> None:
    path = safe_relative(member.name)
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeArchive(f"the archive entry {member.name!r} is a device or special file")
    if (member.issym() or member.islnk()) and not _link_inside(member, path):
        raise UnsafeArchive(
            f"the link {member.name} points outside the release ({member.linkname})"
        )


def _link_inside(member: tarfile.TarInfo, path: PurePosixPath) -> bool:
    if member.islnk():  # hard links name a path from the archive root
        return _inside(PurePosixPath("x"), member.linkname)
    return _inside(path, member.linkname)


def _write_tar_entry(
    tar: tarfile.TarFile, member: tarfile.TarInfo, into: Path, budget: list[int]
) -> None:
    target = into / safe_relative(member.name)
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.issym():
        os.symlink(member.linkname, target)
    elif member.islnk():
        os.link(into / safe_relative(member.linkname), target)
    else:
        source = tar.extractfile(member)
        assert source is not None
        with source, open(target, "wb") as sink:
            _copy_within(source, sink, budget)
        target.chmod(member.mode & 0o777)
