"""Listening mode at its edges: the server connects to the agent through a CONNECT proxy; an
impostor server, a wrong thumbprint, an unreachable target and cut connections. The same
exchange in both modes is tested by the end-to-end, deploy and fault tests (parametrised)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle_poll.agent.connections import absence
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.cli.fleet import listening_url
from tentacle_poll.config import toml_data, update_config_file
from tentacle_poll.exceptions import ConfigurationError, RequestRejected
from tentacle_poll.protocol.models import AddListeningTarget, TargetView, TaskState
from tentacle_poll.protocol.routes import DIAL_PREAMBLE
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.listening import jittered_backoff
from tentacle_poll.tls import generate_identity, load_identity, save_identity

from .conftest import (
    RunningAgent,
    add_listening_agent,
    free_port,
    new_agent_home,
    register_agent,
    run_and_follow,
    script_task,
    start_server,
    wait_for_line,
)
from .processes import Daemon
from .proxies import tinyproxy
from .relay import CuttingRelay
from .test_deadlines import cli
from .test_metrics import scrape, value


async def target(admin: AdminClient, name: str) -> TargetView:
    [found] = [t async for page in admin.target_pages({}) for t in page if t.name == name]
    return found


async def last_connection_failed(admin: AdminClient, name: str, failed: asyncio.Event) -> str:
    """The reason the server gives for its failed connection to ``name``, once ``failed``
    (the log line saying it is unreachable) is set."""
    await asyncio.wait_for(failed.wait(), 20)
    last = (await target(admin, name)).last_connection
    assert last is not None and not last.ok
    return last.detail


@contextlib.asynccontextmanager
async def running(home: AgentHome) -> AsyncIterator[RunningAgent]:
    agent = RunningAgent(home)
    try:
        yield agent
    finally:
        await agent.stop(levels=3)


async def test_a_listening_agent_is_reached_through_a_connect_proxy_with_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent_port = free_port()
    async with tinyproxy(tmp_path / "proxy", ("deploy", "pr0xy-pass"), [agent_port]) as proxy:
        url = f"http://deploy:pr0xy-pass@127.0.0.1:{proxy.port}"
        server = await start_server(tmp_path / "server", listening_proxy=url)
        try:
            key = await server.state.store.create_api_key("tests")
            home = await add_listening_agent(server, key, tmp_path / "web1", "web1",
                                             port=agent_port)  # fmt: skip
            async with (
                running(home),
                AdminClient(f"http://127.0.0.1:{server.admin_port}", key) as admin,
            ):
                final, events = await run_and_follow(admin, script_task("web1", "echo via proxy"))
                assert final.state == TaskState.SUCCEEDED
                assert [e.text for e in events] == ["via proxy"]
                assert (await target(admin, "web1")).last_connection.ok  # type: ignore[union-attr]
        finally:
            await server.shutdown()
        assert f"CONNECT 127.0.0.1:{agent_port}" in proxy.log_text()  # it went through the proxy
    assert "pr0xy-pass" not in caplog.text


@pytest.mark.parametrize(
    ("password", "allowed", "says"),
    [
        (
            "wrong",
            "the agent's port",
            "401 Unauthorized (check listening_proxy's user and password)",
        ),
        (
            "right",
            "443 only",
            "403 Access violation (the proxy does not allow a tunnel to this host and port",
        ),
    ],
)
async def test_a_proxy_refusing_the_tunnel_is_the_target_s_reason(
    tmp_path: Path, log_seen: Callable[[str], asyncio.Event],
    password: str, allowed: str, says: str,
) -> None:  # fmt: skip
    unreachable = log_seen("target web1 unreachable")
    agent_port = free_port()
    ports = [443] if allowed == "443 only" else [agent_port]
    async with tinyproxy(tmp_path / "proxy", ("deploy", "right"), ports) as proxy:
        server = await start_server(
            tmp_path / "server",
            listening_proxy=f"http://deploy:{password}@127.0.0.1:{proxy.port}",
        )
        try:
            key = await server.state.store.create_api_key("tests")
            await add_listening_agent(server, key, tmp_path / "web1", "web1", port=agent_port)
            async with AdminClient(f"http://127.0.0.1:{server.admin_port}", key) as admin:
                reason = await last_connection_failed(admin, "web1", unreachable)
        finally:
            await server.shutdown()
    assert f"refused a tunnel to 127.0.0.1:{agent_port}: HTTP/" in reason and says in reason


async def test_an_impostor_server_is_refused_and_gets_no_task_to_the_agent(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    """Another server (its own certificate) told the agent's address and thumbprint: it may
    fetch the agent's certificate (public), but the agent pins the real server and refuses it
    in the handshake; the impostor's task never runs."""
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    listening = home.settings().listen
    assert listening is not None
    impostor = await start_server(tmp_path / "impostor")
    refused = log_seen("not the pinned server")
    unreachable = log_seen("target web1 unreachable")
    try:
        impostor_key = await impostor.state.store.create_api_key("impostor")
        async with (
            running(home),
            AdminClient(f"http://127.0.0.1:{impostor.admin_port}", impostor_key) as impostor_admin,
        ):
            await impostor_admin.add_listening_target(AddListeningTarget(
                name="web1", listening_url=f"https://127.0.0.1:{listening.port}",
                thumbprint=load_identity(home.identity_folder).thumbprint,
                environments=["Test"], roles=["web"],
            ))  # fmt: skip
            stolen = await impostor_admin.submit(script_task("web1", "echo stolen"))
            await asyncio.wait_for(refused.wait(), 10)
            reason = await last_connection_failed(impostor_admin, "web1", unreachable)
            assert "TLS handshake failed" in reason
            # Meanwhile the real server's work runs: the agent was not disturbed.
            final, _ = await run_and_follow(admin, script_task("web1", "echo real"))
            assert final.state == TaskState.SUCCEEDED
            assert (await impostor_admin.task(stolen.id)).state == TaskState.QUEUED
    finally:
        await impostor.shutdown()


async def test_a_wrong_thumbprint_is_refused_before_anything_is_trusted(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    unreachable = log_seen("given to `targets add`")
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    listening = home.settings().listen
    assert listening is not None
    other = load_identity(new_agent_home(tmp_path / "other").identity_folder).thumbprint
    await admin.add_listening_target(AddListeningTarget(
        name="web1", listening_url=f"https://127.0.0.1:{listening.port}", thumbprint=other,
        environments=["Test"], roles=["web"], replace=True,
    ))  # fmt: skip
    async with running(home):
        reason = await last_connection_failed(admin, "web1", unreachable)
    assert f"not {other} given to `targets add`" in reason
    assert "show-thumbprint" in reason
    record = await server.state.store.agent_by_name("web1")
    assert record is not None and record.certificate_pem == ""  # nothing was trusted


async def test_an_unreachable_target_is_shown_so_and_its_task_s_deadline_applies(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    unreachable = log_seen("target web1 unreachable")
    await add_listening_agent(server, api_key, tmp_path / "web1", "web1")  # never started
    task = await admin.submit(script_task("web1", "echo never", expires_seconds=1.0))
    reason = await last_connection_failed(admin, "web1", unreachable)
    assert "connection refused" in reason and "tentacle-poll listen" in reason
    shown = await target(admin, "web1")
    assert not shown.connected and shown.listening_url is not None
    metrics = await scrape(server, api_key)
    assert value(metrics["tentacle_poll_listening_targets_unreachable"],
                 "tentacle_poll_listening_targets_unreachable") == 1  # fmt: skip
    final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.EXPIRED


async def test_an_agent_no_server_connects_to_says_so_once_and_says_when_one_does(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The server given a wrong address (a firewall in the way looks the same from the agent):
    the agent's requests only wait, so it warns, once; then the right address is given and it
    says the server is back."""
    monkeypatch.setattr(absence, "ABSENCE_WARNING_SECONDS", 0.5)
    port = free_port()
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1", port=port,
                                     listening_url=f"https://127.0.0.1:{free_port()}")  # fmt: skip
    absent, back = log_seen("no server has connected to"), log_seen("the server connected to")
    async with running(home):
        await asyncio.wait_for(absent.wait(), 15)
        assert not back.is_set()
        thumbprint = load_identity(home.identity_folder).thumbprint
        fixed = AddListeningTarget(
            name="web1", listening_url=f"https://127.0.0.1:{port}", thumbprint=thumbprint,
            environments=["Test"], roles=["web"], replace=True,
        )  # fmt: skip
        await admin.add_listening_target(fixed)
        await asyncio.wait_for(back.wait(), 30)
        final, _ = await run_and_follow(admin, script_task("web1", "echo reached"))
    assert final.state == TaskState.SUCCEEDED
    warnings = [r.message for r in caplog.records if "no server has connected" in r.message]
    assert len(warnings) == 1 and f"to 127.0.0.1:{port} for " in warnings[0], warnings
    assert "`tentacle-poll targets add`" in warnings[0]


async def test_an_agent_pinned_to_another_server_says_the_connections_it_refused(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """`listen --server-thumbprint` given another server's: this server's connections come and
    are refused; the warning says so rather than that no server came."""
    monkeypatch.setattr(absence, "ABSENCE_WARNING_SECONDS", 3.0)
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    listening = home.settings().listen
    assert listening is not None
    other_server = generate_identity("other-server").thumbprint
    pinned_elsewhere = listening.model_copy(update={"server_thumbprint": other_server})
    update_config_file(home.config_file, listen=toml_data(pinned_elsewhere))
    refused = log_seen("listening port: refused a connection from 127.0.0.1")
    warned = log_seen("no server has connected to")
    async with running(home):
        again = AddListeningTarget(
            name="web1", listening_url=f"https://127.0.0.1:{listening.port}", replace=True,
            thumbprint=load_identity(home.identity_folder).thumbprint,
            environments=["Test"], roles=["web"],
        )  # fmt: skip
        await admin.add_listening_target(again)  # dialled at once, not after a backoff
        await asyncio.wait_for(refused.wait(), 15)
        await asyncio.wait_for(warned.wait(), 15)
    warning = next(r.message for r in caplog.records if "no server has" in r.message)
    assert "were refused (the 'listening port: refused' lines say why" in warning, warning


async def test_connections_cut_mid_task_lose_no_line_and_run_it_once(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    """The server reaches the agent through a relay that cuts every connection mid-task and
    refuses new ones for a while: the output arrives whole, once, and the result lands."""
    port = free_port()
    async with CuttingRelay(port) as relay:
        home = await add_listening_agent(
            server, api_key, tmp_path / "web1", "web1", port=port,
            listening_url=f"https://127.0.0.1:{relay.port}",
        )  # fmt: skip
        gate, runs = tmp_path / "gate", tmp_path / "runs"
        body = (f"echo run >> {runs}; seq 1 500\n"
                f"while [ ! -e {gate} ]; do sleep 0.02; done\nseq 501 1000\n")  # fmt: skip
        async with running(home):
            task = await admin.submit(script_task("web1", body))
            await wait_for_line(admin, task.id, "500")
            unreachable = log_seen("target web1 unreachable")
            relay.cut_all_and_refuse()
            gate.touch()  # the second half is printed while the server cannot reach the agent
            await asyncio.wait_for(unreachable.wait(), 20)  # the keeper's dials fail meanwhile
            relay.restore()
            final = await admin.follow(task.id, lambda _: None)
            events = (await admin.events(task.id, 0, 0)).events
    assert final.state == TaskState.SUCCEEDED
    assert [e.text for e in events] == [str(i) for i in range(1, 1001)]
    assert runs.read_text() == "run\n"


@pytest.mark.parametrize(
    "said",
    [b"", b"TENTACLE/1 DI", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01",
     b"TENTACLE/1 NOPE\n", bytes(range(256))],
)  # fmt: skip
async def test_whatever_a_scanner_sends_the_listening_port_is_refused_and_work_goes_on(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, said: bytes,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    listening = home.settings().listen
    assert listening is not None
    refused = log_seen("listening port: refused a connection from 127.0.0.1")
    async with running(home):
        final, _ = await run_and_follow(admin, script_task("web1", "echo before"))
        reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)
        writer.write(said)
        writer.write_eof()
        with contextlib.suppress(ConnectionResetError):  # closed with bytes unread: a reset
            assert await reader.read() == b""  # closed by the agent, nothing said back
        writer.close()
        await asyncio.wait_for(refused.wait(), 15)
        final, events = await run_and_follow(admin, script_task("web1", "echo after"))
    assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["after"]


async def test_the_command_line_sets_up_a_listening_target_end_to_end(
    server: Server, api_key: str, tmp_path: Path, processes: list[Daemon]
) -> None:
    """`listen` on the target, `targets add` on the server's side, the daemon as a process:
    `targets` shows the listening target connected, and a task runs."""
    home, port = tmp_path / "web1", free_port()
    code, said = await cli(
        server, api_key, "listen", "--home", str(home), "--host", "127.0.0.1", "--port",
        str(port), "--server-thumbprint", server.state.thumbprint,
    )  # fmt: skip
    assert code == 0, said
    # The command it prints for the server, run as printed (its placeholders filled in).
    printed = said.split("on the server: tentacle-poll ")[1].split()
    filled = {"NAME": "web1", "ENV": "Test", "ROLE": "web"}
    code, said = await cli(server, api_key, *(filled.get(word, word) for word in printed))
    assert code == 0 and "added web1" in said, said
    agent = await Daemon.start("--home", str(home))
    processes.append(agent)
    await agent.wait_for("listening for the server on 127.0.0.1")
    await agent.wait_for("agent started with")  # no name of its own: not "agent None started"
    # named as people read it, not by the journal's label https://listening:PORT
    await agent.wait_for(f"polling the server connecting to 127.0.0.1:{port}")
    code, said = await cli(server, api_key, "task", "run", "--target", "web1", "--script",
                           "echo from the command line")  # fmt: skip
    assert code == 0 and "from the command line" in said, said
    code, said = await cli(server, api_key, "targets")
    assert f"listening at https://127.0.0.1:{port}; last connection worked" in said, said
    code, said = await cli(server, api_key, "diagnose", "--home", str(home))
    assert code == 0 and "ok   port: held by the running agent" in said, said


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["listen"], "--server-thumbprint is needed"),
        (["listen", "--server-thumbprint", "abc"], "thumbprint"),
        (["listen", "--server-thumbprint", "A" * 64, "--port", "70000"], "port"),
        (["listen", "--server-thumbprint", "A" * 64, "--port", "0"], "port"),
        (["targets", "add", "w", "--listening", "http://h:10933", "--thumbprint", "A" * 64,
          "--environment", "T", "--role", "r"], "https://HOST:10933"),
        (["targets", "add", "w", "--listening", "https://h:1/x", "--thumbprint", "A" * 64,
          "--environment", "T", "--role", "r"], "is not https://HOST:PORT"),
        (["targets", "add", "w", "--listening", "https://::1:10933", "--thumbprint", "A" * 64,
          "--environment", "T", "--role", "r"], "brackets: https://[::1]:10933"),
        (["targets", "add", "w", "--listening", "https://h", "--thumbprint", "xyz",
          "--environment", "T", "--role", "r"], "--thumbprint"),
        (["targets", "add", "web 1!", "--listening", "https://h:1", "--thumbprint", "A" * 64,
          "--environment", "T", "--role", "r"], "name: must be 1 to 100 letters, digits"),
    ],
)  # fmt: skip
async def test_listening_mistakes_are_one_clear_line(
    server: Server, api_key: str, tmp_path: Path, args: list[str], says: str
) -> None:
    code, said = await cli(server, api_key, *args, "--home", str(tmp_path / "h"))
    assert code != 0 and says in said and "Traceback" not in said, said
    assert await server.state.store.list_agents() == []


async def test_each_side_refuses_its_own_thumbprint_for_the_other_s(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    """The thumbprints pasted the wrong way round: the agent's own given to `listen` as the
    server's, the server's own given to `targets add` as the agent's. Neither could ever
    connect; both are refused at once, saying which thumbprint to give."""
    home = tmp_path / "web1"
    listen = ["listen", "--home", str(home), "--host", "127.0.0.1", "--port", str(free_port())]
    code, said = await cli(server, api_key, *listen, "--server-thumbprint", server.state.thumbprint)
    assert code == 0, said
    own = load_identity(home / "identity").thumbprint
    code, said = await cli(server, api_key, *listen, "--server-thumbprint", own)
    assert code == 1 and f"{own} is this agent's own" in said and "server show-thumbprint" in said
    assert AgentHome(home).settings().listen.server_thumbprint == server.state.thumbprint
    code, said = await cli(
        server, api_key, "targets", "add", "web1", "--listening", "https://127.0.0.1:1",
        "--thumbprint", server.state.thumbprint, "--environment", "T", "--role", "r",
    )  # fmt: skip
    assert code == 1 and "is this server's own certificate; give the agent's" in said, said
    assert await server.state.store.list_agents() == []


async def test_only_an_admin_key_adds_a_listening_target(server: Server, tmp_path: Path) -> None:
    key = await server.state.store.create_api_key("ci", scope="deploy")
    code, said = await cli(
        server, key, "targets", "add", "w", "--listening", "https://h:1", "--thumbprint",
        "A" * 64, "--environment", "T", "--role", "r",
    )  # fmt: skip
    assert code != 0 and "has the deploy scope" in said, said
    assert await server.state.store.list_agents() == []


@given(text=st.text(max_size=60))
def test_any_listening_address_is_taken_or_refused_in_words(text: str) -> None:
    try:
        url = listening_url(text)
    except ConfigurationError as exc:
        assert "--listening" in str(exc)
    else:  # what the command line takes, the API takes too
        AddListeningTarget(name="w", listening_url=url, thumbprint="A" * 64,
                           environments=["T"], roles=["r"])  # fmt: skip


async def test_a_listening_agent_deregisters_itself_over_the_server_s_connection(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> None:
    """`deregister` stops the daemon, then sends the same request as in polling mode over the
    next connection the server opens: the target goes, then the home."""
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    agent = await Daemon.start("--home", str(home.folder))
    processes.append(agent)
    final, _ = await run_and_follow(admin, script_task("web1", "echo here"))
    assert final.state == TaskState.SUCCEEDED
    code, said = await cli(server, api_key, "deregister", "--home", str(home.folder))
    assert code == 0 and "target web1 removed" in said and f"deleted {home.folder}" in said, said
    assert await server.state.store.agent_by_name("web1") is None
    assert not home.folder.exists()


async def test_one_agent_polls_one_server_and_listens_for_another(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    """Both modes in one daemon: registered with the first server (polling), listening for the
    second; each server's task runs, and each sees the target connected."""
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    second = await start_server(tmp_path / "second")
    try:
        key = await second.state.store.create_api_key("tests")
        await add_listening_agent(second, key, tmp_path / "web1", "web1")
        async with (
            running(home),
            AdminClient(f"http://127.0.0.1:{second.admin_port}", key) as other,
        ):
            for each in (admin, other):
                final, events = await run_and_follow(each, script_task("web1", "echo both"))
                assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["both"]
            assert (await target(admin, "web1")).listening_url is None
            assert (await target(other, "web1")).listening_url is not None
    finally:
        await second.shutdown()


async def test_a_listening_port_in_use_stops_the_agent_with_what_to_do(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    listening = home.settings().listen
    assert listening is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", listening.port))
        taken.listen()
        agent = await Daemon.start("--home", str(home.folder))
        code = await agent.process.wait()
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{listening.port} for the server" in agent.output
    assert "tentacle-poll listen --port" in agent.output and "Traceback" not in agent.output


async def test_an_agent_with_a_new_certificate_is_told_the_server_does_not_trust_it(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    """A target reinstalled with a new key (new-certificate --force) is refused by the server,
    and both sides say why (the agent hears the server's alert on its first request, as a
    polling agent does)."""
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    async with running(home):
        final, _ = await run_and_follow(admin, script_task("web1", "echo enrolled"))
        assert final.state == TaskState.SUCCEEDED
    save_identity(home.identity_folder, generate_identity("web1"))
    told = log_seen("did not accept this agent's certificate")
    unreachable = log_seen("target web1 unreachable")
    async with running(home):
        await asyncio.wait_for(told.wait(), 20)
        reason = await last_connection_failed(admin, "web1", unreachable)
    assert "its client certificate is not registered here" in reason


async def test_a_listening_agent_rotates_its_certificate_without_re_adding_its_target(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> None:
    """`rotate-certificate` sends the new certificate over a connection the server opens, so
    the daemon must be stopped (it holds the port): refused with what to do while it runs;
    stopped, the server trusts the new certificate and the next start works with it."""
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    before = load_identity(home.identity_folder).thumbprint
    agent = await Daemon.start("--home", str(home.folder))
    processes.append(agent)
    final, _ = await run_and_follow(admin, script_task("web1", "echo old"))
    code, said = await cli(server, api_key, "rotate-certificate", "--home", str(home.folder))
    assert code != 0 and "holds: stop it" in said and "Traceback" not in said, said
    assert await agent.stop() == 0
    code, said = await cli(server, api_key, "rotate-certificate", "--home", str(home.folder))
    assert code == 0, said
    after = load_identity(home.identity_folder).thumbprint
    record = await server.state.store.agent_by_name("web1")
    assert record is not None and record.thumbprint == after != before
    processes.append(await Daemon.start("--home", str(home.folder)))
    final, events = await run_and_follow(admin, script_task("web1", "echo new"))
    assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["new"]


async def test_a_target_listening_on_ipv6_is_reached_and_its_absence_said_in_brackets(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    port = free_port()
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1", host="::1",
                                     port=port, listening_url=f"https://[::1]:{port}")  # fmt: skip
    listening = log_seen(f"listening for the server on [::1]:{port}")
    async with running(home):
        final, events = await run_and_follow(admin, script_task("web1", "echo over v6"))
        assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["over v6"]
    assert listening.is_set()
    reason = await last_connection_failed(admin, "web1", log_seen("target web1 unreachable"))
    assert f"cannot connect to [::1]:{port}: connection refused" in reason


@pytest.mark.parametrize("port_of", ["admin API (plain HTTP)", "comms port (TLS server)"])
async def test_an_address_where_no_agent_listens_is_said_so(
    server: Server, admin: AdminClient, log_seen: Callable[[str], asyncio.Event], port_of: str
) -> None:
    """A wrong port given to `targets add` (here the server's own ports): enrolment finds no
    agent, and says so with what to check."""
    port = server.admin_port if port_of.startswith("admin") else server.comms_port
    unreachable = log_seen("target w unreachable")
    url = f"https://127.0.0.1:{port}"
    wrong_port = AddListeningTarget(name="w", listening_url=url, thumbprint="A" * 64,
                                    environments=["T"], roles=["r"])  # fmt: skip
    await admin.add_listening_target(wrong_port)
    reason = await last_connection_failed(admin, "w", unreachable)
    assert f"reached https://127.0.0.1:{port}, but no tentacle-poll agent answered" in reason
    assert "check the address and port" in reason and "()" not in reason, reason


async def test_a_server_certificate_rotation_reaches_a_listening_agent(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    """Prepared, the next thumbprint is announced over the pinned connections the server opens
    and stored under [listen]; activated, the server's new connections show the new
    certificate and the agent takes them: work goes on, and the old thumbprint is dropped."""
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    old = server.state.thumbprint
    async with running(home):
        prepared = await admin.change_server_certificate("prepare")
        await run_and_follow(admin, script_task("web1", "echo learn"))  # a poll answer says it
        listening = home.settings().listen
        assert listening is not None and listening.thumbprints == [old, prepared.next_thumbprint]
        assert (await target(admin, "web1")).trusts_next_server_certificate is True
        activated = await admin.change_server_certificate("activate")
        assert activated.thumbprint == prepared.next_thumbprint
        final, events = await run_and_follow(admin, script_task("web1", "echo after"))
        assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["after"]
        listening = home.settings().listen
        assert listening is not None and listening.thumbprints == [prepared.next_thumbprint]
        # Every connection opened from here shows only the new certificate.
        assert server.state.connections.cut([load_identity(home.identity_folder).thumbprint])
        final, events = await run_and_follow(admin, script_task("web1", "echo new ones"))
        assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["new ones"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://h:0", "port 0 is out of range: use 1-65535"),
        ("https://h:99999", "port 99999 is out of range: use 1-65535"),
        ("https://h:1/x", "must be https://HOST:PORT"),  # in words, not a regex
        ("http://h:1", "must be https://HOST:PORT"),
    ],
)
async def test_the_api_refuses_an_address_it_could_not_dial(
    admin: AdminClient, server: Server, url: str, says: str
) -> None:
    body = {"name": "w", "listening_url": url, "thumbprint": "A" * 64,
            "environments": ["T"], "roles": ["r"]}  # fmt: skip
    with pytest.raises(RequestRejected) as refused:
        await admin.add_listening_target(AddListeningTarget.model_construct(**body))
    assert refused.value.status == 400 and f"listening_url: {says}" in str(refused.value)
    assert await server.state.store.list_agents() == []


async def test_a_peer_stalling_many_connections_does_not_keep_the_server_out(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path,
    log_seen: Callable[[str], asyncio.Event],
) -> None:  # fmt: skip
    """40 connections from another address that say the server's preamble and then stall the
    handshake: that address gets 8 places, the rest are refused, and the server (from its own
    address) still connects and runs work."""
    home = await add_listening_agent(server, api_key, tmp_path / "web1", "web1")
    listening = home.settings().listen
    assert listening is not None
    limited = log_seen("of its connections are starting already")
    stalled: list[socket.socket] = []
    async with running(home) as agent:
        await agent.agent.started.wait()  # listening by then
        loop = asyncio.get_running_loop()
        for _ in range(40):
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind(("127.0.0.2", 0))
            stalled.append(sock)
            await loop.sock_connect(sock, ("127.0.0.1", listening.port))
            await loop.sock_sendall(sock, DIAL_PREAMBLE)
        await asyncio.wait_for(limited.wait(), 10)
        # Three tasks at once need more connections than the spares: the server opens them
        # during the attack, well before the stalled handshakes time out (10 s).
        async with asyncio.timeout(6):
            runs = [
                run_and_follow(admin, script_task("web1", "sleep 0.2; echo served"))
                for _ in range(3)
            ]
            results = await asyncio.gather(*runs)
    for sock in stalled:
        sock.close()
    for final, events in results:
        assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["served"]


@given(failures=st.integers(1, 10_000), refused=st.booleans(),
       cap=st.floats(0.1, 3600))  # fmt: skip
def test_the_keeper_backs_off_with_the_agents_rule(
    failures: int, refused: bool, cap: float
) -> None:
    """Full jitter: never negative, never past the cap (15 s when refused), and up to
    0.5 s x 2^n before that."""
    wait = jittered_backoff(failures, refused, cap)
    limit = min(cap, 15.0) if refused else cap
    assert 0 <= wait <= min(limit, 0.5 * 2 ** min(failures, 30))
