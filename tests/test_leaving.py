"""Agents leaving: `tentacle-poll deregister` drains the running daemon, removes its target
from its server with nothing but its certificate, and deletes its home (unless kept), and
deletes nothing while a server is away; an agent whose target was deleted stops retrying,
says why in one line and exits 78, which the service unit does not restart."""

from __future__ import annotations

import asyncio
import os
import tomllib
from pathlib import Path

import pytest

from tentacle_poll.config import update_config_file
from tentacle_poll.exceptions import RequestRejected
from tentacle_poll.protocol.models import DeregisterResponse, PollRequest, PollResponse
from tentacle_poll.protocol.routes import DEREGISTER, POLL
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import (
    RunningAgent,
    add_listening_agent,
    client_for,
    comms_url,
    free_port,
    register_agent,
    script_task,
    wait_for_line,
)
from .processes import CLI, Daemon, start_agent_process

EXIT_UNREGISTERED = 78


async def deregister(home: Path, *flags: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(home), "deregister", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_deregister_drains_the_daemon_removes_the_target_and_deletes_the_home(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    daemon = await start_agent_process(home.folder)
    processes.append(daemon)  # stopped after the test whatever happens
    gate = tmp_path / "gate"
    task = await admin.submit(script_task("web1", f"echo started; while [ ! -e {gate} ]; "
                                          "do sleep 0.02; done; echo finished"))  # fmt: skip
    await wait_for_line(admin, task.id, "started")
    leaving = asyncio.create_task(deregister(home.folder))
    await daemon.wait_for("SIGTERM: stopping")  # it drains first: the running task finishes
    gate.touch()
    code, output = await leaving
    assert code == 0, output
    assert f"task {task.id} succeeded" in daemon.output, "drained before its target went"
    assert f"stopped the agent (pid {daemon.process.pid})" in output
    assert "target web1 removed" in output and f"deleted {home.folder}" in output
    assert await daemon.stop() == 0 and not home.folder.exists()
    assert await server.state.store.agent_by_name("web1") is None
    entries = await server.state.store.audit(0, None, 50)
    assert any(e.action == "target deregistered" and e.subject == "web1" for e in entries)


async def test_a_kept_home_deregisters_once_and_then_says_it_is_gone(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    code, output = await deregister(home.folder, "--keep-home")
    assert code == 0 and "target web1 removed" in output and "kept" in output, output
    code, output = await deregister(home.folder, "--keep-home")
    assert code == 0 and "not registered there (already removed)" in output, output
    assert home.has_identity()


async def test_nothing_is_deleted_while_the_server_is_away(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    await server.shutdown()
    code, output = await deregister(home.folder)
    assert code == 69 and "nothing was deleted here" in output and "Traceback" not in output
    assert "then this agent with `tentacle-poll deregister --local-only`" in output
    assert home.has_identity()


async def test_local_only_asks_no_server_and_deletes_the_home(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    """A listening agent whose target was deleted: its server no longer connects, so plain
    deregister could only wait for it; --local-only leaves without asking."""
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    await admin.delete_target("web1")
    code, output = await deregister(home.folder, "--local-only", "--keep-home")
    assert code == 0 and "asked no server" in output and "Traceback" not in output, output
    assert f"kept {home.folder}\n" in output  # not "no longer registered": it did not ask
    code, output = await deregister(home.folder, "--local-only")
    assert code == 0 and "asked no server" in output and "Traceback" not in output, output
    assert not home.folder.exists()


async def test_a_home_without_an_identity_is_never_deleted(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('[[servers]]\nurl = "https://127.0.0.1:1"\n'
                                         f'thumbprint = "{"A" * 64}"\n')  # fmt: skip
    code, output = await deregister(tmp_path)
    assert code == 1 and "holds no certificate" in output and "Traceback" not in output
    assert (tmp_path / "agent.toml").exists()


async def test_an_agent_whose_target_was_deleted_stops_and_says_why(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    daemon = await start_agent_process(
        home.folder, unregistered_give_up_seconds="1", backoff_max_seconds="0.3"
    )
    processes.append(daemon)
    await admin.delete_target("web1")
    async with asyncio.timeout(60):
        code = await daemon.process.wait()
    await daemon.stop()
    assert code == EXIT_UNREGISTERED, daemon.output
    assert f"{comms_url(server)} has refused this agent's certificate" in daemon.output
    assert "no server takes this agent any more" in daemon.output
    assert "Traceback" not in daemon.output


async def test_a_refusal_that_ends_keeps_the_agent_polling(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    """Refused for less than unregistered_give_up_seconds (re-registered meanwhile): the agent
    goes on and runs the next task."""
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    agent = RunningAgent(home, unregistered_give_up_seconds=60.0)
    try:
        await admin.delete_target("web1")
        await register_agent(server, api_key, tmp_path / "web1", "web1")
        task = await admin.submit(script_task("web1", "echo back"))
        await wait_for_line(admin, task.id, "back")
        assert not agent.task.done() and agent.agent.unregistered_by == []
    finally:
        await agent.stop()


@pytest.mark.parametrize("flag", ["--keep-home", None])
async def test_deregister_of_a_home_never_registered_is_one_clear_line(
    tmp_path: Path, flag: str | None
) -> None:
    code, output = await deregister(tmp_path / "nothing-here", *([flag] if flag else []))
    assert code == 1 and "registered with no server" in output and "Traceback" not in output


async def test_one_node_of_a_cluster_answering_is_enough(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    """A node that is down (listed first) does not keep the agent registered: the nodes of one
    cluster (one certificate) share the database, so the live one removes the target."""
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    [live] = tomllib.loads(home.config_file.read_text())["servers"]
    down = {**live, "url": f"https://127.0.0.1:{free_port()}", "discovered": True}
    update_config_file(home.config_file, servers=[down, live])
    code, output = await deregister(home.folder)
    assert code == 0 and f"{comms_url(server)}: target web1 removed" in output, output
    assert await server.state.store.agent_by_name("web1") is None


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'{"agent_version": 7}', b"\xff"])
async def test_a_malformed_deregistration_is_a_400_and_removes_nothing(
    server: Server, api_key: str, tmp_path: Path, body: bytes
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    client = client_for(server, home)
    try:
        with pytest.raises(RequestRejected) as refused:
            await client.post(DEREGISTER, body, DeregisterResponse)
    finally:
        await client.close()
    assert refused.value.status == 400
    assert await server.state.store.agent_by_name("web1") is not None


async def test_an_agent_deregisters_only_its_own_target(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    """Its certificate names the target: web1 leaving leaves web2 (same labels, same host) in
    place, and web2 still polls."""
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    other = await register_agent(server, api_key, tmp_path / "web2", "web2")
    code, output = await deregister(home.folder)
    assert code == 0, output
    assert await server.state.store.agent_by_name("web1") is None
    assert await server.state.store.agent_by_name("web2") is not None
    client = client_for(server, other)
    try:
        request = PollRequest(free_slots=0, hold_seconds=0)
        assert (await client.post(POLL, request, PollResponse)).envelopes == []
    finally:
        await client.close()
