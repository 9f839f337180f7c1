"""TCP keepalive for long-poll connections, and the listening sockets' accept, shared by agent
and server (plain helpers, no policy).

A held poll sends nothing for up to a hold period; without keepalive a connection cut by a
firewall or a dead peer is only noticed at the next read timeout. With these settings the
kernel gives up on a silent peer after about 10 + 3 x 5 = 25 seconds.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

IDLE_SECONDS = 10
INTERVAL_SECONDS = 5
PROBES = 3


def enable_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", IDLE_SECONDS),
        ("TCP_KEEPINTVL", INTERVAL_SECONDS),
        ("TCP_KEEPCNT", PROBES),
    ):
        if hasattr(socket, option):  # Linux has all three; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def listening_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening socket whose accepted connections inherit the keepalive settings (Linux
    copies them at accept), so no per-request system call is needed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    enable_keepalive(sock)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def keepalive_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """A ``socket_factory`` for aiohttp's TCPConnector."""
    family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=kind, proto=proto)
    enable_keepalive(sock)
    return sock


async def accept(listener: socket.socket) -> tuple[socket.socket, Any]:
    """The next connection on a non-blocking listening socket; cancelled, it takes none.

    Not ``loop.sock_accept``: on Python 3.11 a cancel arriving while the socket's readable
    callback is already queued lets that callback accept a connection nobody receives (left
    unclosed: a ResourceWarning) and set a result on the cancelled future (an "Exception in
    callback ... InvalidStateError" traceback at a server's or agent's stop).
    """
    while True:
        try:
            connection, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            await _readable(listener)
            continue
        connection.setblocking(False)
        return connection, address


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    descriptor = sock.fileno()
    loop.add_reader(descriptor, _set_once, ready)
    try:
        await ready
    finally:
        loop.remove_reader(descriptor)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile: the accept is not made
        future.set_result(None)
