"""Open comms connections by client certificate, so that a certificate that stops being trusted
(a target replaced with --replace, deleted, or its rotated-out certificate's overlap over) is cut
off at once: its connections closed, its held polls ended with nothing leased to them.

Weak references: a closed connection leaves the registry by itself.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable

from loguru import logger


class OpenConnections:
    def __init__(self) -> None:
        self._by_thumbprint: dict[str, weakref.WeakSet[asyncio.Transport]] = {}

    def add(self, thumbprint: str, transport: asyncio.Transport) -> None:
        self._by_thumbprint.setdefault(thumbprint, weakref.WeakSet()).add(transport)

    def cut(self, thumbprints: Iterable[str]) -> int:
        """Closes every connection made with these certificates; returns how many."""
        cut = 0
        for thumbprint in thumbprints:
            for transport in list(self._by_thumbprint.pop(thumbprint, ())):
                if not transport.is_closing():
                    transport.abort()
                    cut += 1
        if cut:
            logger.info("closed {} connections of certificates no longer trusted", cut)
        return cut
