"""The comms port's limits: connections without a certificate are few and short, an agent holds
a bounded number of polls, and running out of descriptors is survived, logged once a minute at
most and reported by health. Real TLS on loopback; the last test runs the server under prlimit."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tentacle_poll.cli.server import loopback_server_arguments
from tentacle_poll.protocol.models import PROTOCOL_VERSION, PollRequest, PollResponse
from tentacle_poll.protocol.routes import POLL, PROTOCOL_HEADER
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.dispatch import POLL_MARGIN

from .conftest import (
    RunningAgent,
    client_for,
    free_port,
    register_agent,
    register_at,
    run_and_follow,
    script_task,
    start_server,
)
from .processes import CLI, Daemon
from .test_cli import cli

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def strict_server(tmp_path: Path) -> AsyncIterator[Server]:
    """Small limits, so that the tests reach them with a handful of connections."""
    running = await start_server(
        tmp_path / "server", stranger_seconds=1.0, strangers_per_address=3, strangers_total=5
    )
    yield running
    await running.shutdown()


async def stranger(server: Server, source: str = "127.0.0.1") -> Stream:
    """A TLS connection without a client certificate, handshake done, nothing sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return await asyncio.open_connection(
        "127.0.0.1", server.comms_port, ssl=context, local_addr=(source, 0)
    )


async def answer_of(stream: Stream) -> bytes:
    """Everything the server sends until it closes the connection."""
    reader, writer = stream
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_a_stranger_that_sends_nothing_is_closed_after_its_time(
    strict_server: Server,
) -> None:
    loop = asyncio.get_running_loop()
    opened = loop.time()
    idle = await stranger(strict_server)
    assert await answer_of(idle) == b""
    assert 0.9 <= loop.time() - opened < 5  # stranger_seconds is 1


async def test_a_stranger_gets_one_request_then_the_connection_closes(
    strict_server: Server,
) -> None:
    reader, writer = await stranger(strict_server)
    request = f"POST {POLL} HTTP/1.1\r\nHost: x\r\n{PROTOCOL_HEADER}: {PROTOCOL_VERSION}\r\n"
    writer.write(f"{request}Content-Length: 0\r\n\r\n".encode() * 2)
    answer = await answer_of((reader, writer))
    assert answer.count(b"HTTP/1.1 ") == 1  # the second request was never read
    assert b"Connection: close" in answer and b"certificate not registered" in answer


async def test_strangers_are_capped_per_address_and_in_all_while_agents_work(
    strict_server: Server, tmp_path: Path
) -> None:
    key = await strict_server.state.store.create_api_key("tests")
    home = await register_agent(strict_server, key, tmp_path / "web1", "web1")
    agent = RunningAgent(home)
    idle = [await stranger(strict_server) for _ in range(3)]
    over_per_address = await answer_of(await stranger(strict_server))
    idle += [await stranger(strict_server, "127.0.0.2") for _ in range(2)]
    over_in_all = await answer_of(await stranger(strict_server, "127.0.0.3"))
    async with AdminClient(f"http://127.0.0.1:{strict_server.admin_port}", key) as admin:
        final, events = await run_and_follow(admin, script_task("web1", "echo still served"))
    await agent.stop()
    for answer, limit in ((over_per_address, "3 from this address"), (over_in_all, "5 in all")):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in head
        assert limit in json.loads(body)["detail"]
    assert final.state == "succeeded" and [e.text for e in events] == ["still served"]
    assert [await answer_of(s) for s in idle] == [b""] * 5  # each closed after its 1 s
    assert strict_server.state.strangers.open_count() == 0


async def test_an_agent_holds_at_most_its_slots_and_a_margin_of_polls(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    client = client_for(server, await register_agent(server, api_key, tmp_path / "a", "web1"))
    agent = await server.state.store.agent_by_name("web1")
    assert agent is not None
    request = PollRequest(free_slots=1, hold_seconds=30)
    cap = 1 + POLL_MARGIN
    try:
        held = []
        for count in range(1, cap + 1):
            held.append(asyncio.create_task(client.post(POLL, request, PollResponse, 35)))
            async with asyncio.timeout(10):
                while server.state.dispatcher.polls_held(agent.id) < count:
                    await server.state.dispatcher.wait_until_polling(agent.id)
                    await asyncio.sleep(0)
        newest = asyncio.create_task(client.post(POLL, request, PollResponse, 35))
        async with asyncio.timeout(10):
            oldest = await held[0]  # answered at once, not after its 30 s
        assert oldest.envelopes == [] and server.state.dispatcher.polls_held(agent.id) == cap
        assert not any(poll.done() for poll in [*held[1:], newest])
    finally:
        for poll in asyncio.all_tasks():
            if poll.get_coro().__qualname__.startswith("CommsClient.post"):  # type: ignore[union-attr]
                poll.cancel()
        await client.close()


# --- out of descriptors: the server runs as a process under a low limit ----------------------

DESCRIPTOR_LIMIT = 96


@asynccontextmanager
async def limited_server(tmp_path: Path) -> AsyncIterator[tuple[Daemon, int, int, str, str]]:
    home = tmp_path / "server"
    key = cli("server", "api-key", "create", "--name", "ci", "--server-home", str(home))
    thumbprint = cli("server", "show-thumbprint", "--server-home", str(home))
    key, thumbprint = key.stdout.strip(), thumbprint.stdout.strip()
    comms, admin = free_port(), free_port()
    arguments = loopback_server_arguments(home, comms, admin)
    server = await Daemon.run("prlimit", f"--nofile={DESCRIPTOR_LIMIT}", *CLI, *arguments)
    try:
        await server.wait_for("listening")
        yield server, comms, admin, key, thumbprint
    finally:
        await server.kill()


def flood(port: int, count: int) -> list[socket.socket]:
    """Plain TCP connections that send nothing: each holds a server descriptor once accepted
    (until the handshake deadline), then the kernel's backlog holds the rest."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


async def test_running_out_of_descriptors_is_survived_logged_once_and_reported(
    tmp_path: Path,
) -> None:
    async with limited_server(tmp_path) as (server, comms, admin_port, key, thumbprint):
        url, admin_url = f"https://127.0.0.1:{comms}", f"http://127.0.0.1:{admin_port}"
        agent = RunningAgent(await register_at(url, thumbprint, key, tmp_path / "a", "web1"))
        # One kept-alive admin connection, made before descriptors run out.
        connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=120)
        async with (
            aiohttp.ClientSession(connector=connector) as kept,
            AdminClient(admin_url, key) as admin,
        ):
            assert (await get(kept, f"{admin_url}/readyz"))[0] == 200
            assert [t.name for t in await admin.targets()] == ["web1"]  # its connection, too
            held = flood(comms, DESCRIPTOR_LIMIT * 2)
            await server.wait_for("cannot accept connections", timeout=30)
            task = await admin.submit(script_task("web1", "echo after the shortage"))
            observed_from = len(server.lines)
            await asyncio.sleep(2)  # a window in which the old accept loop logged thousands
            health = await get(kept, f"{admin_url}/api/health")
            ready = await get(kept, f"{admin_url}/readyz")
            for sock in held:
                sock.close()
            final = await admin.follow(task.id, lambda event: None)
        await agent.stop()
    quiet = server.lines[observed_from:]
    assert not [line for line in quiet if "cannot accept" in line or "Traceback" in line]
    assert len(quiet) < 20, quiet
    assert health[0] == 200 and health[1]["status"] == "degraded"
    assert "Too many open files" in str(health[1]["problems"])
    assert ready[0] == 503 and "Too many open files" in str(ready[1]["detail"])
    assert final.state == "succeeded"
