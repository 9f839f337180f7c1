"""Several server nodes, certificate rotation on both sides, diagnostics, config commands."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.nodes import save_nodes, set_proxy
from tentacle_poll.agent.connections.rotation import rotate_certificate
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import AgentSettings, ProxySettings
from tentacle_poll.exceptions import CertificateRejected, RequestRejected, ServerIdentityMismatch
from tentacle_poll.protocol.models import PollRequest, PollResponse, TaskState
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.tls import load_identity, save_identity

from .certificates import identity_with_subject
from .conftest import (
    RunningAgent,
    free_port,
    new_agent_home,
    register_agent,
    register_at,
    run_and_follow,
    script_task,
    wait_for_line,
)
from .processes import CLI, Daemon, start_server_process
from .proxies import tinyproxy
from .relay import CuttingRelay


async def poll_once(client: CommsClient) -> PollResponse:
    try:
        return await client.post(POLL, PollRequest(free_slots=0, hold_seconds=0), PollResponse)
    finally:
        await client.close()


async def test_agent_polls_two_servers_and_survives_one_stopping(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    homes, ports, keys = [tmp_path / "a", tmp_path / "b"], [], []
    for home in homes:
        store = await ServerHome(home).open_store()
        keys.append(await store.create_api_key("tests"))
        await store.close()
        ports.append((free_port(), free_port()))
        processes.append(await start_server_process(home, *ports[-1]))
    agent_home = new_agent_home(tmp_path / "web1")
    for home, (comms, _), key in zip(homes, ports, keys, strict=True):
        _, thumbprint = ServerHome(home).ensure_identity()
        await register_at(f"https://127.0.0.1:{comms}", thumbprint, key, agent_home.folder, "web1")
    assert len(agent_home.settings().servers) == 2
    agent = RunningAgent(agent_home, concurrency=2)
    admins = [
        AdminClient(f"http://127.0.0.1:{admin}", key)
        for (_, admin), key in zip(ports, keys, strict=True)
    ]
    try:
        for admin in admins:
            await admin.__aenter__()
        for name, admin in zip("ab", admins, strict=True):
            final, events = await run_and_follow(admin, script_task("web1", f"echo from {name}"))
            assert final.state == TaskState.SUCCEEDED and events[0].text == f"from {name}"
        await processes[0].kill()  # server a dies
        final, events = await run_and_follow(admins[1], script_task("web1", "echo still here"))
        assert final.state == TaskState.SUCCEEDED and events[0].text == "still here"
    finally:
        for admin in admins:
            await admin.__aexit__()
        await agent.stop()


async def test_client_certificate_rotation_with_a_task_queued_during_the_switch(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    old = load_identity(home.identity_folder)
    agent = RunningAgent(home, concurrency=1)
    gate = tmp_path / "gate"
    running = await admin.submit(
        script_task("web1", f"echo a; while [ ! -e {gate} ]; do sleep 0.02; done")
    )
    await wait_for_line(admin, running.id, "a")
    queued = await admin.submit(script_task("web1", "echo queued during the switch"))
    new = await rotate_certificate(home, home.settings())
    gate.touch()
    finals = await asyncio.gather(*(admin.follow(t.id, lambda _: None) for t in (running, queued)))
    assert [f.state for f in finals] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED]
    [target] = await admin.targets()
    assert target.thumbprint == new.thumbprint and target.previous_thumbprint == old.thumbprint
    final, _ = await run_and_follow(admin, script_task("web1", "echo after"))
    assert final.state == TaskState.SUCCEEDED
    await agent.stop()
    # The old certificate works during the overlap, and not after it.
    stale_home = tmp_path / "stale"
    save_identity(stale_home, old)
    stale = CommsClient(
        f"https://127.0.0.1:{server.comms_port}", [server.state.thumbprint], stale_home
    )
    await poll_once(stale)
    expired = await server.state.store.expire_previous_certificates(time.time() + 10**6)
    await server.state.trust.remove(*(pem.encode() for pem in expired))
    server.state.forget_agents()
    with pytest.raises((CertificateRejected, RequestRejected)):
        await poll_once(stale)


async def test_server_certificate_rotation_reaches_agents_over_the_old_channel(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    old_thumbprint = server.state.thumbprint
    agent = RunningAgent(home)
    prepared = await admin.change_server_certificate("prepare")
    assert prepared.next_thumbprint is not None
    await run_and_follow(admin, script_task("web1", "echo learn"))  # a poll answer announces it
    node = home.settings().servers[0]
    assert node.thumbprints == [old_thumbprint, prepared.next_thumbprint]
    record = await server.state.store.agent_by_name("web1")
    assert record is not None
    await server.state.dispatcher.wait_until_polling(record.id)
    [target] = await admin.targets()
    assert target.trusts_next_server_certificate is True
    activated = await admin.change_server_certificate("activate")
    assert activated.thumbprint == prepared.next_thumbprint
    fresh = CommsClient(node.url, node.thumbprints, home.identity_folder)
    await poll_once(fresh)  # a new connection sees the new certificate, and the pins accept it
    only_old = CommsClient(node.url, [old_thumbprint], home.identity_folder)
    with pytest.raises(ServerIdentityMismatch):
        await poll_once(only_old)
    final, _ = await run_and_follow(admin, script_task("web1", "echo after"))
    assert final.state == TaskState.SUCCEEDED
    assert home.settings().servers[0].thumbprints == [prepared.next_thumbprint]
    await agent.stop()


async def test_activation_waits_for_every_target_unless_forced(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    await register_agent(server, api_key, tmp_path / "web1", "web1")  # never polls
    await admin.change_server_certificate("prepare")
    with pytest.raises(RequestRejected) as refused:
        await admin.change_server_certificate("activate")
    assert refused.value.status == 409 and "web1" in refused.value.detail
    assert (await admin.change_server_certificate("activate", force=True)).next_thumbprint is None


def diagnose(home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "diagnose", "--home", str(home), *extra], capture_output=True, text=True, timeout=60
    )


def edit_node(home: AgentHome, **changes: object) -> None:
    node = home.settings().servers[0].model_copy(update=changes)
    save_nodes(home, [node])


async def test_diagnose_passes_on_a_working_setup_and_names_each_broken_step(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    good = await asyncio.to_thread(diagnose, home.folder)
    assert good.returncode == 0, good.stdout
    steps = ("name resolution", "TCP", "TLS and server thumbprint", "agent certificate")
    for step in (*steps, "round trip and clock"):
        assert f"ok   {step}" in good.stdout
    node = home.settings().servers[0]
    cases = [
        ({"url": "https://no-such-host.invalid:10943"}, "FAIL name resolution"),
        ({"url": f"https://127.0.0.1:{free_port()}"}, "FAIL TCP"),
        ({"thumbprint": "AB" * 32}, "FAIL server thumbprint"),
    ]
    for changes, expected in cases:
        edit_node(home, **changes)
        broken = await asyncio.to_thread(diagnose, home.folder)
        assert broken.returncode == 1 and expected in broken.stdout, broken.stdout
        assert "what to do:" in broken.stdout and "Traceback" not in broken.stderr
        save_nodes(home, [node])
    stranger = tmp_path / "stranger"
    (stranger).mkdir()
    new_agent_home(stranger)
    save_nodes(AgentHome(stranger), [node])
    unregistered = await asyncio.to_thread(diagnose, stranger)
    assert "FAIL agent certificate" in unregistered.stdout, unregistered.stdout
    assert "not registered there (a deleted target?" in unregistered.stdout
    assert "Traceback" not in unregistered.stderr and "('" not in unregistered.stdout


async def test_diagnose_names_a_certificate_not_yet_valid_by_the_servers_clock(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    """Made on a machine whose clock is ten minutes ahead (by an earlier version, which made
    certificates valid from five minutes back): registered, then refused at every handshake."""
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    home = AgentHome(tmp_path / "web1")
    save_identity(home.identity_folder, identity_with_subject("web1", ca=True, valid_from=ahead))
    await register_agent(server, api_key, home.folder, "web1")
    result = await asyncio.to_thread(diagnose, home.folder)
    assert "FAIL agent certificate: this agent's certificate is not valid yet" in result.stdout
    assert "differs from the server's by" in result.stdout and "NTP" in result.stdout


async def test_diagnose_tells_a_deleted_target_from_a_cut_connection(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    node = home.settings().servers[0]
    async with CuttingRelay(server.comms_port) as relay:  # a middlebox cutting every connection
        edit_node(home, url=f"https://127.0.0.1:{relay.port}")
        relay.cut_each_connection_after_the_handshake()  # before an answer
        cut = await asyncio.to_thread(diagnose, home.folder)
    assert "FAIL connection: the connection was cut" in cut.stdout, cut.stdout
    assert "FAIL agent certificate" not in cut.stdout
    save_nodes(home, [node])
    await admin.delete_target("web1")
    deleted = await asyncio.to_thread(diagnose, home.folder)
    assert "FAIL agent certificate" in deleted.stdout and "deleted target?" in deleted.stdout
    assert "register again" in deleted.stdout


async def test_diagnose_through_a_proxy_that_refuses(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    async with tinyproxy(tmp_path / "tp", None, [1]) as proxy:
        set_proxy(home, ProxySettings(mode="explicit", host="127.0.0.1", port=proxy.port))
        result = await asyncio.to_thread(diagnose, home.folder)
    assert result.returncode == 1
    assert "FAIL proxy tunnel" in result.stdout and "403" in result.stdout, result.stdout


async def test_config_commands_persist_and_show_config_masks_the_password(tmp_path: Path) -> None:
    home = tmp_path / "agent"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*CLI, *args, "--home", str(home)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    await asyncio.to_thread(cli, "new-certificate")
    await asyncio.to_thread(
        cli,
        "proxy",
        "--mode",
        "explicit",
        "--host",
        "proxy.local",
        "--port",
        "3128",
        "--username",
        "deployer",
        "--password",
        "hunter2-proxy",
    )
    thumb = "CD" * 32
    await asyncio.to_thread(
        cli, "poll-server", "add", "--server", "https://node1:10943", "--server-thumbprint", thumb
    )
    await asyncio.to_thread(
        cli,
        "poll-server",
        "add",
        "--server",
        "https://node2:443",
        "--server-thumbprint",
        thumb,
        "--server-name",
        "deploy.example",
    )
    await asyncio.to_thread(cli, "trust", "--server", "https://node1:10943", "--add", "EF" * 32)
    listing = await asyncio.to_thread(cli, "poll-server", "list")
    assert f"https://node1:10943: {thumb}, {'EF' * 32}" in listing
    assert "https://node2:443 (server name deploy.example)" in listing
    await asyncio.to_thread(cli, "poll-server", "remove", "--server", "https://node2:443")
    shown = await asyncio.to_thread(cli, "show-config")
    config = json.loads(shown[shown.index("{") :])
    assert config["proxy"]["username"] == "deployer" and "hunter2-proxy" not in shown
    assert [s["url"] for s in config["servers"]] == ["https://node1:10943"]
    settings = AgentSettings.model_validate(config | {"proxy": {"mode": "none"}})
    assert settings.servers[0].thumbprints == [thumb, "EF" * 32]
