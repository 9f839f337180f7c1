"""Listening mode's silence, said: a listening agent dials nothing, so when the server stops
connecting (stopped, or blocked by a firewall on the way in) no request fails loudly; requests
just wait. After a while without a connection the agent says so once, with what to check, and
says when the server is back."""

from __future__ import annotations

import asyncio

from loguru import logger

# Past the server's longest wait between attempts at a target refusing it (15 s) and at an
# unreachable one (listening_backoff_max_seconds, 60 s by default).
ABSENCE_WARNING_SECONDS = 120.0


class AbsenceWatch:
    def __init__(self, address: str) -> None:
        self._address = address
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._said = False
        self._refused = 0  # connections refused while waiting: a server may be failing the pins

    def waiting(self) -> None:
        """A request waits for the server to connect."""
        if self._waiting_since is None:
            loop = asyncio.get_running_loop()
            self._waiting_since, self._refused = loop.time(), 0
            self._timer = loop.call_later(ABSENCE_WARNING_SECONDS, self._say_absent)

    def refused(self) -> None:
        """A connection to the port was refused (the listener logs why, rate-limited)."""
        if self._waiting_since is not None:
            self._refused += 1

    def connected(self) -> None:
        """A connection from the server is ready."""
        self.close()
        if self._said and self._waiting_since is not None:
            waited = asyncio.get_running_loop().time() - self._waiting_since
            logger.info("the server connected to {} (after {:.0f} s without a connection)",
                        self._address, waited)  # fmt: skip
        self._waiting_since, self._said = None, False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _say_absent(self) -> None:
        self._timer, self._said = None, True
        logger.warning("no server has connected to {} for {:.0f} s: {}", self._address,
                       ABSENCE_WARNING_SECONDS, _why_absent(self._refused))  # fmt: skip


def _why_absent(refused: int) -> str:
    if refused:
        return (
            f"{refused} connections came and were refused (the 'listening port: refused' lines "
            "say why: another server, or one that does not trust this agent's certificate); "
            "`tentacle-poll targets` on the server says why from its side"
        )
    return (
        "the server is stopped, cannot reach this address (a firewall on the way in), or has "
        "this agent under another address or not at all (not added with `tentacle-poll targets "
        "add`, or deleted); `tentacle-poll targets` there says which"
    )
