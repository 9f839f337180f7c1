"""The comms port's connections up to their first HTTP byte: accept, TLS handshake, hand over.

asyncio's own TLS server drops a failed handshake silently (a refused client certificate, a
scanner, a plain-HTTP client, a timeout). Here each accepted connection is upgraded by
``loop.start_tls`` in code of ours, so every refusal is logged with the peer's address
(rate-limited, ``refusals.py``) and every handshake has a deadline; a connection that completes
is handed to aiohttp's request handler exactly as its own TLS server would hand it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tentacle_poll.refusals import RefusalLog, host_of, peer_of
from tentacle_poll.server.connections import OpenConnections
from tentacle_poll.server.strangers import Strangers
from tentacle_poll.tls import thumbprint_of_der

HANDSHAKE_SECONDS = 30.0  # generous: during a reconnect storm a handshake waits its turn


@dataclass
class Gate:
    """What the comms port checks a new connection against, and where it records it."""

    context: ssl.SSLContext
    refusals: RefusalLog
    connections: OpenConnections  # by client certificate, to cut them when it is withdrawn
    strangers: Strangers  # connections without a certificate: limited


@dataclass
class Dialled:
    """A connection this server opened to a listening target (server/listening.py): told when
    it is handed over (``up``: its TLS transport, or why not) and when it ends (``lost``)."""

    up: asyncio.Future[asyncio.Transport]
    lost: Callable[[], None]

    def failed(self, reason: str) -> None:
        if not self.up.done():
            self.up.set_exception(ConnectionError(reason))


class Handshake(asyncio.Protocol):
    """A new connection's protocol until its handshake is done; then aiohttp's handler takes
    over. It also holds the plaintext that arrived with the handshake's last flight (a TLS 1.3
    client sends its request right behind it) until the handler is in place."""

    def __init__(
        self,
        handler_factory: Callable[[], asyncio.Protocol],
        gate: Gate,
        track: Callable[[asyncio.Task[None]], None],
        dialled: Dialled | None = None,
    ) -> None:
        self._dialled = dialled
        self._handler_factory = handler_factory
        self._gate = gate
        self._track = track
        self._early: list[bytes] = []
        self._eof = False
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello is for the TLS layer, not for this protocol
        upgrade = asyncio.ensure_future(self._upgrade(transport))
        upgrade.add_done_callback(lambda done: _abort_if_cancelled(done, transport))
        if self._dialled is not None:
            dialled = self._dialled
            upgrade.add_done_callback(lambda _: dialled.failed("the TLS handshake did not finish"))
        self._track(upgrade)

    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> bool:
        self._eof = True
        return True  # the handler decides, once in place

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        peer = peer_of(transport)
        lost = self._dialled.lost if self._dialled else None
        try:
            tls = await start_tls_telling_refusals(transport, self, self._gate.context, lost)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            kind, reason = describe_handshake_failure(exc)
            if self._dialled is not None:
                self._dialled.failed(f"the TLS handshake failed: {reason}")
            # A connection closed before it said anything is a TCP health check or a scan.
            level = "DEBUG" if kind == "handshake:closed" else "WARNING"
            message = f"comms port: refused a TLS handshake from {peer}: {reason}"
            self._gate.refusals.refused(kind, message, level)
            transport.abort()
            return
        if tls is None or self._lost:
            return
        self._hand_over(tls)

    def _hand_over(self, tls: asyncio.Transport) -> None:
        der = tls.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if self._dialled is not None and not der:
            self._dialled.failed("it presented no certificate")  # a listening agent always does
            tls.abort()
            return
        if der:
            self._gate.connections.add(thumbprint_of_der(der), tls)
        elif not self._gate.strangers.admit(tls, host_of(tls)):  # registration, or a stranger
            return
        handler = self._handler_factory()
        tls.set_protocol(handler)
        handler.connection_made(tls)
        for data in self._early:
            handler.data_received(data)
        if self._eof:
            handler.eof_received()
        if self._dialled is not None and not self._dialled.up.done():
            self._dialled.up.set_result(tls)


def _abort_if_cancelled(upgrade: asyncio.Task[None], transport: asyncio.Transport) -> None:
    """A stop can cancel an upgrade before its first step, and then none of its own cleanup
    runs: the connection would be left open (a ResourceWarning at collection)."""
    if upgrade.cancelled():
        transport.abort()  # nothing if its cleanup closed it already


def describe_handshake_failure(exc: BaseException) -> tuple[str, str]:
    """(kind for rate limiting, reason in words) of a failed server-side handshake."""
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if reason == "CERTIFICATE_VERIFY_FAILED":
            return "handshake:certificate", (
                "its client certificate is not registered here (a deleted or replaced target, "
                "a certificate rotated out, or a certificate signed by another one)"
            )
        if "ALERT" in reason:
            return "handshake:alert", f"the client refused the handshake ({exc.reason})"
        return "handshake:tls", f"not a usable TLS client ({exc.reason or exc})"
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "handshake:timeout", f"no complete handshake within {HANDSHAKE_SECONDS:g} s"
    return (
        "handshake:closed",
        f"the connection closed during the handshake ({exc or type(exc).__name__})",
    )


class _AlertingSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, except that a failed handshake sends OpenSSL's alert before the
    connection closes (asyncio drops it): the agent then reads "certificate unknown" and can say
    so, instead of guessing from a reset. Private hooks, checked by ``test_connection_causes``."""

    lost: Callable[[], None] | None = None  # told when the connection ends (a dialled one)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.lost is not None:
            self.lost()

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):
                self._process_outgoing()  # type: ignore[attr-defined]  # the alert, then close
        super()._on_handshake_complete(handshake_exc)


async def start_tls_telling_refusals(
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    lost: Callable[[], None] | None = None,
) -> asyncio.Transport:
    """``loop.start_tls(server_side=True)`` with ``_AlertingSSLProtocol``: the same steps as
    asyncio's own (Python 3.11-3.13)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()
    tls = _AlertingSSLProtocol(
        loop,
        protocol,
        context,
        waiter,
        server_side=True,
        ssl_handshake_timeout=HANDSHAKE_SECONDS,  # type: ignore[arg-type]  # a float works
        call_connection_made=False,
    )
    tls.lost = lost
    transport.pause_reading()
    transport.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return tls._app_transport
