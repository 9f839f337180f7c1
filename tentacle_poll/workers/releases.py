"""Release folders of one package in one environment, and the ``current`` link.

    <applications root>/<environment>/<package id>/<version>[_n]   one folder per deployment
    <applications root>/<environment>/<package id>/current        -> the live release
    <applications root>/<environment>/<package id>/.releases.json  deployment order

``current`` is switched atomically (a new link renamed over the old one), so a reader always
sees one release or the other, never none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from tentacle_poll.exceptions import TaskExecutionError

UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
CURRENT = "current"
ORDER_FILE = ".releases.json"


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

    def record(self, release: Path) -> None:
        order = [name for name in self.order() if name != release.name] + [release.name]
        temporary = self.folder / f"{ORDER_FILE}.new"
        temporary.write_text(json.dumps(order))
        temporary.replace(self.folder / ORDER_FILE)

    def order(self) -> list[str]:
        """Release folder names still on disk, oldest deployment first."""
        path = self.folder / ORDER_FILE
        names = json.loads(path.read_text()) if path.exists() else []
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
        for name in doomed:
            shutil.rmtree(self.folder / name, ignore_errors=True)
        return doomed
