"""Listening mode's port: the server opens TCP connections to it, the agent makes each one a
pinned TLS connection of its own, ready for the next v1 request (agent/connections/listening.py).

The TCP direction is all that differs from polling. On a connection the server opened, the
server first says what it is for (``protocol.routes``' preambles): DIAL, and the agent starts
TLS as the client, with its certificate, accepting only the pinned server thumbprints, exactly
as when it dials out; CERTIFICATE, and the agent shows its certificate as a TLS server and
closes (how a server that was given only the thumbprint learns the certificate: public data).
Anything else is refused and logged, rate-limited, with the peer's address.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import Counter, deque
from pathlib import Path

from aiohttp import ClientConnectionError
from aiohttp.client_proto import ResponseHandler
from loguru import logger

from tentacle_poll.agent.connections.absence import AbsenceWatch
from tentacle_poll.config import ListeningSettings
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.keepalive import accept, listening_socket
from tentacle_poll.protocol.routes import CERTIFICATE_PREAMBLE, DIAL_PREAMBLE, PREAMBLE_BYTES
from tentacle_poll.refusals import RefusalLog, address_text, host_in
from tentacle_poll.tls import PinnedServerMismatch
from tentacle_poll.tls.files import identity_paths
from tentacle_poll.tls.policy import apply_policy

PREAMBLE_SECONDS = 10.0
HANDSHAKE_SECONDS = 10.0
MAX_READY = 64  # connections kept ready for requests; the server is asked for spares only
MAX_STARTING = 32  # connections between accept and ready: beyond, a flood is refused at once
# ...and from one address: a peer that opens connections and stalls them cannot take every
# place, so the server's own connections still get in.
MAX_STARTING_PER_ADDRESS = 8


class NoServerConnection(ClientConnectionError):
    """The listener closed while a request waited for the server to connect."""


class Listener:
    def __init__(self, settings: ListeningSettings, client_context: ssl.SSLContext,
                 identity_folder: Path) -> None:  # fmt: skip
        self.settings = settings
        self._client_context = client_context  # the client's own: pins and rotation apply
        self._identity_folder = identity_folder
        self._ready: deque[ResponseHandler] = deque()
        self._arrived = asyncio.Event()
        self._starting: set[asyncio.Task[None]] = set()
        self._starting_from: Counter[str] = Counter()  # by peer address
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._closed = False
        self.refusals = RefusalLog()
        self.absence = AbsenceWatch(settings.address)
        self.port = 0

    async def start(self) -> None:
        host, port = self.settings.host, self.settings.port
        try:
            self._socket = listening_socket(host, port, backlog=128)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {self.settings.address} for the server: {exc.strerror or exc};"
                " stop what uses the port, or choose another with `tentacle-poll listen --port "
                "PORT` (and give the server the new address with `tentacle-poll targets add ... "
                "--replace`)"
            ) from exc
        self.port = self._socket.getsockname()[1]
        self._accepting = asyncio.create_task(self._accept_forever(), name="listener")
        logger.info("listening for the server on {}", self.settings.address)

    async def close(self) -> None:
        """Stops accepting, closes every ready connection, fails every waiting request."""
        self._closed = True
        self._arrived.set()
        self.absence.close()
        for task in [*self._starting, *([self._accepting] if self._accepting else [])]:
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        if self._accepting is not None:
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._socket is not None:
            self._socket.close()
        while self._ready:
            self._ready.popleft().abort()  # a TLS close_notify exchange would outlive the stop

    async def connection(self) -> ResponseHandler:
        """The next ready connection, waiting for the server to open one."""
        while True:
            while self._ready:
                handler = self._ready.popleft()
                if handler.is_connected():
                    return handler
            if self._closed:
                raise NoServerConnection("the agent is stopping: no connection to the server")
            self._arrived.clear()
            self.absence.waiting()
            await self._arrived.wait()

    def give_back(self, handler: ResponseHandler) -> None:
        """A connection a request is done with: first in line (warm) for the next."""
        if self._closed:
            handler.abort()
            return
        self._ready.appendleft(handler)
        self._arrived.set()

    def ready_count(self) -> int:
        """Ready connections still open (the ones the server closed meanwhile are dropped)."""
        self._ready = deque(handler for handler in self._ready if handler.is_connected())
        return len(self._ready)

    async def _accept_forever(self) -> None:
        assert self._socket is not None
        while True:
            try:
                sock, address = await accept(self._socket)
            except OSError as exc:  # out of descriptors: survived, as the server's port does
                logger.warning("listening port: accept failed ({}); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            self._take(sock, address)

    def _take(self, sock: socket.socket, address: object) -> None:
        peer = address_text(address)
        host = host_in(peer)
        why = self._why_full(host)
        if why:
            self.refusals.refused(
                "listening:full", f"listening port: refused a connection from {peer}: {why}"
            )
            sock.close()
            return
        sock.setblocking(False)
        task = asyncio.create_task(self._start_connection(sock, peer))
        self._starting.add(task)
        self._starting_from[host] += 1
        task.add_done_callback(lambda done: self._started(done, host, sock))

    def _why_full(self, host: str) -> str:
        if self._starting_from[host] >= MAX_STARTING_PER_ADDRESS:
            return f"{MAX_STARTING_PER_ADDRESS} of its connections are starting already"
        if len(self._starting) >= MAX_STARTING or self.ready_count() >= MAX_READY:
            return f"{MAX_STARTING} connections starting or {MAX_READY} ready already"
        return ""

    def _started(self, task: asyncio.Task[None], host: str, sock: socket.socket) -> None:
        if task.cancelled():  # perhaps before its first step, where its own cleanup is
            sock.close()
        self._starting.discard(task)
        self._starting_from[host] -= 1
        if not self._starting_from[host]:
            del self._starting_from[host]

    async def _start_connection(self, sock: socket.socket, peer: str) -> None:
        try:
            async with asyncio.timeout(PREAMBLE_SECONDS):
                purpose = await _read_preamble(sock)
            if purpose == DIAL_PREAMBLE:
                await self._make_ready(sock)
            elif purpose == CERTIFICATE_PREAMBLE:
                await self._show_certificate(sock, peer)
            else:
                raise _NotTheServer("it did not start as a tentacle-poll server does")
        except (OSError, TimeoutError, _NotTheServer) as exc:
            sock.close()
            self._refused(peer, exc)
        except Exception as exc:  # whatever else a peer may provoke: refused, and logged whole
            sock.close()
            logger.opt(exception=exc).warning("listening port: a connection from {} failed", peer)
        except BaseException:  # cancelled: the agent is stopping
            sock.close()
            raise

    async def _make_ready(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        made: list[ResponseHandler] = []
        try:
            _, handler = await loop.create_connection(
                lambda: _appended(made, ResponseHandler(loop)), sock=sock,
                ssl=self._client_context, server_hostname="",
                ssl_handshake_timeout=HANDSHAKE_SECONDS,
            )  # fmt: skip
        except BaseException:
            # Cancelled (a stop) once the handshake is done, asyncio closes the connection with
            # a TLS close_notify exchange, which a stopping agent would leave half done (an
            # unclosed transport): ended at once instead.
            for unfinished in made:
                unfinished.abort()
            raise
        if self._closed:
            handler.abort()
            return
        self._ready.append(handler)
        self._arrived.set()
        self.absence.connected()

    async def _show_certificate(self, sock: socket.socket, peer: str) -> None:
        context = apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        context.load_cert_chain(*identity_paths(self._identity_folder))
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
            asyncio.Protocol, sock, ssl=context, ssl_handshake_timeout=HANDSHAKE_SECONDS
        )
        transport.abort()  # shown: nothing else is said, no TLS shutdown to wait for
        # Not a refusal, but said as rarely: anyone may ask, and the certificate is public.
        self.refusals.refused("listening:certificate", f"listening port: showed this agent's "
                              f"certificate to {peer} (a server enrolling it)", "INFO")  # fmt: skip

    def _refused(self, peer: str, exc: BaseException) -> None:
        if isinstance(exc, PinnedServerMismatch):
            kind, reason = "listening:impostor", f"not the pinned server: {exc}"
        elif isinstance(exc, ssl.SSLError):
            kind, reason = "listening:tls", f"TLS failed ({exc.reason or exc})"
        elif isinstance(exc, TimeoutError):
            kind, reason = "listening:timeout", "it said nothing within the time allowed"
        else:
            kind, reason = "listening:closed", str(exc) or type(exc).__name__
        self.refusals.refused(kind, f"listening port: refused a connection from {peer}: {reason}")
        self.absence.refused()


class _NotTheServer(Exception):
    pass


def _appended(made: list[ResponseHandler], handler: ResponseHandler) -> ResponseHandler:
    made.append(handler)
    return handler


async def _read_preamble(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    received = b""
    while len(received) < PREAMBLE_BYTES:
        chunk = await loop.sock_recv(sock, PREAMBLE_BYTES - len(received))
        if not chunk:
            raise _NotTheServer("it closed the connection before saying what it wanted")
        received += chunk
    return received
