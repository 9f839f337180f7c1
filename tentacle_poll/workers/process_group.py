"""Start a child in its own process group and end the whole group: interrupt, grace, kill."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import Callable
from pathlib import Path

GONE_TIMEOUT = 5.0


def group_record(pgid: int) -> str:
    """The group with this boot's id, to be kept on disk: after a reboot the number may name
    an unrelated group, which must not be killed."""
    return f"{pgid} {_boot_id()}"


def group_of_record(record: str) -> int | None:
    """The group a ``group_record`` names, if it was made in this boot of the machine."""
    pgid, _, boot = record.partition(" ")
    return int(pgid) if pgid.isdigit() and boot == _boot_id() else None


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def group_alive(pgid: int) -> bool:
    """True while a process of the group is running; zombies waiting to be reaped do not count."""
    if not _group_signalable(pgid):
        return False  # the common case, answered by one system call
    if not Path("/proc").is_dir():
        return True
    return bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """Running (non-zombie) processes of the group, read from /proc."""
    return [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if _running_in_group(stat, pgid)
    ]


def _running_in_group(stat_path: Path, pgid: int) -> bool:
    try:
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat_path.read_text().rpartition(")")[2].split()
    except OSError:  # the process ended while we looked
        return False
    return fields[0] not in ("Z", "X") and int(fields[2]) == pgid


def _group_signalable(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def end_group(
    pgid: int,
    exited: asyncio.Future[None],
    grace_seconds: float,
    say: Callable[[str], None] | None = None,
) -> None:
    """SIGTERM the group, give the leader ``grace_seconds`` to exit, then SIGKILL the group;
    ``say`` tells what was done, for the task's output.

    SIGTERM rather than SIGINT: non-interactive shells start background jobs with SIGINT
    ignored, so only SIGTERM reaches a script's whole tree. Idempotent.
    """
    report = say or (lambda _: None)
    report(f"sending SIGTERM to {_count(group_members(pgid))} of the task")
    signal_group(pgid, signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + grace_seconds
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(exited), grace_seconds)
    # The others of the group may still be ending (a subshell whose child just died): they
    # have what is left of the grace too, instead of being counted as survivors at once.
    await _group_gone(pgid, max(deadline - asyncio.get_running_loop().time(), 0.0))
    remaining = group_members(pgid)
    if remaining:
        report(f"sending SIGKILL to {_count(remaining)} still running after the "
               f"{grace_seconds:g} s grace")  # fmt: skip
    elif grace_seconds:
        report("every process ended within the grace period")
    signal_group(pgid, signal.SIGKILL)
    await _group_gone(pgid, GONE_TIMEOUT)


def _count(pids: list[int]) -> str:
    return "1 process" if len(pids) == 1 else f"{len(pids)} processes"


async def _group_gone(pgid: int, timeout: float) -> None:
    """Waits until every killed member has really exited (SIGKILL is not instantaneous)."""
    if not Path("/proc").is_dir():
        return
    exits = [watch_exit(pid) for pid in group_members(pgid)]
    if exits:
        await asyncio.wait(exits, timeout=timeout)
    for exit_watch in exits:
        exit_watch.cancel()


def watch_exit(pid: int) -> asyncio.Future[None]:
    """A future that resolves when ``pid`` exits, whether or not its pipes are still open.

    On 3.11 ``Process.wait()`` also waits for every pipe to close, so a grandchild holding
    stdout would hide the script's exit; a pidfd becomes readable at the exit itself.
    """
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # already exited and reaped
        exited.set_result(None)
        return exited

    def close_pidfd(_: asyncio.Future[None]) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    exited.add_done_callback(close_pidfd)
    loop.add_reader(fd, on_exit)
    return exited
