"""TCP keepalive for long-poll connections, shared by agent and server (plain helper, no policy).

A held poll sends nothing for up to a hold period; without keepalive a connection cut by a
firewall or a dead peer is only noticed at the next read timeout. With these settings the
kernel gives up on a silent peer after about 10 + 3 x 5 = 25 seconds.
"""

from __future__ import annotations

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
