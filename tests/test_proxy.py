"""Through real proxies: tinyproxy and squid (CONNECT, with and without basic auth) and
haproxy routing by SNI on one shared port. Mutual TLS runs end to end through each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tentacle_poll.agent.connections.proxy import PROXY_PASSWORD_VARIABLE, bypassed, system_proxy
from tentacle_poll.agent.connections.transport import CommsClient, client_for
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import (
    AgentSettings,
    ProxySettings,
    ServerNode,
    ServerSettings,
)
from tentacle_poll.exceptions import ConfigurationError, ProxyRefused, ServerIdentityMismatch
from tentacle_poll.protocol.models import PollRequest, PollResponse, TaskState
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.dialling import listening_proxy

from .conftest import RunningAgent, new_agent_home, register_agent, run_and_follow, script_task
from .proxies import sni_router, squid, tinyproxy
from .test_trust import ImpostorServer


def test_no_proxy_matches_suffixes_cidr_ports_and_star() -> None:
    rules = ".corp.example, deploy.example, 10.0.0.0/8, 192.168.1.5, [::1], other:8443"
    assert bypassed("a.corp.example", 443, rules)
    assert bypassed("deploy.example", 443, rules) and bypassed("x.deploy.example", 443, rules)
    assert not bypassed("notdeploy.example", 443, rules)
    assert bypassed("10.20.30.40", 10943, rules) and not bypassed("11.0.0.1", 443, rules)
    assert bypassed("192.168.1.5", 443, rules) and bypassed("::1", 443, rules)
    assert bypassed("other", 8443, rules) and not bypassed("other", 443, rules)
    assert bypassed("anything", 1, "*")


def test_system_proxy_reads_the_environment_and_refuses_https_proxies() -> None:
    env = {"HTTPS_PROXY": "http://bob:s%40fe@proxy.local:3128", "NO_PROXY": "10.0.0.0/8"}
    route = system_proxy("https://deploy.example:10943", env)
    assert route is not None and route.url == "http://proxy.local:3128"
    assert route.headers["Proxy-Authorization"].startswith("Basic ")
    assert "bob" not in route.url and "s@fe" not in repr(route)
    assert system_proxy("https://10.1.2.3:10943", env) is None
    with pytest.raises(ConfigurationError, match="only http:// proxies"):
        system_proxy("https://x:1", {"https_proxy": "https://proxy.local:3129"})


def explicit(port: int, auth: tuple[str, str] | None = None) -> ProxySettings:
    user, password = auth or (None, None)
    return ProxySettings.model_validate(
        {
            "mode": "explicit",
            "host": "127.0.0.1",
            "port": port,
            "username": user,
            "password": password,
        }
    )


def start_proxy(kind: str, folder: Path, auth: tuple[str, str] | None, server: Server):  # type: ignore[no-untyped-def]
    if kind == "tinyproxy":
        return tinyproxy(folder, auth, [server.comms_port])
    return squid(folder, auth)


def direct_client(
    server: Server, folder: Path, settings: AgentSettings, **node: object
) -> CommsClient:
    pinned = ServerNode(
        url=f"https://127.0.0.1:{server.comms_port}", thumbprint=server.state.thumbprint
    )
    return client_for(
        pinned.model_copy(update=node), settings, new_agent_home(folder).identity_folder
    )


async def registered_agent(
    server: Server, api_key: str, folder: Path, proxy: ProxySettings, **node: object
) -> AgentHome:
    return await register_agent(server, api_key, folder, folder.name, proxy=proxy, **node)


@pytest.mark.parametrize("kind", ["tinyproxy", "squid"])
@pytest.mark.parametrize("with_auth", [False, True])
async def test_agent_works_through_a_connect_proxy(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, kind: str, with_auth: bool
) -> None:
    auth = ("deployer", "pr0xy-pa55") if with_auth else None
    async with start_proxy(kind, tmp_path / kind, auth, server) as proxy:
        home = await registered_agent(
            server, api_key, tmp_path / "web1", explicit(proxy.port, auth)
        )
        agent = RunningAgent(home)
        final, events = await run_and_follow(admin, script_task("web1", "echo through the proxy"))
        await agent.stop()
        assert final.state == TaskState.SUCCEEDED
        assert [e.text for e in events] == ["through the proxy"]
        assert f"127.0.0.1:{server.comms_port}" in proxy.log_text()  # it really went through
    assert home.config_file.stat().st_mode & 0o077 == 0  # it holds the proxy password


@pytest.mark.parametrize("kind", ["tinyproxy", "squid"])
async def test_wrong_proxy_password_gets_a_clear_error(
    server: Server, tmp_path: Path, kind: str
) -> None:
    auth = ("deployer", "right")
    async with start_proxy(kind, tmp_path / kind, auth, server) as proxy:
        settings = AgentSettings(proxy=explicit(proxy.port, ("deployer", "wrong")))
        client = direct_client(server, tmp_path / "web1", settings)
        try:
            with pytest.raises(ProxyRefused) as refused:
                await client.post(POLL, PollRequest(free_slots=0), PollResponse)
        finally:
            await client.close()
    message = str(refused.value)
    assert f"the proxy http://127.0.0.1:{proxy.port} refused the tunnel" in message
    assert ("HTTP 407" in message and "username and password" in message) or "HTTP 401" in message
    assert "wrong" not in message


async def test_proxy_that_forbids_the_port_names_the_status(server: Server, tmp_path: Path) -> None:
    async with tinyproxy(tmp_path / "tp", None, [1]) as proxy:  # CONNECT allowed to port 1 only
        client = direct_client(server, tmp_path / "web1", AgentSettings(proxy=explicit(proxy.port)))
        try:
            with pytest.raises(ProxyRefused, match="HTTP 403"):
                await client.post(POLL, PollRequest(free_slots=0), PollResponse)
        finally:
            await client.close()


async def test_sni_router_on_one_port_reaches_the_server_only_by_its_name(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    async with (
        ImpostorServer(tmp_path / "decoy") as decoy,
        sni_router(
            tmp_path / "haproxy", {"deploy.example": server.comms_port, "www.example": decoy.port}
        ) as router,
    ):
        shared = f"https://127.0.0.1:{router.port}"
        home = await registered_agent(
            server,
            api_key,
            tmp_path / "web1",
            ProxySettings(),
            url=shared,
            server_name="deploy.example",
        )
        assert home.settings().servers[0].server_name == "deploy.example"
        agent = RunningAgent(home)
        final, events = await run_and_follow(admin, script_task("web1", "echo routed by name"))
        await agent.stop()
        assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["routed by name"]
        node = home.settings().servers[0].model_copy(update={"server_name": "www.example"})
        client = client_for(node, AgentSettings(), home.identity_folder)
        try:
            with pytest.raises(ServerIdentityMismatch):
                await client.post(POLL, PollRequest(free_slots=0), PollResponse)
        finally:
            await client.close()
        assert bytes(decoy.received) == b""


async def test_the_proxy_password_can_come_from_the_environment_alone(
    server: Server,
    api_key: str,
    admin: AdminClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "from-the-env-0nly"
    monkeypatch.setenv(PROXY_PASSWORD_VARIABLE, password)
    async with tinyproxy(
        tmp_path / "tinyproxy", ("deployer", password), [server.comms_port]
    ) as proxy:
        settings = explicit(proxy.port, ("deployer", "")).model_copy(update={"password": None})
        home = await registered_agent(server, api_key, tmp_path / "web1", settings)
        agent = RunningAgent(home)
        final, _ = await run_and_follow(admin, script_task("web1", "echo env password"))
        await agent.stop()
    assert final.state == TaskState.SUCCEEDED
    assert password not in home.config_file.read_text()  # used, never stored


async def test_helper_processes_start_from_a_folder_only_root_can_enter(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone in a 0700 folder (as /root is): haproxy, run as nobody, must still start."""
    private = tmp_path / "private-clone"
    private.mkdir(mode=0o700)
    monkeypatch.chdir(private)
    async with sni_router(tmp_path / "haproxy", {"deploy.example": server.comms_port}) as router:
        _, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.close()


PROXY_TEXTS = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda scheme, host, port: f"{scheme}://user:S3cret@{host}:{port}",
        st.sampled_from(["http", "https", "socks5", "HTTP"]),
        st.sampled_from(["proxy.local", "[::1]", "[::1", "10.0.0.1", ""]),
        st.one_of(st.integers(-1, 200_000).map(str), st.text(max_size=5)),
    ),
)


@given(text=PROXY_TEXTS)
def test_any_proxy_address_from_the_environment_is_taken_or_refused_in_words(text: str) -> None:
    """HTTPS_PROXY with a port out of range or a broken IPv6 address raised ValueError (a
    traceback at the agent's start); the server's listening_proxy setting likewise."""
    try:
        route = system_proxy("https://deploy.example:10943", {"HTTPS_PROXY": text})
    except ConfigurationError as exc:
        assert "S3cret" not in str(exc)
    else:
        assert route is None or 1 <= route.port <= 65535
    try:
        settings = ServerSettings(listening_proxy=text)
    except ValidationError as exc:
        assert "S3cret" not in str(exc)
    else:
        proxy = listening_proxy(settings.listening_proxy, environ={})
        assert proxy is None or 1 <= proxy.port <= 65535
