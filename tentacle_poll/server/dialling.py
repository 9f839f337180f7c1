"""Opening a TCP connection to a listening target, directly or through an HTTP CONNECT proxy,
then saying what it is for (the preamble, ``protocol.routes``). TLS is not done here: the comms
port's own handshake takes the socket (``MutualTlsSite.take_dialled``), as if it had accepted it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from urllib.parse import unquote, urlsplit

from tentacle_poll.config import ENV_PREFIX
from tentacle_poll.keepalive import enable_keepalive
from tentacle_poll.proxies import ProxyRoute, proxy_route
from tentacle_poll.refusals import address_text

PROXY_PASSWORD_VARIABLE = f"{ENV_PREFIX}LISTENING_PROXY_PASSWORD"
MAX_PROXY_ANSWER = 16 * 1024
CREDENTIALS_ADVICE = "check listening_proxy's user and password"
REACH_ADVICE = "the proxy cannot reach the target: check its address, and its firewall"
PROXY_ADVICE = {
    "401": CREDENTIALS_ADVICE,
    "407": CREDENTIALS_ADVICE,
    "403": "the proxy does not allow a tunnel to this host and port; squid, for one, allows "
    "CONNECT to port 443 only unless the port is added to its SSL_ports",
    "502": REACH_ADVICE,
    "503": REACH_ADVICE,
    "504": REACH_ADVICE,
}


class DialFailed(Exception):
    """Why the target could not be reached, in words; ``refused``: nothing listens there (the
    agent is restarting), retried sooner than a silent host (the agents' rule,
    agent/connections/backoff.py)."""

    def __init__(self, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


def listening_proxy(url: str, environ: dict[str, str] | None = None) -> ProxyRoute | None:
    """The proxy of the ``listening_proxy`` setting; credentials go in a header, never in logs."""
    if not url:
        return None
    parts = urlsplit(url)
    password = (environ or dict(os.environ)).get(PROXY_PASSWORD_VARIABLE) or (
        unquote(parts.password) if parts.password else None
    )
    user = unquote(parts.username) if parts.username else None
    return proxy_route(parts.hostname or "", parts.port or 3128, user, password)


def target_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 10933


async def dial(
    url: str, proxy: ProxyRoute | None, preamble: bytes, timeout: float
) -> socket.socket:
    """A connected socket to the target at ``url`` that has been told ``preamble``."""
    host, port = target_address(url)
    opened: list[socket.socket] = []  # closed again unless handed back
    try:
        async with asyncio.timeout(timeout):
            if proxy is None:
                sock = await _connect(host, port, opened)
            else:
                sock = await _connect(proxy.host, proxy.port, opened, via_proxy=True)
                await _through(sock, proxy, host, port)
            await asyncio.get_running_loop().sock_sendall(sock, preamble)
            opened.clear()
            return sock
    except TimeoutError:
        raise DialFailed(
            f"no connection to {address_text((host, port))} within {timeout:g} s (the host is "
            "down, or a firewall drops the packets: the server must be allowed to reach it)"
        ) from None
    finally:  # a failure, a timeout or a stop (cancelled) half-way
        for sock in opened:
            sock.close()


async def _connect(
    host: str, port: int, opened: list[socket.socket], via_proxy: bool = False
) -> socket.socket:
    loop = asyncio.get_running_loop()
    what = f"the proxy {address_text((host, port))}" if via_proxy else address_text((host, port))
    try:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DialFailed(f"cannot resolve {host} ({exc})") from None
    errors: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        opened.append(sock)
        sock.setblocking(False)
        enable_keepalive(sock)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            opened.remove(sock)
            sock.close()
            errors.append(exc)
    refused = all(isinstance(e, ConnectionRefusedError) for e in errors)
    hint = "is the agent running, listening (`tentacle-poll listen`) on that port?"
    if via_proxy:
        hint = "is the proxy running? (listening_proxy in server.toml)"
    reason = "connection refused" if refused else (errors[0].strerror or str(errors[0]))
    raise DialFailed(
        f"cannot connect to {what}: {reason}; {hint}", refused=refused and not via_proxy
    )


async def _through(sock: socket.socket, proxy: ProxyRoute, host: str, port: int) -> None:
    """An HTTP CONNECT tunnel to host:port through the proxy on ``sock``."""
    loop = asyncio.get_running_loop()
    authority, via = address_text((host, port)), address_text((proxy.host, proxy.port))
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in proxy.headers.items()]
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = await loop.sock_recv(sock, 1024)  # byte by byte is not needed: the agent
        if not chunk or len(answer) > MAX_PROXY_ANSWER:  # speaks only after the preamble
            raise DialFailed(f"the proxy {via} closed the tunnel to {authority}")
        answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    status = status_line.split(" ")[1] if status_line.count(" ") >= 1 else "?"
    if status != "200":
        advice = f" ({PROXY_ADVICE[status]})" if status in PROXY_ADVICE else ""
        raise DialFailed(f"the proxy {via} refused a tunnel to {authority}: {status_line}{advice}")
