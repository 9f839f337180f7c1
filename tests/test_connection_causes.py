"""Every communication error names its cause, and the agent's certificate is blamed only when
the server's TLS alert says so: a refused certificate (the server now sends the alert), a proxy
that cuts each tunnel after its 200, a relay that cuts right after the handshake, a server that
never answers; then generated error chains (hypothesis) for the messages' shape."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle_poll.agent.connections.causes import Route, communication_error
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.exceptions import CertificateRejected, CommunicationError
from tentacle_poll.protocol.models import PollRequest, PollResponse
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.proxies import ProxyRoute
from tentacle_poll.server import Server

from .conftest import client_for, comms_url, new_agent_home, register_agent
from .relay import CuttingRelay


async def poll_error(client: CommsClient) -> CommunicationError:
    try:
        async with asyncio.timeout(20):
            await client.post(POLL, PollRequest(free_slots=1, hold_seconds=0), PollResponse)
    except CommunicationError as exc:
        return exc
    finally:
        await client.close()
    raise AssertionError("the poll went through")


async def test_a_refused_certificate_is_named_by_the_servers_alert_every_time(
    server: Server, tmp_path: Path
) -> None:
    stranger = new_agent_home(tmp_path / "stranger")
    url, pins = comms_url(server), [server.state.thumbprint]
    for _ in range(20):  # the alert must arrive ahead of the close, not race it
        error = await poll_error(CommsClient(url, pins, stranger.identity_folder))
        assert isinstance(error, CertificateRejected)
        assert 'TLS alert "unknown ca"' in str(error) and "not registered" in str(error)


@pytest.fixture
async def tunnel_cutting_proxy() -> AsyncIterator[ProxyRoute]:
    """Answers CONNECT with 200, then closes: what some corporate proxies do to unknown ports."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        writer.close()

    proxy = await asyncio.start_server(cut, "127.0.0.1", 0)
    yield ProxyRoute("127.0.0.1", proxy.sockets[0].getsockname()[1])
    proxy.close()
    await proxy.wait_closed()


async def test_a_proxy_cutting_each_tunnel_is_named_and_the_certificate_is_not_blamed(
    server: Server, api_key: str, tmp_path: Path, tunnel_cutting_proxy: ProxyRoute
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    client = CommsClient(
        comms_url(server),
        [server.state.thumbprint],
        home.identity_folder,
        proxy=tunnel_cutting_proxy,
    )
    error = await poll_error(client)
    assert not isinstance(error, CertificateRejected)
    assert f"the proxy {tunnel_cutting_proxy.url} opened the tunnel" in str(error)
    assert "before the TLS handshake finished" in str(error) and "certificate" not in str(error)


async def test_a_cut_right_after_the_handshake_is_a_cut_not_a_refused_certificate(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    async with CuttingRelay(server.comms_port) as relay:
        relay.cut_each_connection_after_the_handshake()
        url = f"https://127.0.0.1:{relay.port}"
        error = await poll_error(CommsClient(url, [server.state.thumbprint], home.identity_folder))
    assert relay.cuts >= 1 and not isinstance(error, CertificateRejected)
    assert "certificate" not in str(error)
    assert "closed the connection before answering" in str(error) or "reset" in str(error)


async def test_a_server_that_never_answers_is_a_timeout(tmp_path: Path, server: Server) -> None:
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _, w: accepted.append(w), "127.0.0.1", 0)
    url = f"https://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    home = new_agent_home(tmp_path / "a")
    client = CommsClient(url, [server.state.thumbprint], home.identity_folder, connect_timeout=0.5)
    error = await poll_error(client)
    for writer in accepted:
        writer.close()
    silent.close()
    assert str(error) == f"{url} did not answer in time (timed out)"


async def test_the_server_still_serves_the_agents_it_trusts(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    """The alerting handshake is the only handshake: registered agents go through it too."""
    client = client_for(server, await register_agent(server, api_key, tmp_path / "a", "web1"))
    try:
        answer = await client.post(POLL, PollRequest(free_slots=1, hold_seconds=0), PollResponse)
    finally:
        await client.close()
    assert answer.envelopes == []


# --- the messages' shape, over generated error chains ----------------------------------------

ALERTS = [
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "TLSV1_ALERT_PROTOCOL_VERSION",
]


def ssl_error(reason: str | None, message: str) -> ssl.SSLError:
    error = ssl.SSLError(1, message)
    error.reason = reason  # type: ignore[misc]
    return error


innermost = st.one_of(
    st.builds(OSError),
    st.builds(ConnectionResetError),
    st.builds(ConnectionResetError, st.just(104), st.text(max_size=5)),
    st.builds(ConnectionRefusedError, st.just(111), st.just("")),
    st.builds(TimeoutError),
    st.builds(ssl_error, st.sampled_from([*ALERTS, None, "WRONG_VERSION_NUMBER"]), st.text()),
    st.builds(ssl.SSLEOFError),
    st.builds(aiohttp.ServerDisconnectedError, st.sampled_from([None, ""])),
)


def wrapped(cause: BaseException, how: int) -> BaseException:
    """The cause as aiohttp raises it: bare, in a ClientOSError, or as a connector error."""
    if how == 1:
        outer = aiohttp.ClientOSError(getattr(cause, "errno", None) or 0, str(cause))
        outer.__cause__ = cause
        return outer
    if how == 2 and isinstance(cause, OSError):
        key = None  # aiohttp only formats it; the message must not need it
        connector = aiohttp.ClientConnectorError(key, cause)  # type: ignore[arg-type]
        return connector
    return cause


@given(cause=innermost, how=st.integers(0, 2), proxy=st.booleans(), certificate=st.booleans())
def test_every_error_names_a_cause_and_only_an_alert_blames_the_certificate(
    cause: BaseException, how: int, proxy: bool, certificate: bool
) -> None:
    route = Route(
        "https://deploy.example:10943",
        ProxyRoute("proxy.example", 3128) if proxy else None,
        with_certificate=certificate,
    )
    error = communication_error(wrapped(cause, how), route)
    message = str(error)
    assert message.strip() and not message.rstrip().endswith(":"), message
    assert "https://deploy.example:10943" in message or "proxy.example" in message
    reason = str(getattr(cause, "reason", ""))
    certificate_alert = "_ALERT_CERT" in reason or reason.endswith("_ALERT_UNKNOWN_CA")
    assert isinstance(error, CertificateRejected) == (certificate_alert and certificate), message
