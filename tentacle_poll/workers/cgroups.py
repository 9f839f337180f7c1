"""A cgroup (v2) per task, where the agent may make them: what a process group cannot hold.

A script can leave its process group (``setsid``, a double fork into a new session) and then
outlives a timeout or a cancel. Every process of a cgroup, whatever it did, stays in it, and
``cgroup.kill`` ends them all. Where the agent may create cgroups (root, or a delegated subtree
such as systemd's ``Delegate=yes``), each task's script runs in
``<the agent's cgroup>/tentacle_poll/agent-<home>/task-<id>``: it is started through ``sh``,
which moves itself into the cgroup before it execs the script, so no child is ever born
outside it.
Elsewhere process groups alone are used; ``describe`` says which is in force.

``agent-<home>`` is named after the agent's home folder: two agents started from one session
(one cgroup) each end only their own leftovers, never the other's running tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

PARENT = "tentacle_poll"
EMPTY_POLL_SECONDS = 0.01


def cgroup2_mount(mounts: Path = Path("/proc/mounts")) -> Path | None:
    """Where the unified hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified`` on
    hybrid layouts)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def own_cgroup(self_cgroup: Path = Path("/proc/self/cgroup")) -> str | None:
    """This process's cgroup in the unified hierarchy (the ``0::`` line)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    return next((line[3:] for line in lines if line.startswith("0::")), None)


@dataclass(frozen=True)
class CgroupRoot:
    """The folder under which task cgroups are made."""

    path: Path

    @classmethod
    def find(cls, home: Path, make: bool = True) -> CgroupRoot | None:
        """The place for the task cgroups of the agent whose home is ``home``, made if it may
        (``make=False``: only tells whether it could, changing nothing: for ``show-config``);
        None where it may not."""
        mount, own = cgroup2_mount(), own_cgroup()
        if mount is None or own is None:
            return None
        key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
        parent = mount / own.lstrip("/") / PARENT / f"agent-{key}"
        if not make:  # made already and usable, or could be made (below a writable cgroup)
            ours = next(p for p in (parent, parent.parent, parent.parent.parent) if p.exists())
            could = os.access(ours, os.W_OK) and os.access(ours / "cgroup.procs", os.W_OK)
            return cls(parent) if (_usable(parent) if parent.exists() else could) else None
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return cls(parent) if _usable(parent) else None

    def for_task(self, task_id: str) -> TaskCgroup | None:
        path = self.path / f"task-{task_id}"
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            logger.warning("no cgroup for task {} ({}); its process group only", task_id, exc)
            return None
        return TaskCgroup(path)

    def release(self) -> None:
        """Removes the agent's folder when it stops (kept if a task's cgroup is still in it,
        for the next start to end)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def leftovers(self) -> list[TaskCgroup]:
        """Task cgroups an agent that died left behind (their scripts may still run)."""
        return [TaskCgroup(p) for p in self.path.glob("task-*") if p.is_dir()]


def _usable(folder: Path) -> bool:
    """A cgroup v2 folder with ``cgroup.kill`` (Linux 5.14+) whose members this user may move."""
    return (folder / "cgroup.kill").exists() and os.access(folder / "cgroup.procs", os.W_OK)


def describe(root: CgroupRoot | None) -> str:
    if root is None:
        return "process groups (no writable cgroup v2 here: a setsid'd child can escape)"
    return f"cgroup v2 per task under {root.path}"


@dataclass(frozen=True)
class TaskCgroup:
    path: Path

    def wrap(self, command: list[str]) -> list[str]:
        """``command`` started by a shell that first moves itself into this cgroup."""
        procs = str(self.path / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *command]

    def pids(self) -> list[int]:
        try:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def signal_all(self, sig: signal.Signals) -> int:
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    async def kill_all(self, timeout: float = 5.0) -> int:
        """Kills every process in the cgroup and waits until it is empty; returns how many."""
        count = len(self.pids())
        if count:
            try:
                (self.path / "cgroup.kill").write_text("1")
            except OSError:
                self.signal_all(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                # cgroup.events changes are announced through inotify only: polled here.
                while self.pids():  # noqa: ASYNC110
                    await asyncio.sleep(EMPTY_POLL_SECONDS)
        return count

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()
