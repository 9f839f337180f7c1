"""The server's per-connection resources: small TLS read buffers, keepalive inherited at accept,
no TLS session tickets."""

from __future__ import annotations

import asyncio.sslproto
import socket
import ssl

from tentacle_poll.keepalive import IDLE_SECONDS, keepalive_socket, listening_socket
from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.memory import TLS_READ_BUFFER_BYTES

from .conftest import AgentFactory, run_and_follow, script_task


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
