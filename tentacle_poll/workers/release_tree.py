"""A release folder being filled from an archive, which nothing written through it can leave.

Escape is impossible by construction rather than pattern-checked:

- every entry is created relative to directory descriptors, and every path component is opened
  with ``O_NOFOLLOW``: a symbolic link the archive made (or anything else) is never traversed;
- files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing that exists is overwritten,
  so a name taken by a link, a file or a folder is refused, never written through;
- a symbolic link's target is resolved lexically against its own folder: refused if it leaves
  the release or passes through another link of the archive (checked when made, and again once
  every entry is in, against the final set of links);
- a hard link may only name a regular file this extraction made.

Names that differ only by case or Unicode normalisation are refused too: they would collide on
other file systems, and an archive has no honest use for them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import unicodedata
from collections.abc import Callable
from pathlib import PurePosixPath

from tentacle_poll.exceptions import TaskExecutionError

Parts = tuple[str, ...]
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeArchive(TaskExecutionError):
    """The archive holds an entry that must not be written, or would expand too far."""


def entry_parts(name: str) -> Parts:
    """The entry's path inside the release, or UnsafeArchive."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchive(f"the archive entry {name!r} has an absolute path; refused")
    if ".." in path.parts:
        raise UnsafeArchive(f"the archive entry {name!r} climbs out with '..'; refused")
    return tuple(part for part in path.parts if part != ".")


class ReleaseTree:
    """Writes entries under ``root_fd`` only; ``close`` releases every descriptor it opened."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._folders: dict[Parts, int] = {(): root_fd}
        self._links: dict[Parts, str] = {}
        self._files: set[Parts] = set()
        self._spellings: dict[str, Parts] = {}  # casefolded NFC path -> the path as given
        self.file_count = 0

    def close(self) -> None:
        for parts, fd in self._folders.items():
            if parts:
                os.close(fd)
        self._folders = {(): self.root_fd}

    def folder(self, parts: Parts) -> int:
        """The folder's descriptor, made (0755) where missing; never through a link."""
        if parts in self._folders:
            return self._folders[parts]
        parent = self.folder(parts[:-1])
        self._claim(parts, folder=True)
        # It may exist: made before for a deeper entry, or taken by a file or link (open says).
        with contextlib.suppress(FileExistsError):
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
        try:
            fd = os.open(parts[-1], FOLDER_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _taken(parts, exc, "a folder") from exc
        self._folders[parts] = fd
        return fd

    def write_file(self, parts: Parts, mode: int, fill: Callable[[int], None]) -> None:
        """Creates the file (it must not exist) and lets ``fill`` write into its descriptor."""
        parent = self._parent_of(parts)
        self._claim(parts)
        try:
            fd = os.open(parts[-1], NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        except OSError as exc:
            raise _taken(parts, exc, "a file") from exc
        try:
            fill(fd)
            os.fchmod(fd, mode & 0o777 or 0o644)  # never setuid, setgid or sticky
        except OSError as exc:  # a full disk, say
            raise TaskExecutionError(f"cannot extract {_shown(parts)}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        self._files.add(parts)
        self.file_count += 1

    def symlink(self, parts: Parts, target: str) -> None:
        self._check_link_target(parts, target)
        parent = self._parent_of(parts)
        self._claim(parts)
        try:
            os.symlink(target, parts[-1], dir_fd=parent)
        except OSError as exc:
            raise _taken(parts, exc, "a link") from exc
        self._links[parts] = target

    def hard_link(self, parts: Parts, target: Parts) -> None:
        if target not in self._files:
            raise UnsafeArchive(
                f"the hard link {_shown(parts)} names {_shown(target)}, which is not a file "
                "extracted before it; refused"
            )
        parent = self._parent_of(parts)
        self._claim(parts)
        try:
            os.link(target[-1], parts[-1], src_dir_fd=self._folders[target[:-1]],
                    dst_dir_fd=parent, follow_symlinks=False)  # fmt: skip
        except OSError as exc:
            raise _taken(parts, exc, "a hard link") from exc
        self.file_count += 1

    def check_links(self) -> None:
        """Once every entry is in: no link points out or through another link."""
        for parts, target in self._links.items():
            self._check_link_target(parts, target)

    def _parent_of(self, parts: Parts) -> int:
        if not parts:
            raise UnsafeArchive("an archive entry without a name; refused")
        return self.folder(parts[:-1])

    def _claim(self, parts: Parts, folder: bool = False) -> None:
        """Refuses a second entry of one name (but a folder named again) and names that differ
        only by case or Unicode normalisation."""
        key = unicodedata.normalize("NFC", "/".join(parts)).casefold()
        seen = self._spellings.setdefault(key, parts)
        if seen != parts:
            raise UnsafeArchive(
                f"the archive entries {_shown(seen)} and {_shown(parts)} differ only by case or "
                "Unicode normalisation; refused"
            )
        if not folder and (parts in self._files or parts in self._links):
            raise UnsafeArchive(f"the archive holds {_shown(parts)} twice; refused")

    def _check_link_target(self, parts: Parts, target: str) -> None:
        if not target or target.startswith("/") or "\0" in target:
            raise UnsafeArchive(
                f"the link {_shown(parts)} points outside the release ({target!r}); refused"
            )
        resolved: list[str] = list(parts[:-1])
        for part in PurePosixPath(target).parts:
            if part == "..":
                if not resolved:
                    raise UnsafeArchive(
                        f"the link {_shown(parts)} points outside the release ({target}); refused"
                    )
                resolved.pop()
            elif part != ".":
                resolved.append(part)
                if tuple(resolved) in self._links and tuple(resolved) != parts:
                    raise UnsafeArchive(
                        f"the link {_shown(parts)} points through another link "
                        f"({'/'.join(resolved)}); refused"
                    )


def _taken(parts: Parts, exc: OSError, what: str) -> TaskExecutionError:
    if exc.errno in (errno.EEXIST, errno.ELOOP, errno.ENOTDIR):
        return UnsafeArchive(
            f"cannot make {what} at {_shown(parts)}: the name (or a folder on its way) is "
            "already a link or another kind of entry; refused"
        )
    return TaskExecutionError(f"cannot extract {_shown(parts)}: {exc.strerror or exc}")


def _shown(parts: Parts) -> str:
    return "/".join(parts) or "."
