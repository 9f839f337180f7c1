"""Per-connection resources: the server's small TLS read buffers, keepalive inherited at accept,
no TLS session tickets; on both sides, an accept that a stop cannot tear (no connection taken
and dropped) and no connection left open by a stop."""

from __future__ import annotations

import asyncio.sslproto
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any, cast

from tentacle_poll.agent.connections.listener import Listener
from tentacle_poll.config import ListeningSettings
from tentacle_poll.keepalive import IDLE_SECONDS, accept, keepalive_socket, listening_socket
from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.handshakes import Gate, Handshake
from tentacle_poll.server.memory import TLS_READ_BUFFER_BYTES

from .conftest import AgentFactory, free_port, run_and_follow, script_task


async def test_tls_read_buffers_are_shrunk_and_large_bodies_still_arrive(
    server: Server, start_agent: AgentFactory, admin: AdminClient
) -> None:
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER_BYTES
    await start_agent("web1")
    body = "head -c 3000000 /dev/zero | tr '\\0' y | fold -w 1000"  # batches far over 32 KiB
    final, events = await run_and_follow(admin, script_task("web1", body))
    assert final.state == TaskState.SUCCEEDED
    assert len(events) == 3000 and all(e.text == "y" * 1000 for e in events)


def test_accepted_connections_inherit_keepalive() -> None:
    with listening_socket("127.0.0.1", 0) as listener:
        listener.setblocking(True)
        client = keepalive_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", None))
        with client:
            client.connect(listener.getsockname())
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                idle = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
                assert idle == IDLE_SECONDS


async def test_an_accept_cancelled_as_a_connection_arrives_leaves_it_in_the_backlog() -> None:
    """The race of a stop: the cancel runs in the same loop iteration as the listening socket's
    readable callback, queued before it (a socket pair made readable first). asyncio's
    ``sock_accept`` then accepts and drops the connection, and its callback fails; ours takes
    nothing: the connection is still there for whoever accepts next."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    with listening_socket("127.0.0.1", 0) as listener, contextlib.ExitStack() as closing:
        waiting = asyncio.create_task(accept(listener))
        await asyncio.sleep(0)  # its reader registered
        bell, ringer = (closing.enter_context(s) for s in socket.socketpair())
        loop.add_reader(bell.fileno(), waiting.cancel)
        ringer.send(b"!")  # readable first, then the listener:
        closing.enter_context(socket.create_connection(listener.getsockname()))
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        loop.remove_reader(bell.fileno())
        assert waiting.cancelled()
        async with asyncio.timeout(5):
            accepted, _ = await accept(listener)  # the same connection, not a second one
        accepted.close()
    assert errors == []


async def test_a_handshake_stopped_before_it_starts_closes_its_connection() -> None:
    """A server stopping in the loop iteration that accepted a connection cancels its TLS
    upgrade before the upgrade's first step (so before its own cleanup): closed all the same."""
    loop = asyncio.get_running_loop()
    accepted, peer = socket.socketpair()
    with peer:
        peer.setblocking(False)
        stopped_at_once = Handshake(asyncio.Protocol, cast(Gate, None), lambda up: up.cancel())
        await loop.connect_accepted_socket(lambda: stopped_at_once, accepted)
        async with asyncio.timeout(5):
            assert await loop.sock_recv(peer, 1) == b""  # closed by our side


async def test_a_listening_agent_stopping_closes_connections_it_had_not_started(
    tmp_path: Path,
) -> None:
    """The same race on the agent's listening port: a connection taken in the iteration the
    agent stops is closed, not left to the garbage collector."""
    settings = ListeningSettings(host="127.0.0.1", port=free_port(), server_thumbprint="A" * 64)
    listener = Listener(settings, ssl.create_default_context(), tmp_path)
    await listener.start()
    taken, peer = socket.socketpair()
    with peer:
        peer.setblocking(False)
        listener._take(taken, ("127.0.0.2", 40000))  # as its accept loop does
        await listener.close()
        async with asyncio.timeout(5):
            assert await asyncio.get_running_loop().sock_recv(peer, 1) == b""


async def test_the_server_issues_no_tls_session_tickets(server: Server) -> None:
    # Agents never resume a session; a ticket would only cost the server a session encryption.
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", server.comms_port, ssl=client)
    writer.write(b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 ")  # tickets come before any answer
    tls = writer.get_extra_info("ssl_object")
    assert tls.version() == "TLSv1.3" and not tls.session.has_ticket
    writer.close()
