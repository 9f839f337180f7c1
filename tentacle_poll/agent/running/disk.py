"""The agent home's disk: under ``min_free_home_mb`` free, the agent takes no new work (a task
it cannot journal or spool would only fail), says so once, and health shows it."""

from __future__ import annotations

import shutil
from pathlib import Path

MB = 1024 * 1024


class HomeSpace:
    def __init__(self, folder: Path, floor_bytes: int) -> None:
        self.folder = folder
        self.floor_bytes = floor_bytes

    def free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.folder).free
        except OSError:
            return 0

    def shortage(self) -> str | None:
        """Why no new work should be taken, or None."""
        free = self.free_bytes()
        if free >= self.floor_bytes:
            return None
        return (
            f"the disk of the agent home {self.folder} has {free / MB:.1f} MiB free, under "
            f"min_free_home_mb ({self.floor_bytes / MB:g}): taking no new tasks until space is "
            "freed"
        )
