"""Running out of file descriptors (or socket memory): survived, logged sparingly, reported.

The accept loops report each failed accept here, and the handlers each request that failed for
want of a descriptor (it is answered 503: the agent retries, nothing is lost). The log gets one
line a minute at most; the health endpoints report the shortage while it is recent, so a
monitor sees it even when nobody reads the log.
"""

from __future__ import annotations

import errno
import resource
import time
from dataclasses import dataclass, field

from tentacle_poll.server.refusals import RefusalLog

RECENT_SECONDS = 60.0
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass
class Shortage:
    refusals: RefusalLog
    count: int = 0
    last_at: float = field(default=-1e18)  # monotonic
    last_error: str = ""

    def hit(self, what: str, exc: OSError) -> None:
        """``what`` could not be done for want of ``exc``: "accept connections on URL", ..."""
        self.count += 1
        self.last_at = time.monotonic()
        self.last_error = exc.strerror or str(exc)
        self.refusals.refused(
            "accept:resources",
            f"cannot {what}: {self.last_error} (open files limit {_descriptor_limit()}); new "
            "connections wait in the backlog and refused requests are retried until "
            "descriptors free up; raise the limit (LimitNOFILE= in the service unit, or "
            "ulimit -n) or find what holds them (ls /proc/<pid>/fd)",
            "ERROR",
        )

    def problems(self) -> list[str]:
        """What health reports: empty unless a shortage happened within the last minute."""
        ago = time.monotonic() - self.last_at
        if ago > RECENT_SECONDS:
            return []
        return [
            f"out of resources to serve ({self.last_error}; open files limit "
            f"{_descriptor_limit()}), last {ago:.0f} s ago, {self.count} times since start"
        ]


def _descriptor_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
