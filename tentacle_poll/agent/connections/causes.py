"""What went wrong on the way to a server, in words: every aiohttp, ssl and socket error an agent
call can meet becomes one ``CommunicationError`` whose message names the cause (the proxy's
answer, the TLS alert, a reset, a close, a timeout) and where it happened.

The agent's certificate is blamed only when the server's TLS alert says so: a reset or a close
may as well be a proxy or a firewall cutting connections.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from dataclasses import dataclass

import aiohttp

from tentacle_poll.exceptions import (
    CertificateRejected,
    CommunicationError,
    ConnectionCut,
    ProxyRefused,
    ServerIdentityMismatch,
    ServerUnavailable,
)
from tentacle_poll.proxies import ProxyRoute
from tentacle_poll.tls import PinnedServerMismatch

PROXY_HINTS = {
    407: "check the proxy username and password",
    403: "the proxy does not allow a tunnel to this host and port",
    502: "the proxy could not reach the server",
    503: "the proxy could not reach the server",
}
# TLS alerts by which a server says it will not take the client's certificate.
CERTIFICATE_ALERTS = frozenset(
    {
        "UNKNOWN_CA",
        "CERTIFICATE_UNKNOWN",
        "BAD_CERTIFICATE",
        "CERTIFICATE_REQUIRED",
        "CERTIFICATE_EXPIRED",
        "CERTIFICATE_REVOKED",
        "UNSUPPORTED_CERTIFICATE",
        "ACCESS_DENIED",
    }
)
DIAGNOSE = "`tentacle-poll diagnose` tests each step"


@dataclass(frozen=True)
class Route:
    """Where a call went: the server's URL, through which proxy, with a certificate or not."""

    url: str
    proxy: ProxyRoute | None
    with_certificate: bool

    @property
    def through(self) -> str:
        return f" through the proxy {self.proxy.url}" if self.proxy else ""


def communication_error(exc: BaseException, route: Route) -> CommunicationError:
    for describe in (_proxy_error, _server_identity, _tls_alert, _tls_failure, _cut, _timeout):
        error = describe(exc, route)
        if error is not None:
            return error
    refused = _find_cause(exc, ConnectionRefusedError) is not None
    return ServerUnavailable(f"cannot reach {route.url}: {describe_cause(exc)}", refused=refused)


def _proxy_error(exc: BaseException, route: Route) -> CommunicationError | None:
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        hint = PROXY_HINTS.get(exc.status, "see the proxy's log")
        return ProxyRefused(
            f"the proxy {_proxy_url(route)} refused the tunnel to {route.url}: "
            f"HTTP {exc.status} {exc.message}; {hint}"
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return ProxyRefused(f"cannot reach the proxy {_proxy_url(route)}: {describe_cause(exc)}")
    return None


def _server_identity(exc: BaseException, route: Route) -> CommunicationError | None:
    mismatch = _find_cause(exc, PinnedServerMismatch)
    if not isinstance(mismatch, PinnedServerMismatch):
        return None
    return ServerIdentityMismatch(
        f"refusing {route.url}: {mismatch}; check the thumbprint this agent was registered "
        "with (`tentacle-poll show-config`)",
        actual_thumbprint=mismatch.actual,
    )


def _tls_alert(exc: BaseException, route: Route) -> CommunicationError | None:
    error = _find_cause(exc, ssl.SSLError)
    reason = (getattr(error, "reason", None) or "").upper()
    if "_ALERT_" not in reason:
        return None
    alert = reason.split("_ALERT_", 1)[1]
    words = alert.replace("_", " ").lower()
    if alert in CERTIFICATE_ALERTS and route.with_certificate:
        return CertificateRejected(
            f'{route.url} did not accept this agent\'s certificate (TLS alert "{words}"): it is '
            "not registered there, or no longer (target deleted, certificate replaced or "
            f"rotated out); {DIAGNOSE}, or register again (`tentacle-poll register`)"
        )
    return ServerUnavailable(
        f'the TLS handshake with {route.url}{route.through} ended with the alert "{words}"; '
        f"{DIAGNOSE}"
    )


def _tls_failure(exc: BaseException, route: Route) -> CommunicationError | None:
    error = _find_cause(exc, ssl.SSLError)
    if error is None:
        return None
    if "WRONG_VERSION_NUMBER" in str(error):
        return ServerUnavailable(
            f"{route.url}{route.through} does not speak TLS: is this the admin port? Agents use "
            "the comms port (10943 by default)"
        )
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return _closed_during_handshake(route)
    return ServerUnavailable(f"TLS with {route.url}{route.through} failed: {describe_cause(error)}")


def _cut(exc: BaseException, route: Route) -> CommunicationError | None:
    """A reset or a close, before TLS finished (connect phase) or before the answer."""
    connecting = isinstance(exc, aiohttp.ClientConnectorError)
    if _find_cause(exc, ConnectionResetError) is not None:
        if connecting:
            return _closed_during_handshake(route, "reset")
        return ConnectionCut(
            f"the connection to {route.url}{route.through} was reset before the answer: "
            f"{_who_cuts(route)}; {DIAGNOSE}"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ConnectionCut(
            f"{route.url}{route.through} closed the connection before answering: "
            f"{_who_cuts(route)}; {DIAGNOSE}"
        )
    return None


def _timeout(exc: BaseException, route: Route) -> CommunicationError | None:
    if not isinstance(exc, asyncio.TimeoutError):
        return None
    return ServerUnavailable(f"{route.url}{route.through} did not answer in time (timed out)")


def _closed_during_handshake(route: Route, how: str = "closed") -> ConnectionCut:
    if route.proxy is not None:
        return ConnectionCut(
            f"the proxy {route.proxy.url} opened the tunnel to {route.url}, then the connection "
            f"was {how} before the TLS handshake finished: the proxy (or a firewall behind it) "
            f"cuts such connections; see the proxy's log; {DIAGNOSE}"
        )
    return ConnectionCut(
        f"the connection to {route.url} was {how} during the TLS handshake: a firewall or load "
        f"balancer in between, or not the comms port; {DIAGNOSE}"
    )


def _who_cuts(route: Route) -> str:
    if route.proxy is not None:
        return "the server restarting, or the proxy (or a firewall) cutting connections"
    return "the server restarting, or a firewall or load balancer cutting connections"


def _proxy_url(route: Route) -> str:
    return route.proxy.url if route.proxy else "(none)"


def _find_cause(exc: BaseException | None, wanted: type[BaseException]) -> BaseException | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, wanted):
            return exc
        exc = getattr(exc, "os_error", None) or exc.__cause__ or exc.__context__
        seen += 1
    return None


def describe_cause(exc: BaseException) -> str:
    """An error in words, never empty, without the Python tuples some carry."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is it running, and is the port right?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    reason = getattr(exc, "reason", None)  # not every SSLError has one
    if isinstance(exc, ssl.SSLError) and reason:
        return str(reason).replace("_", " ").lower()
    number = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and number:
        return os.strerror(number)
    return str(exc) or type(exc).__name__
