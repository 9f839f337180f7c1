"""One identity per certificate: the server accepts exactly the registered certificate bytes,
whatever their subject, and nothing a registered key signs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.rotation import rotate_certificate
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.exceptions import CertificateRejected, RequestRejected
from tentacle_poll.protocol.models import PollRequest, PollResponse, TaskState
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.sweeper import end_overlaps
from tentacle_poll.tls import Identity, generate_identity, load_identity, save_identity

from .certificates import identity_with_subject
from .conftest import (
    RunningAgent,
    comms_url,
    free_port,
    register_agent,
    run_and_follow,
    script_task,
    start_server,
    wait_for_line,
)

SHARED_SUBJECT = "build-host"  # fifty agents on hosts that all call themselves this


def home_with(folder: Path, identity: Identity) -> AgentHome:
    home = AgentHome(folder)
    save_identity(home.identity_folder, identity)
    return home


async def run_everywhere(admin: AdminClient, names: list[str], text: str) -> None:
    tasks = [run_and_follow(admin, script_task(name, f"echo {text} $(hostname)")) for name in names]
    async with asyncio.timeout(45):  # an agent refused at every handshake would wait forever
        results = await asyncio.gather(*tasks)
    for (final, events), name in zip(results, names, strict=True):
        assert final.state == TaskState.SUCCEEDED, (name, final.reason)
        assert events[0].text.startswith(text)


@pytest.mark.timeout(120)
async def test_fifty_agents_with_one_subject_each_run_tasks_also_after_a_server_restart(
    tmp_path: Path,
) -> None:
    ports = {"comms_port": free_port(), "admin_port": free_port()}
    server = await start_server(tmp_path / "server", **ports)
    key = await server.state.store.create_api_key("tests")
    names = [f"agent{i:02}" for i in range(50)]
    for index, name in enumerate(names):
        # Half as earlier versions made them (CA:TRUE), half not; all with one subject.
        home_with(tmp_path / name, identity_with_subject(SHARED_SUBJECT, ca=index % 2 == 0))
        await register_agent(server, key, tmp_path / name, name)
    agents = [RunningAgent(AgentHome(tmp_path / name), concurrency=1) for name in names]
    try:
        async with AdminClient(f"http://127.0.0.1:{server.admin_port}", key) as admin:
            await run_everywhere(admin, names, "first")
        await server.shutdown()
        server = await start_server(tmp_path / "server", **ports)  # trust built from the store
        async with AdminClient(f"http://127.0.0.1:{server.admin_port}", key) as admin:
            await run_everywhere(admin, names, "again")
    finally:
        await asyncio.gather(*(agent.stop(levels=3) for agent in agents))
        await server.shutdown()


async def test_new_certificates_have_unique_subjects_and_are_not_cas() -> None:
    from cryptography import x509

    certificates = [
        x509.load_pem_x509_certificate(generate_identity("web").cert_pem) for _ in range(20)
    ]
    assert len({c.subject for c in certificates}) == 20
    for certificate in certificates:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.value.ca is False
        assert (
            certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "web"
        )


async def test_a_child_signed_by_a_registered_agents_key_fails_the_handshake(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    parent = await register_agent(server, api_key, tmp_path / "web1", "web1")
    parent_identity = load_identity(parent.identity_folder)
    child = identity_with_subject("evil", ca=False, issuer=parent_identity)
    # The hostile client presents the whole chain, parent included.
    chain = Identity(child.key_pem, child.cert_pem + parent_identity.cert_pem)
    impostor = home_with(tmp_path / "child", chain)
    client = CommsClient(comms_url(server), [server.state.thumbprint], impostor.identity_folder)
    try:
        with pytest.raises(CertificateRejected):
            await client.post(POLL, PollRequest(free_slots=1), PollResponse)
    finally:
        await client.close()


async def test_a_child_of_an_earlier_versions_ca_certificate_gets_nothing(
    server: Server, api_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = identity_with_subject("web1", ca=True)
    home_with(tmp_path / "web1", legacy)
    await register_agent(server, api_key, tmp_path / "web1", "web1")
    child = identity_with_subject("evil", ca=False, issuer=legacy)
    impostor = home_with(tmp_path / "child", child)
    client = CommsClient(comms_url(server), [server.state.thumbprint], impostor.identity_folder)
    try:
        with pytest.raises(RequestRejected) as refused:  # its handshake can chain to the CA...
            await client.post(POLL, PollRequest(free_slots=1), PollResponse)
    finally:
        await client.close()
    assert refused.value.status == 403  # ...but it is not the registered certificate
    assert f"certificate {child.thumbprint} is not registered" in caplog.text


async def test_refused_handshakes_are_logged_with_the_peer_and_rate_limited(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = home_with(tmp_path / "stranger", generate_identity("stranger"))
    for _ in range(5):
        client = CommsClient(comms_url(server), [server.state.thumbprint], stranger.identity_folder)
        with pytest.raises(CertificateRejected):
            await client.post(POLL, PollRequest(free_slots=1), PollResponse)
        await client.close()
    refusals = [r.message for r in caplog.records if "refused a TLS handshake" in r.message]
    assert len(refusals) == 1, refusals
    assert "from 127.0.0.1:" in refusals[0] and "not registered" in refusals[0]
    assert server.state.refusals.counts["handshake:certificate"] == 5


@pytest.mark.timeout(90)
async def test_rotation_keeps_both_certificates_through_the_overlap_and_misses_no_task(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    old = identity_with_subject(SHARED_SUBJECT, ca=True)  # as an earlier version made it
    home = home_with(tmp_path / "web1", old)
    await register_agent(server, api_key, home.folder, "web1")
    agent = RunningAgent(home, concurrency=2)
    go = tmp_path / "go"
    try:
        assert (await run_and_follow(admin, script_task("web1", "echo before")))[
            0
        ].state == "succeeded"
        long = await admin.submit(
            script_task("web1", f"echo waiting; while [ ! -e {go} ]; do sleep 0.02; done; echo on")
        )
        await wait_for_line(admin, long.id, "waiting")
        new = await rotate_certificate(home, home.settings())
        assert new.thumbprint != old.thumbprint
        final, events = await run_and_follow(admin, script_task("web1", "echo during"))
        assert final.state == "succeeded" and [e.text for e in events] == ["during"]
        go.touch()
        final, events = await run_and_follow(admin, script_task("web1", "echo after"))
        assert final.state == "succeeded"
        long_final = await admin.follow(long.id, lambda _: None)
        assert long_final.state == "succeeded"
        await end_overlaps(server.state, time.time() + 10**9)  # as the sweeper does, now
        assert await refused(server, home.folder / "identity.previous")
        final, _ = await run_and_follow(admin, script_task("web1", "echo overlap over"))
        assert final.state == "succeeded"
    finally:
        await agent.stop(levels=3)


async def refused(server: Server, identity_folder: Path) -> bool:
    client = CommsClient(comms_url(server), [server.state.thumbprint], identity_folder)
    try:
        await client.post(POLL, PollRequest(free_slots=0, hold_seconds=0), PollResponse)
    except CertificateRejected:
        return True
    finally:
        await client.close()
    return False


async def test_a_tcp_health_check_on_the_comms_port_logs_no_warning(
    server: Server, caplog: pytest.LogCaptureFixture, log_seen: Callable[[str], asyncio.Event]
) -> None:
    noticed = log_seen("the connection closed during the handshake")
    _, writer = await asyncio.open_connection("127.0.0.1", server.comms_port)
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(noticed.wait(), 5)
    assert server.state.refusals.counts["handshake:closed"] == 1
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "handshake" in r.message]
    assert warnings == []
