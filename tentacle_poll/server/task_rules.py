"""Which comms call a task's state allows: its state only moves forward, and each agent call is
checked against it (docs/protocol.md has the table).

    queued ──lease──► leased ──accept──► running ──result──► succeeded | failed | timed_out
       ▲                │ └──"failed", no output (turned down)──► failed        | cancelled
       ├──lease expired─┘                   └──silent agent──► lost ──result──► (the real one)
       └──given back unstarted (requeue), from leased or running without output; past its
          deadline it ends expired instead

An accepted task ("running", or "lost" while the server only guesses) takes events and one
result. After it ended, a repeat of what was already stored is acknowledged (a retry whose
answer was lost), anything new is refused.
"""

from __future__ import annotations

from tentacle_poll.protocol.models import Event, ResultRequest, TaskState
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.store import TaskRecord

ACCEPTED = {TaskState.RUNNING, TaskState.LOST}


def check_events(task: TaskRecord, events: list[Event]) -> bool:
    """True when the events are to be stored; False when they only repeat stored lines of an
    ended task (acknowledge, store nothing); 409 otherwise."""
    if task.state in ACCEPTED:
        return True
    if task.state.is_final and task.started_at is not None:
        if all(event.last_seq <= task.last_seq for event in events):
            return False
        raise ProblemError(409, "task ended", f"task {task.id} ended {task.state}; no more output")
    raise _not_accepted(task, "output")


def check_result(task: TaskRecord, result: ResultRequest) -> bool:
    """True when the result is to be stored; False when it repeats the stored one; 409 else.

    A task delivered but never accepted takes one result only: "failed" with no output, the
    agent turning it down before starting (an envelope it cannot read, an accept the server
    never confirmed)."""
    if result.requeue:
        return _check_requeue(task, result)
    if task.state in ACCEPTED:
        return True
    if task.state.is_final:
        same = (task.state, task.exit_code, task.reason) == (
            result.state,
            result.exit_code,
            result.reason,
        )
        if same:
            return False
        raise ProblemError(
            409,
            "result already recorded",
            f"task {task.id} ended {task.state} (exit code {task.exit_code}); a result is final",
        )
    if result.state == "failed" and result.last_seq == 0:
        return True
    raise _not_accepted(task, "a result other than turning it down")


def _check_requeue(task: TaskRecord, result: ResultRequest) -> bool:
    """A task given back unstarted: from leased or running with no output; a repeat finds it
    queued again (acknowledged, nothing to do)."""
    if result.last_seq != 0 or task.last_seq != 0:
        raise ProblemError(409, "task has output", f"task {task.id} ran: it cannot be given back")
    if task.state in (TaskState.LEASED, TaskState.RUNNING):
        return True
    if task.state in (TaskState.QUEUED, TaskState.EXPIRED):
        return False
    raise ProblemError(409, "task ended", f"task {task.id} ended {task.state}")


def check_file(task: TaskRecord, kind: str) -> None:
    """A file comes up only for a running fetch_file task."""
    if kind != "fetch_file":
        raise ProblemError(409, "not a file task", f"task {task.id} is a {kind} task")
    if task.state not in ACCEPTED:
        raise ProblemError(409, "task not running", f"task {task.id} is {task.state}")


def _not_accepted(task: TaskRecord, what: str) -> ProblemError:
    return ProblemError(
        409,
        "task not accepted",
        f"task {task.id} is {task.state}: {what} only after it was accepted",
    )
