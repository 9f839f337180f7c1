"""Listening mode's client: the same ``CommsClient`` (the same v1 requests, pins, spool,
retries), whose connections are the ones the server opened to the listening port instead of
ones the agent dials. Only the connector differs: it takes the next ready connection
(agent/connections/listener.py).

A request waits for a connection as long as it takes (no connect timeout): when the server is
away the agent is simply not called, and the first request goes out the moment it calls again,
instead of after a backoff sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiohttp.client_proto import ResponseHandler

from tentacle_poll.agent.connections.listener import Listener
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.config import ListeningSettings
from tentacle_poll.exceptions import ServerUnavailable

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest, ConnectionKey
    from aiohttp.tracing import Trace

# A command's wait for the server: past its refused-connection backoff cap (15 s), and more.
COMMAND_PATIENCE_SECONDS = 60.0
T = TypeVar("T")


class ListeningConnector(aiohttp.BaseConnector):
    def __init__(self, listener: Listener) -> None:
        super().__init__()
        self._listener = listener

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        return await self._listener.connection()

    def _release(
        self, key: ConnectionKey, protocol: ResponseHandler, *, should_close: bool = False
    ) -> None:
        """A connection a request is done with goes back to the listener, not to aiohttp's own
        pool: a request already waiting in ``_create_connection`` would never see it there,
        while the server, counting it as a spare, opens no other (a deadlock found by the
        server-killed test). aiohttp keeps it or closes it; kept, it moves."""
        super()._release(key, protocol, should_close=should_close)
        for handler, _ in self._conns.pop(key, ()):
            self._listener.give_back(handler)


class ListeningClient(CommsClient):
    """The server that connects to this agent, under the label ``https://listening:PORT``."""

    def __init__(self, settings: ListeningSettings, identity_folder: Path) -> None:
        super().__init__(settings.label, settings.thumbprints, identity_folder,
                         connect_timeout=None, name=settings.server)  # fmt: skip
        self.listener = Listener(settings, self._ssl, identity_folder)

    async def start(self) -> None:
        await self.listener.start()

    async def shut_down(self) -> None:
        await super().shut_down()
        await self.listener.close()

    def _new_connector(self) -> aiohttp.BaseConnector:
        return ListeningConnector(self.listener)

    def _route(self) -> dict[str, Any]:
        return {}  # TLS, pins and route are the listener's


async def over_the_next_connection(
    listening: ListeningSettings, identity_folder: Path, send: Callable[[CommsClient], Awaitable[T]]
) -> T:
    """A command's own exchange in listening mode (deregister, rotate-certificate), run while
    the daemon is stopped: the port is opened for it, and ``send`` goes over the first
    connection the server opens."""
    client = ListeningClient(listening, identity_folder)
    await client.start()
    try:
        async with asyncio.timeout(COMMAND_PATIENCE_SECONDS):
            return await send(client)
    except TimeoutError:
        raise ServerUnavailable(
            f"the server that connects to port {listening.port} (none came within "
            f"{COMMAND_PATIENCE_SECONDS:g} s)"
        ) from None
    finally:
        await client.shut_down()
