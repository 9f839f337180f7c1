"""Connections without a client certificate: few, and short.

Registration and diagnose's probe come without a certificate; so do scanners, and anyone who
would hold connections open to use up the server's descriptors. Each such connection may send
one request (it is closed after the answer) within ``stranger_seconds`` of its handshake; at
most ``strangers_per_address`` of them are open from one address and ``strangers_total`` in all.
One over a limit is answered 503 with Retry-After and closed. Registered agents are not counted.

Weak references: a connection closed by either side stops counting by itself.
"""

from __future__ import annotations

import asyncio
import weakref

from tentacle_poll.config import ServerSettings
from tentacle_poll.protocol.models import Problem
from tentacle_poll.protocol.routes import PROBLEM_CONTENT_TYPE
from tentacle_poll.refusals import RefusalLog

RETRY_AFTER_SECONDS = 5


class Strangers:
    def __init__(self, settings: ServerSettings, refusals: RefusalLog) -> None:
        self._settings = settings
        self._refusals = refusals
        self._all: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()
        self._by_address: dict[str, weakref.WeakSet[asyncio.Transport]] = {}

    def admit(self, transport: asyncio.Transport, address: str) -> bool:
        """Counts the connection and starts its clock, or answers 503 and closes it."""
        from_there = self._by_address.setdefault(address, weakref.WeakSet())
        limit = self._limit_reached(from_there)
        if limit:
            self._refuse(transport, address, limit)
            return False
        self._all.add(transport)
        from_there.add(transport)
        loop = asyncio.get_running_loop()
        deadline = self._settings.stranger_seconds
        loop.call_later(deadline, self._expire, weakref.ref(transport), address)
        return True

    def open_count(self) -> int:
        return _open(self._all)

    def _limit_reached(self, from_there: weakref.WeakSet[asyncio.Transport]) -> str:
        if _open(from_there) >= self._settings.strangers_per_address:
            return f"{self._settings.strangers_per_address} from this address"
        if _open(self._all) >= self._settings.strangers_total:
            return f"{self._settings.strangers_total} in all"
        return ""

    def _refuse(self, transport: asyncio.Transport, address: str, limit: str) -> None:
        self._refusals.refused(
            "strangers:limit",
            f"comms port: refused a connection without a client certificate from {address}: "
            f"already {limit} open (strangers_per_address, strangers_total in server.toml)",
        )
        problem = Problem(
            title="too many connections without a certificate",
            status=503,
            detail=f"this server allows {limit} at once; retry in {RETRY_AFTER_SECONDS} s",
        )
        transport.write(_raw_response(problem))
        transport.close()  # after the answer is written

    def _expire(self, reference: weakref.ref[asyncio.Transport], address: str) -> None:
        transport = reference()
        if transport is not None and not transport.is_closing():
            transport.abort()
        if not _open(self._by_address.get(address, weakref.WeakSet())):
            self._by_address.pop(address, None)


def _open(transports: weakref.WeakSet[asyncio.Transport]) -> int:
    return sum(1 for transport in transports if not transport.is_closing())


def _raw_response(problem: Problem) -> bytes:
    """A whole HTTP answer, written before any handler exists for the connection."""
    body = problem.model_dump_json().encode()
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body
