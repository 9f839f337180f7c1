"""The health check task: what an operator wants to know about a target, as one JSON line."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from tentacle_poll import __version__
from tentacle_poll.agent.running.disk import HomeSpace
from tentacle_poll.tls import certificate_expiry, load_identity
from tentacle_poll.workers import Outcome, OutputSink


class HealthJob:
    def __init__(
        self, applications_root: Path, identity_folder: Path, free_slots: Callable[[], int],
        home_space: HomeSpace, process_control: str, emit: OutputSink,
    ) -> None:  # fmt: skip
        self._root = applications_root
        self._identity = identity_folder
        self._free_slots = free_slots
        self._home_space = home_space
        self._process_control = process_control
        self._emit = emit

    def cancel(self, reason: str) -> None:
        """Nothing to interrupt: the check takes milliseconds."""

    async def run(self) -> Outcome:
        self._root.mkdir(parents=True, exist_ok=True)
        report = {
            "agent_version": __version__,
            "os": f"{platform.system()} {platform.release()}",
            "python": sys.version.split()[0],
            "applications_root": str(self._root),
            "free_disk_bytes": shutil.disk_usage(self._root).free,
            # This check's own slot is free again the moment it reports.
            "free_slots": self._free_slots() + 1,
            "home_free_bytes": self._home_space.free_bytes(),
            "taking_work": self._home_space.shortage() is None,
            "process_control": self._process_control,
            "certificate_expires": certificate_expiry(
                load_identity(self._identity).cert_pem
            ).isoformat(),
        }
        self._emit("stdout", json.dumps(report))
        return Outcome("succeeded", 0)
