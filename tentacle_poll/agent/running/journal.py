"""The agent's journal: an append-only, fsync'd record of each task's lifecycle on disk.

    accepted → started → finished → reported      (or accepted → dropped)
    accepted → finished → released                 (given back unstarted: may come again)

"accepted" is written before the agent tells the server, "started" just before the script is
spawned, and "started" again with the script's process group once it runs (so that an agent
that died can end the orphaned group when it comes back; a line in the journal costs no file
of its own). A task id the journal knows is never started again, whatever restarts happen; a
task "started" but not "finished" when the agent comes back was interrupted by the agent's
death. Only ids, states and process groups are written here: never a script, a variable or an
output line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tentacle_poll.protocol.models import ResultRequest

# "released": given back to the server unstarted (confirmed); like "dropped", the task may be
# delivered again and run then, since it never ran here.
Step = Literal["accepted", "started", "finished", "reported", "dropped", "released"]
REDELIVERABLE = ("dropped", "released")
ORDER: dict[str, int] = {"accepted": 0, "started": 1, "finished": 2, "dropped": 3, "reported": 3,
                         "released": 3}  # fmt: skip


@dataclass
class JournalEntry:
    task_id: str
    step: Step
    server: str
    process_group: str = ""  # "PGID BOOT_ID" (workers/process_group.py), once the script runs

    def line(self) -> str:
        fields = {"task": self.task_id, "step": self.step, "server": self.server}
        if self.process_group:
            fields["group"] = self.process_group
        return json.dumps(fields) + "\n"


# Tasks whose lifecycle here is over, remembered (in memory and after compaction) up to this
# many, most recent first: the server never delivers a task again once it ended, so older ones
# need no memory, and an agent that ran a million tasks does not hold a million entries.
ENDED = ("reported", "released", "dropped")
KEEP_ENDED = 1000


class Journal:
    def __init__(self, path: Path) -> None:
        self._path = path
        self.entries: dict[str, JournalEntry] = self._load()
        self._forget_old_ended()
        self._compact()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (kept open for appends)

    def close(self) -> None:
        self._file.close()

    def record(self, task_id: str, step: Step, server: str, process_group: str = "") -> None:
        """Appends one step. "accepted" is made durable (fsync) before this returns: it is the
        step that keeps a task from ever starting twice. Later steps only need to survive the
        agent being killed, which the OS guarantees once they are written; if power loss
        took one, the task would be reported failed, never run again."""
        entry = JournalEntry(task_id, step, server, process_group)
        self._file.write(entry.line())
        self._file.flush()
        if step == "accepted":
            os.fsync(self._file.fileno())
        self.entries.pop(task_id, None)  # re-inserted last: the order is the order of steps
        self.entries[task_id] = entry
        if step in ENDED:
            self._ended += 1
            if self._ended > 2 * KEEP_ENDED:  # now and then, not at every task
                self._forget_old_ended()
                self._file.close()
                self._compact()  # the file shrinks too: it would grow with every task
                self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115

    def _forget_old_ended(self) -> None:
        ended = [task_id for task_id, entry in self.entries.items() if entry.step in ENDED]
        for task_id in ended[: max(len(ended) - KEEP_ENDED, 0)]:
            del self.entries[task_id]
        self._ended = min(len(ended), KEEP_ENDED)

    def blocks(self, task_id: str) -> bool:
        """True when the task must not start (again); a dropped lease, or a task given back
        unstarted, may be delivered anew."""
        entry = self.entries.get(task_id)
        return entry is not None and entry.step not in REDELIVERABLE

    def in_step(self, *steps: Step) -> list[JournalEntry]:
        return [e for e in self.entries.values() if e.step in steps]

    def _load(self) -> dict[str, JournalEntry]:
        entries: dict[str, JournalEntry] = {}
        if not self._path.exists():
            return entries
        for line in self._path.read_text(encoding="utf-8").splitlines():
            try:
                raw = json.loads(line)
                entry = JournalEntry(raw["task"], raw["step"], raw["server"], raw.get("group", ""))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write
            known = entries.get(entry.task_id)
            # Steps never go back, except that a task dropped or given back may be delivered
            # again: its new lifecycle starts over.
            if (
                known is None
                or known.step in REDELIVERABLE
                or ORDER[entry.step] >= ORDER[known.step]
            ):
                entries[entry.task_id] = entry
        return entries

    def _compact(self) -> None:
        """Rewrite the file with the last step of each task (atomic: temp file + rename)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            for entry in self.entries.values():
                handle.write(entry.line())
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self._path)


def _supersedes(entry: JournalEntry, known: JournalEntry | None) -> bool:
    """Steps never go back, except that a task dropped or given back may be delivered again:
    its new lifecycle starts over."""
    if known is None or known.step in REDELIVERABLE:
        return True
    return ORDER[entry.step] >= ORDER[known.step]


def delivered_step(result: ResultRequest | None) -> Step:
    """The step once the server has the result: a task given back unstarted may come again."""
    return "released" if result is not None and result.requeue else "reported"
