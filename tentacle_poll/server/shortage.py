"""Running short of file descriptors, of disk space or of the database: survived, logged
sparingly, reported.

The accept loops report each failed accept here, and the handlers each request that failed for
want of a descriptor or of space (it is answered 503 with Retry-After: the agent keeps its spool
and retries, nothing is lost). The log gets one line per condition a minute at most; the health
endpoints report a condition while it is recent, so a monitor sees it even when nobody reads
the log.
"""

from __future__ import annotations

import errno
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tentacle_poll.exceptions import StorageFull, StoreUnavailable
from tentacle_poll.refusals import RefusalLog

RECENT_SECONDS = 60.0
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass
class _Condition:
    count: int = 0
    last_at: float = -1e18  # monotonic
    last_error: str = ""


def condition_of(exc: BaseException) -> str | None:
    """ "descriptors", "disk", "database", or None for an error that is not a shortage."""
    if isinstance(exc, StoreUnavailable):
        return "database"
    if isinstance(exc, StorageFull):
        return "disk"
    if isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE:
        return "disk"
    if isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES:
        return "descriptors"
    return None


@dataclass
class Shortage:
    refusals: RefusalLog
    _conditions: dict[str, _Condition] = field(default_factory=dict)

    def hit(self, what: str, exc: BaseException) -> None:
        """``what`` could not be done for want of what ``exc`` says: "accept connections on
        URL", "answer POST /v1/..."."""
        kind = condition_of(exc) or "descriptors"
        condition = self._conditions.setdefault(kind, _Condition())
        condition.count += 1
        condition.last_at = time.monotonic()
        condition.last_error = getattr(exc, "strerror", None) or str(exc)
        message = f"cannot {what}: {condition.last_error}; {ADVICE[kind]()}"
        self.refusals.refused(f"shortage:{kind}", message, "ERROR")

    def problems(self) -> list[str]:
        """What health reports: the conditions met within the last minute."""
        found = []
        for kind, condition in self._conditions.items():
            ago = time.monotonic() - condition.last_at
            if ago <= RECENT_SECONDS:
                found.append(
                    f"{WHAT[kind]} ({condition.last_error}), last {ago:.0f} s ago, "
                    f"{condition.count} times since start; {ADVICE[kind]()}"
                )
        return found


WHAT = {
    "descriptors": "out of file descriptors",
    "disk": "out of disk space",
    "database": "the database cannot be reached",
}


def _descriptor_advice() -> str:
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (
        f"open files limit {limit}; new connections wait in the backlog and refused requests "
        "are retried until descriptors free up; raise the limit (LimitNOFILE= in the service "
        "unit, or ulimit -n) or find what holds them (ls /proc/<pid>/fd)"
    )


def _disk_advice() -> str:
    return (
        "writes are refused with 503 and the agents keep their output until space is freed; "
        "free space on the server home's disk (old packages: `tentacle-poll package delete`)"
    )


def _database_advice() -> str:
    return (
        "requests are answered 503 and the agents keep their output until it is back; check "
        "that PostgreSQL runs and that this node reaches it (store_url)"
    )


ADVICE: dict[str, Callable[[], str]] = {
    "descriptors": _descriptor_advice,
    "disk": _disk_advice,
    "database": _database_advice,
}
