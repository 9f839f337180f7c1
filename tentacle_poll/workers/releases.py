"""Release folders of one package in one environment, and the ``current`` link.

    <applications root>/<environment>/<package id>/<version>[_n]   one folder per deployment
    <applications root>/<environment>/<package id>/current        -> the live release
    <applications root>/<environment>/<package id>/.releases.json  deployment order

``current`` is switched atomically (a new link renamed over the old one), so a reader always
sees one release or the other, never none.

A deploy or rollback in progress is noted in ``.deploying.json`` (which release, which was
current before). After a crash, ``repair`` (at the agent's start and before every deploy of
the package) undoes what it left: hidden partial folders, ``current`` back to the release
before, the unfinished release removed. The folders, ``current`` and ``.releases.json`` then
agree again: every folder is listed, ``current`` is listed, nothing listed is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from tentacle_poll.exceptions import TaskExecutionError

UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
CURRENT = "current"
ORDER_FILE = ".releases.json"
IN_PROGRESS_FILE = ".deploying.json"


def path_part(name: str) -> str:
    """A name made safe as one folder name."""
    safe = UNSAFE.sub("_", name).strip(".") or "_"
    return safe


class Releases:
    def __init__(self, root: Path, environment: str, package_id: str) -> None:
        self.folder = root / path_part(environment) / path_part(package_id)

    def new_folder(self, version: str) -> Path:
        """A release folder that does not exist yet: ``1.2.0``, then ``1.2.0_1``, ..."""
        self.folder.mkdir(parents=True, exist_ok=True)
        base = path_part(version)
        candidate, n = self.folder / base, 0
        while candidate.exists() or candidate.is_symlink():
            n += 1
            candidate = self.folder / f"{base}_{n}"
        return candidate

    def current(self) -> Path | None:
        link = self.folder / CURRENT
        return (self.folder / os.readlink(link)) if link.is_symlink() else None

    def switch(self, release: Path) -> None:
        temporary = self.folder / f".{CURRENT}.new"
        temporary.unlink(missing_ok=True)
        os.symlink(release.name, temporary)
        os.replace(temporary, self.folder / CURRENT)

    def record(self, release: Path, version: str) -> None:
        entries = [e for e in self._entries() if e["release"] != release.name]
        self._write_order([*entries, {"release": release.name, "version": version}])

    def version_of(self, name: str) -> str:
        """The version a release folder holds, as its deploy named it."""
        versions = {entry["release"]: entry["version"] for entry in self._entries()}
        return versions.get(name) or _version_in_folder_name(name)

    def _entries(self) -> list[dict[str, str]]:
        """.releases.json, oldest deployment first; earlier versions wrote bare names."""
        path = self.folder / ORDER_FILE
        try:
            listed = json.loads(path.read_text()) if path.exists() else []
        except ValueError:
            return []
        entries = [_entry(e) for e in listed] if isinstance(listed, list) else []
        return [e for e in entries if e is not None]

    def _write_order(self, entries: list[dict[str, str]]) -> None:
        _write_atomically(self.folder / ORDER_FILE, json.dumps(entries))

    def forget_if_empty(self) -> None:
        """The package's folder and its environment's, when a refused first deploy left them
        empty."""
        for folder in (self.folder, self.folder.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()

    def begin(self, release: Path, new: bool) -> None:
        """Notes a deploy (``new``: of a release folder made for it) or a rollback to
        ``release`` before anything changes, so that a crash can be undone."""
        current = self.current()
        note = {"release": release.name, "previous": current.name if current else None,
                "new": new}  # fmt: skip
        _write_atomically(self.folder / IN_PROGRESS_FILE, json.dumps(note))

    def end(self) -> None:
        (self.folder / IN_PROGRESS_FILE).unlink(missing_ok=True)

    def repair(self) -> list[str]:
        """Undoes what a crashed deploy left; returns what it did, in words."""
        if not self.folder.is_dir():
            return []
        done = [f"removed {p.name}" for p in self._leftovers() if _remove(p)]
        done += self._undo_unfinished()
        order, current = self.order(), self.current()
        if current is not None and current.is_dir() and current.name not in order:
            self.record(current, self.version_of(current.name))
            done.append(f"listed the current release {current.name}")
        return done + [f"removed {p.name}, listed nowhere" for p in self._unlisted() if _remove(p)]

    def _unlisted(self) -> list[Path]:
        """Release folders neither listed nor current: retention or a crash left them."""
        keep = {*self.order(), CURRENT}
        return [p for p in self.folder.iterdir()
                if not p.name.startswith(".") and p.name not in keep and p.is_dir()]  # fmt: skip

    def _leftovers(self) -> list[Path]:
        return [*self.folder.glob(".*.partial"), *self.folder.glob(".*.new")]  # half-made

    def _undo_unfinished(self) -> list[str]:
        path = self.folder / IN_PROGRESS_FILE
        try:
            note = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return []
        release, previous = str(note.get("release")), note.get("previous")
        done = []
        finished = self.order()[-1:] == [release]  # recorded: it completed, but for the note
        current = self.current()
        if not finished and current is not None and current.name == release:
            self._restore(previous)
            done.append(f"current back to {previous or 'nothing'} (a deploy of {release} was "
                        "interrupted)")  # fmt: skip
        unfinished = not finished and note.get("new") and release not in self.order()
        if unfinished and _remove(self.folder / path_part(release)):
            done.append(f"removed the unfinished release {release}")
        path.unlink()
        return done

    def _restore(self, previous: str | None) -> None:
        if previous and (self.folder / previous).is_dir():
            self.switch(self.folder / previous)
        else:
            (self.folder / CURRENT).unlink(missing_ok=True)

    def order(self) -> list[str]:
        """Release folder names still on disk, oldest deployment first."""
        names = [entry["release"] for entry in self._entries()]
        return [name for name in names if (self.folder / name).is_dir()]

    def previous(self) -> Path:
        """The release deployed before the current one, for a rollback."""
        order, current = self.order(), self.current()
        earlier = order[: order.index(current.name)] if current and current.name in order else order
        if not earlier:
            raise TaskExecutionError(f"no earlier release of {self.folder.name} is on disk")
        return self.folder / earlier[-1]

    def find(self, version: str) -> Path:
        matches = [
            n
            for n in self.order()
            if n == path_part(version) or n.startswith(f"{path_part(version)}_")
        ]
        if not matches:
            raise TaskExecutionError(f"release {version} of {self.folder.name} is not on disk")
        return self.folder / matches[-1]

    def retain(self, keep: int) -> list[str]:
        """Deletes the oldest releases so that ``keep`` remain, never the current one."""
        current = self.current()
        others = [n for n in self.order() if current is None or n != current.name]
        room = keep - 1 if current is not None else keep
        doomed = others[: max(len(others) - room, 0)]
        # The list first: a crash in between leaves folders repair removes, never a listed
        # release that is gone.
        self._write_order([e for e in self._entries() if e["release"] not in doomed])
        for name in doomed:
            shutil.rmtree(self.folder / name, ignore_errors=True)
        return doomed


def _entry(listed: object) -> dict[str, str] | None:
    if isinstance(listed, str):
        return {"release": listed, "version": _version_in_folder_name(listed)}
    if isinstance(listed, dict) and all(isinstance(listed.get(k), str) for k in KEYS):
        return {k: str(listed[k]) for k in KEYS}
    return None  # damaged: the folders on disk are the truth


KEYS = ("release", "version")


def _version_in_folder_name(name: str) -> str:
    """What an unlisted folder holds: its name, less the ``_n`` of a version deployed again."""
    return re.sub(r"_\d+$", "", name)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    temporary.replace(path)


def _remove(path: Path) -> bool:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        return True
    return False
