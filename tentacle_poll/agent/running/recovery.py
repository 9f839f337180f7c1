"""What an agent does with its journal and spool when it starts: nothing accepted runs again.

A task "started" but never "finished" was running when the agent died: it is reported failed,
with the output captured until then. A task "accepted" but never "started" did not run: it is
reported failed too (the server may already count it as running). Results that were spooled but
not acknowledged are delivered again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from loguru import logger

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.running.journal import Journal, delivered_step
from tentacle_poll.agent.running.reporter import TaskReporter
from tentacle_poll.agent.running.spool import Spool
from tentacle_poll.protocol.models import Event, ResultRequest
from tentacle_poll.workers.cgroups import CgroupRoot
from tentacle_poll.workers.process_group import group_alive, group_of_record, signal_group
from tentacle_poll.workers.releases import IN_PROGRESS_FILE, ORDER_FILE, Releases

DIED_RUNNING = "agent restarted while the task ran"
DIED_BEFORE_START = "agent restarted before the task started; it did not run"


def repair_releases(applications_root: Path) -> None:
    """Undoes what deploys interrupted by the agent's death left in the release folders."""
    markers = [*applications_root.glob(f"*/*/{IN_PROGRESS_FILE}"),
               *applications_root.glob(f"*/*/{ORDER_FILE}")]  # fmt: skip
    for folder in sorted({marker.parent for marker in markers}):
        releases = Releases(folder.parent.parent, folder.parent.name, folder.name)
        for repaired in releases.repair():
            logger.warning("repaired {}: {}", folder, repaired)


async def end_leftover_cgroups(root: CgroupRoot | None) -> None:
    """Task cgroups an agent that died left: whatever still runs in them is ended."""
    for cgroup in root.leftovers() if root is not None else []:
        killed = await cgroup.kill_all()
        cgroup.remove()
        if killed:
            logger.warning("ended {} processes left in {} by an agent that died", killed,
                           cgroup.path)  # fmt: skip


def fail_interrupted_tasks(journal: Journal, spool: Spool) -> None:
    """Tasks the agent died with: a started one is reported failed with a note in its output;
    one accepted but never started is given back to the server to queue again."""
    for entry in journal.in_step("started"):
        task_spool = spool.task(entry.task_id)
        pgid = group_of_record(entry.process_group) or task_spool.process_group()
        note = DIED_RUNNING + _end_orphans(pgid)
        note_seq = max((e.last_seq for e in task_spool.events()), default=0) + 1
        task_spool.append(Event(seq=note_seq, stream="system", text=note, ts=time.time()))
        task_spool.write_result(
            ResultRequest(state="failed", last_seq=note_seq, reason=DIED_RUNNING)
        )
        journal.record(entry.task_id, "finished", entry.server)
        logger.warning("task {}: {}; reporting it failed", entry.task_id, DIED_RUNNING)
    for entry in journal.in_step("accepted"):
        given_back = ResultRequest(state="failed", last_seq=0, reason=DIED_BEFORE_START,
                                   requeue=True)  # fmt: skip
        spool.task(entry.task_id).write_result(given_back)
        journal.record(entry.task_id, "finished", entry.server)
        logger.warning("task {}: {}; giving it back to the server", entry.task_id,
                       DIED_BEFORE_START)  # fmt: skip


def _end_orphans(pgid: int | None) -> str:
    """The script of a dead agent runs on in its own session: end its whole group."""
    if pgid is None or not group_alive(pgid):
        return ""
    signal_group(pgid, signal.SIGKILL)
    return "; its processes, still running, were ended"


async def deliver_unreported(
    journal: Journal,
    spool: Spool,
    clients: dict[str, CommsClient],
    stop: asyncio.Event,
    max_backoff: float,
) -> None:
    """Sends every spooled result the server has not acknowledged yet, one task at a time."""
    for entry in journal.in_step("finished"):
        client = clients.get(entry.server)
        if client is None:
            logger.error(
                "task {} was for {}, which this agent no longer polls; its result stays in {}",
                entry.task_id,
                entry.server,
                spool.folder,
            )
            continue
        reporter = TaskReporter(client, spool.task(entry.task_id), stop, max_backoff)
        if await reporter.deliver():
            journal.record(entry.task_id, delivered_step(spool.task(entry.task_id).result()),
                           entry.server)  # fmt: skip
            logger.info("delivered the spooled result of task {}", entry.task_id)
