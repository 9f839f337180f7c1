"""The listeners' sites: aiohttp's ``SockSite``, with connection handlers of our own making.

Both answer the errors aiohttp's HTTP parser finds as JSON problems (``answering_problems``);
the comms site also does its own TLS handshakes (``handshakes.py``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tentacle_poll.server.connections import OpenConnections
from tentacle_poll.server.handshakes import Handshake
from tentacle_poll.server.problems import answering_problems
from tentacle_poll.server.refusals import RefusalLog


class PlainSite(web.BaseSite):
    """HTTP on an already bound socket (the admin API)."""

    __slots__ = ("_sock",)

    def __init__(self, runner: web.BaseRunner, sock: socket.socket) -> None:
        super().__init__(runner)
        self._sock = sock

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_handler, sock=self._sock)

    def _new_handler(self) -> RequestHandler:
        assert self._runner.server is not None
        return answering_problems(self._runner.server())


class MutualTlsSite(PlainSite):
    """HTTPS whose handshakes are ours (``Handshake``): logged when refused, with a deadline."""

    __slots__ = ("_connections", "_context", "_handshakes", "_refusals")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        context: ssl.SSLContext,
        refusals: RefusalLog,
        connections: OpenConnections,
    ) -> None:
        super().__init__(runner, sock)
        self._context = context
        self._refusals = refusals
        self._connections = connections
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return "https" + super().name.removeprefix("http")

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, sock=self._sock)

    async def stop(self) -> None:
        for handshake in list(self._handshakes):
            handshake.cancel()
        await super().stop()

    def _accept(self) -> asyncio.Protocol:
        return Handshake(
            self._new_handler, self._context, self._refusals, self._track, self._connections
        )

    def _track(self, handshake: asyncio.Task[None]) -> None:
        self._handshakes.add(handshake)
        handshake.add_done_callback(self._handshakes.discard)
