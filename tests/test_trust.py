"""Pinned mutual TLS: unknown client certificates get nothing; impostor servers get no byte."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.registration import Registration, register
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.exceptions import (
    CertificateRejected,
    ConfigurationError,
    RequestRejected,
    ServerIdentityMismatch,
)
from tentacle_poll.protocol.models import PollRequest, PollResponse
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.tls import (
    TrustedClientCertificates,
    certificate_expiry,
    certificate_expiry_fast,
    generate_identity,
    save_identity,
)

from .conftest import comms_url, new_agent_home, register_agent


async def test_a_client_certificate_never_registered_is_refused(
    server: Server, tmp_path: Path
) -> None:
    stranger = new_agent_home(tmp_path / "stranger")
    client = CommsClient(comms_url(server), [server.state.thumbprint], stranger.identity_folder)
    try:
        with pytest.raises(CertificateRejected, match="did not accept this agent's certificate"):
            await client.post(POLL, PollRequest(free_slots=1), PollResponse)
    finally:
        await client.close()


async def test_no_client_certificate_gets_403_on_agent_routes(server: Server) -> None:
    client = CommsClient(comms_url(server), [server.state.thumbprint], identity_folder=None)
    try:
        with pytest.raises(RequestRejected) as refused:
            await client.post(POLL, PollRequest(free_slots=1), PollResponse)
    finally:
        await client.close()
    assert refused.value.status == 403


async def test_a_deleted_target_is_no_longer_trusted(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    await agent_client.post(POLL, PollRequest(free_slots=0), PollResponse, read_timeout=1)
    await admin.delete_target("web1")
    await agent_client.close()  # a new connection, so a new handshake
    with pytest.raises(CertificateRejected):
        await agent_client.post(POLL, PollRequest(free_slots=0), PollResponse)


def _handshake(server: ssl.SSLContext, client_identity: Path) -> bool:
    """One mutual-TLS handshake in memory: True when the server accepted the client."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.load_cert_chain(client_identity / "cert.pem", client_identity / "key.pem")
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    ours = client.wrap_bio(client_in, client_out)
    theirs = server.wrap_bio(server_in, server_out, server_side=True)
    try:
        for _ in range(4):
            for side in (ours, theirs):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                server_in.write(client_out.read())
                client_in.write(server_out.read())
        theirs.write(b"x")
        client_in.write(server_out.read())
        return ours.read(1) == b"x"
    except ssl.SSLError:
        return False


async def test_trust_rebuilt_after_a_removal_keeps_agents_registered_meanwhile(
    tmp_path: Path,
) -> None:
    identities = {}
    for name in ("server", "removed", "kept", "added"):
        identities[name] = tmp_path / name
        save_identity(identities[name], generate_identity(name))
    pem = {name: (folder / "cert.pem").read_bytes() for name, folder in identities.items()}
    trust = TrustedClientCertificates(identities["server"], [pem["removed"], pem["kept"]])
    assert _handshake(trust.context, identities["removed"])
    removal = asyncio.create_task(trust.remove(pem["removed"]))
    await asyncio.sleep(0)  # the rebuild is now running on its thread
    trust.add(pem["added"])  # a registration meanwhile must survive the swap
    await removal
    assert not _handshake(trust.context, identities["removed"])
    assert _handshake(trust.context, identities["kept"])
    assert _handshake(trust.context, identities["added"])
    await trust.remove(pem["kept"], pem["added"])  # several at once (an overlap's end)
    assert not _handshake(trust.context, identities["kept"])
    assert not _handshake(trust.context, identities["added"])


class CountedTrust(TrustedClientCertificates):
    """The real trust, counting how often its store is built."""

    builds = 0

    def _build_trust_context(self, pems: frozenset[bytes]) -> ssl.SSLContext:
        self.builds += 1
        return super()._build_trust_context(pems)


async def test_removals_made_together_share_a_rebuild(tmp_path: Path) -> None:
    names = ["server", *(f"agent{i}" for i in range(12))]
    for name in names:
        save_identity(tmp_path / name, generate_identity(name))
    pems = [(tmp_path / name / "cert.pem").read_bytes() for name in names[1:]]
    trust = CountedTrust(tmp_path / "server", pems)
    built_at_start = trust.builds
    await asyncio.gather(*(trust.remove(pem) for pem in pems[:10]))  # ten targets deleted
    assert trust.builds - built_at_start <= 2  # the first removal's, and one for the nine
    assert not any(_handshake(trust.context, tmp_path / f"agent{i}") for i in range(10))
    assert _handshake(trust.context, tmp_path / "agent10")
    await trust.remove(pems[10])  # alone: a rebuild of its own
    assert trust.builds - built_at_start <= 3
    assert not _handshake(trust.context, tmp_path / "agent10")
    assert _handshake(trust.context, tmp_path / "agent11")


def test_the_server_reads_certificate_expiry_as_the_agent_does(tmp_path: Path) -> None:
    pem = generate_identity("web1", days=400).cert_pem
    assert certificate_expiry_fast(pem) == certificate_expiry(pem)
    assert certificate_expiry(pem) - datetime.now(UTC) > timedelta(days=399)


class ImpostorServer:
    """A TLS server with its own certificate that records every byte it is sent."""

    def __init__(self, folder: Path) -> None:
        save_identity(folder, generate_identity("impostor"))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        self.received = bytearray()
        self.port = 0

    async def __aenter__(self) -> ImpostorServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                self.received.extend(chunk)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def impostor(tmp_path: Path) -> AsyncIterator[ImpostorServer]:
    async with ImpostorServer(tmp_path / "impostor") as server:
        yield server


async def test_agent_pinned_to_another_thumbprint_sends_the_impostor_nothing(
    impostor: ImpostorServer, tmp_path: Path
) -> None:
    home = new_agent_home(tmp_path / "web1")
    client = CommsClient(f"https://127.0.0.1:{impostor.port}", ["AB" * 32], home.identity_folder)
    try:
        with pytest.raises(ServerIdentityMismatch, match="is not the pinned"):
            await client.post(POLL, PollRequest(free_slots=1), PollResponse)
    finally:
        await client.close()
    assert bytes(impostor.received) == b""


async def test_registration_never_sends_the_key_to_an_impostor(
    impostor: ImpostorServer, tmp_path: Path
) -> None:
    home = new_agent_home(tmp_path / "web1")
    details = Registration(
        server_url=f"https://127.0.0.1:{impostor.port}",
        name="web1",
        environments=["Test"],
        roles=["web"],
        server_thumbprint="CD" * 32,
        api_key="API-SECRET-KEY",
    )
    with pytest.raises(ServerIdentityMismatch):
        await register(home, details)
    assert b"API-SECRET-KEY" not in impostor.received and bytes(impostor.received) == b""


async def test_registration_without_a_thumbprint_is_refused_unless_trusted_on_first_use(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = new_agent_home(tmp_path / "web1")
    details = Registration(
        server_url=comms_url(server),
        name="web1",
        environments=["Test"],
        roles=["web"],
        api_key=api_key,
    )
    with pytest.raises(ConfigurationError, match="--server-thumbprint"):
        await register(home, details)
    tofu = Registration(**{**details.__dict__, "trust_on_first_use": True})
    answer = await register(home, tofu)
    assert answer.server_thumbprint == server.state.thumbprint
    assert home.settings().servers[0].thumbprint == server.state.thumbprint


async def test_registration_token_works_once_and_carries_the_thumbprint(
    server: Server, admin: AdminClient, tmp_path: Path
) -> None:
    token = (await admin.create_token(3600)).token
    assert server.state.thumbprint in token
    first = new_agent_home(tmp_path / "web1")
    details = Registration(
        server_url=comms_url(server),
        name="web1",
        environments=["Test"],
        roles=["web"],
        token=token,
    )
    await register(first, details)
    second = new_agent_home(tmp_path / "web2")
    with pytest.raises(RequestRejected) as refused:
        await register(second, Registration(**{**details.__dict__, "name": "web2"}))
    assert refused.value.status == 401
    assert token not in first.config_file.read_text()


async def test_the_api_key_is_never_written_to_the_agent_home(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    for path in home.folder.rglob("*"):
        if path.is_file():
            assert api_key.encode() not in path.read_bytes(), path
