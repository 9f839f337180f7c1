"""The listeners' accept loop: ours, so that running out of descriptors is survived quietly.

asyncio's own loop reports every failed ``accept()`` with a traceback and, when descriptors run
out, retries once per pending connection of the backlog and schedules as many restarts: under
``prlimit --nofile=256`` a flood of idle connections produced 347,774 tracebacks in 50 s and
the server stopped answering. Here a failed accept is reported to ``Shortage`` (a log line a
minute at most; health shows it) and accepting pauses, from 50 ms doubling up to 1 s, while the
connections wait in the kernel's backlog; the first success ends the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from loguru import logger

from tentacle_poll.keepalive import accept
from tentacle_poll.server.shortage import OUT_OF_RESOURCES, Shortage

FIRST_PAUSE_SECONDS = 0.05
LONGEST_PAUSE_SECONDS = 1.0


class AcceptLoop:
    """What aiohttp's runner asks of a server (``sockets``, ``close``), accepting in a task."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        shortage: Shortage,
        listener: str,
    ) -> None:
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._shortage = shortage
        self._listener = listener
        self._task: asyncio.Task[None] | None = None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def start(self) -> None:
        self._task = asyncio.create_task(self._accept_forever(), name=f"accept {self._listener}")

    def close(self) -> None:
        if self._task is None or self._task.done():
            self._sock.close()
            return
        # The socket goes once the task has ended, that is once its reader is removed
        # (``keepalive.accept``: cancel-safe, unlike Python 3.11's ``sock_accept``).
        self._task.add_done_callback(lambda _: self._sock.close())
        self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        pause = FIRST_PAUSE_SECONDS
        while True:
            try:
                connection, _ = await accept(self._sock)
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    continue  # one connection's trouble (aborted before accept): next
                self._shortage.hit(f"accept connections on {self._listener}", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE_SECONDS)
                continue
            pause = FIRST_PAUSE_SECONDS
            await self._serve(loop, connection)

    async def _serve(self, loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(self._protocol_factory, connection)
        except OSError as exc:  # gone between accept and now
            logger.debug("{}: a connection closed before it was set up: {}", self._listener, exc)
            connection.close()
