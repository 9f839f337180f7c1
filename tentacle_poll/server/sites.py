"""The listeners' sites: aiohttp's ``SockSite``, with connection handlers of our own making.

Both accept in a loop of ours (``accepting.py``: out of descriptors is survived) and answer the
errors aiohttp's HTTP parser finds as JSON problems (``answering_problems``); the comms site
also does its own TLS handshakes and limits (``handshakes.py``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tentacle_poll.server.accepting import AcceptLoop
from tentacle_poll.server.handshakes import Dialled, Gate, Handshake
from tentacle_poll.server.problems import answering_problems
from tentacle_poll.server.shortage import Shortage


class PlainSite(web.BaseSite):
    """HTTP on an already bound socket (the admin API)."""

    __slots__ = ("_shortage", "_sock")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, shortage: Shortage) -> None:
        super().__init__(runner)
        self._sock = sock
        self._shortage = shortage

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._accept_with(self._new_handler)

    def _accept_with(self, protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        loop = AcceptLoop(self._sock, protocol_factory, self._shortage, self.name)
        loop.start()
        self._server = loop  # type: ignore[assignment]  # all aiohttp uses of a server

    def _new_handler(self) -> RequestHandler:
        assert self._runner.server is not None
        return answering_problems(self._runner.server())


class MutualTlsSite(PlainSite):
    """HTTPS whose handshakes are ours (``Handshake``): logged when refused, with a deadline."""

    __slots__ = ("_gate", "_handshakes")

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, shortage: Shortage, gate: Gate
    ) -> None:
        super().__init__(runner, sock, shortage)
        self._gate = gate
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return "https" + super().name.removeprefix("http")

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._accept_with(self._accept)

    async def stop(self) -> None:
        for handshake in list(self._handshakes):
            handshake.cancel()
        await super().stop()

    def _accept(self) -> asyncio.Protocol:
        return Handshake(self._new_handler, self._gate, self._track)

    async def take_dialled(self, sock: socket.socket, dialled: Dialled) -> None:
        """A connection this server opened to a listening target, handled from here on as if
        this port had accepted it: the same handshake, trust, limits and routes."""
        await asyncio.get_running_loop().connect_accepted_socket(
            lambda: Handshake(self._new_handler, self._gate, self._track, dialled), sock
        )

    def _track(self, handshake: asyncio.Task[None]) -> None:
        self._handshakes.add(handshake)
        handshake.add_done_callback(self._handshakes.discard)
