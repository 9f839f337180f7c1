"""Refusals the operator should see, without letting a scanner or a broken agent flood the log.

One line per kind of refusal at once, then at most one per WINDOW_SECONDS for that kind, with
how many were folded into it. Never a credential: callers pass reasons and addresses only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from loguru import logger

WINDOW_SECONDS = 60.0


@dataclass
class _Kind:
    last_logged: float
    folded: int = 0


@dataclass
class RefusalLog:
    window: float = WINDOW_SECONDS
    _kinds: dict[str, _Kind] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # every refusal, by kind (for metrics)

    def refused(self, kind: str, message: str, level: str = "WARNING") -> None:
        """``kind`` groups refusals for rate limiting; ``message`` says who and why."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen.last_logged < self.window:
            seen.folded += 1
            return
        folded = ""
        if seen is not None and seen.folded:
            folded = f" ({seen.folded} more like it in the last {self.window:g} s)"
        self._kinds[kind] = _Kind(last_logged=now)
        logger.log(level, "{}{}", message, folded)


def peer_of(transport: object) -> str:
    """``host:port`` of a transport's peer, for log lines."""
    get_extra_info = getattr(transport, "get_extra_info", None)
    return address_text(get_extra_info("peername") if get_extra_info else None)


def address_text(address: object) -> str:
    """``host:port`` of a socket address (an IPv6 host in brackets), for log lines."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return "an unknown address"


def host_of(transport: object) -> str:
    """The peer's address without its port: what limits per address count by."""
    return host_in(peer_of(transport))


def host_in(address: str) -> str:
    """The host of an ``address_text``, without port or brackets."""
    return address.rpartition(":")[0].strip("[]") or "unknown"
