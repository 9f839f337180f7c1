"""Shared fixtures: a real server on loopback ports, registered agents, an admin client.

Everything runs for real: mutual TLS over 127.0.0.1, scripts in subprocesses, SQLite on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from loguru import logger

from tentacle_poll.agent.connections.registration import Registration, register
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.daemon import Agent
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import (
    ListeningSettings,
    ProxySettings,
    ServerSettings,
    toml_data,
    update_config_file,
)
from tentacle_poll.protocol.models import (
    AddListeningTarget,
    Event,
    ScriptSpec,
    SubmitTask,
    TaskView,
    Variable,
)
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store import AgentRecord
from tentacle_poll.tls import generate_identity, load_identity, save_identity

from .browser import browser, page  # noqa: F401  (fixtures of the portal tests)
from .processes import Daemon

C = TypeVar("C", bound=CommsClient)

# "ci" (the default) keeps every property test in `make test` short; `make fuzz` runs "fuzz".
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
LONG_RUN = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"


@pytest.fixture(autouse=True)
def loguru_to_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """pytest's caplog does not see loguru output unless a sink forwards it."""
    # No masking patcher: tests then prove that no secret is logged at all, masked or not.
    logger.configure(patcher=None)
    handler_id = logger.add(caplog.handler, format="{message}", level="DEBUG", diagnose=False)
    yield
    with contextlib.suppress(ValueError):  # a test that set up logging removed it already
        logger.remove(handler_id)


@pytest.fixture
def log_seen() -> Iterator[Callable[[str], asyncio.Event]]:
    """``log_seen(text)`` gives an event set once a log message containing ``text`` is written."""
    watched: list[tuple[str, asyncio.Event, asyncio.AbstractEventLoop]] = []

    def sink(message: object) -> None:
        for text, event, loop in watched:
            if text in str(message):
                loop.call_soon_threadsafe(event.set)

    handler_id = logger.add(sink, format="{message}", level="DEBUG")

    def watch(text: str) -> asyncio.Event:
        event = asyncio.Event()
        watched.append((text, event, asyncio.get_running_loop()))
        return event

    yield watch
    logger.remove(handler_id)


@pytest.fixture
async def processes() -> AsyncIterator[list[Daemon]]:
    """Real processes, killed at the end; none may have printed a traceback (at shutdown or
    ever): every fault a test produces must end in words, not in a stack."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        await daemon.kill()
    for daemon in started:
        for sign in ("Traceback", "Event loop is closed", "was never retrieved"):
            at = daemon.output.find(sign)
            before = daemon.output[max(at - 3000, 0) :]  # the lines leading up to it
            assert at < 0, f"{sign!r} in the output of {daemon}:\n{before}"


@pytest.fixture(autouse=True)
def no_leftover_scripts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Task scripts whose agent a test killed (kill -9 by design, or a timeout) would run on
    and slow every later test: after each test that has a tmp_path, whatever still works in
    it is ended."""
    uses_folder = "tmp_path" in request.fixturenames
    folder = request.getfixturevalue("tmp_path") if uses_folder else None
    yield
    for pid in _working_in(folder) if folder else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _working_in(folder: Path) -> list[int]:
    """Processes whose working folder is inside ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_settings(**overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "comms_host": "127.0.0.1",
        "comms_port": 0,
        "admin_host": "127.0.0.1",
        "admin_port": 0,
        "hold_seconds": 5.0,
        "listening_backoff_max_seconds": 0.5,
    }
    values.update(overrides)
    return ServerSettings.model_validate(values)


async def start_server(home: Path, **overrides: object) -> Server:
    server = Server(server_settings(**overrides), home)
    await server.startup()
    return server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    running = await start_server(tmp_path / "server")
    yield running
    await running.shutdown()


@pytest.fixture
async def api_key(server: Server) -> str:
    return await server.state.store.create_api_key("tests")


@pytest.fixture
async def admin(server: Server, api_key: str) -> AsyncIterator[AdminClient]:
    async with AdminClient(f"http://127.0.0.1:{server.admin_port}", api_key) as client:
        yield client


def comms_url(server: Server) -> str:
    return f"https://127.0.0.1:{server.comms_port}"


def client_for(server: Server, home: AgentHome, client_class: type[C] = CommsClient) -> C:  # type: ignore[assignment]
    """The agent's own HTTP client for ``home`` (its certificate, the server pinned)."""
    return client_class(comms_url(server), [server.state.thumbprint], home.identity_folder)


@pytest.fixture
async def agent_client(server: Server, api_key: str, tmp_path: Path) -> AsyncIterator[CommsClient]:
    """The HTTP client of an agent registered as "web1", to speak the protocol directly."""
    client = client_for(server, await register_agent(server, api_key, tmp_path / "web1", "web1"))
    yield client
    await client.close()


def new_agent_home(folder: Path) -> AgentHome:
    home = AgentHome(folder)
    save_identity(home.identity_folder, generate_identity(folder.name))
    return home


async def register_agent(
    server: Server, api_key: str, folder: Path, name: str, **extra: object
) -> AgentHome:
    url, thumbprint = comms_url(server), server.state.thumbprint
    return await register_at(url, thumbprint, api_key, folder, name, **extra)


async def registered(
    server: Server, api_key: str, tmp_path: Path, name: str = "web1"
) -> AgentRecord:
    """Registers ``name`` (its home in tmp_path/name) and returns the server's record of it."""
    await register_agent(server, api_key, tmp_path / name, name)
    record = await server.state.store.agent_by_name(name)
    assert record is not None
    return record


async def register_at(
    server_url: str, thumbprint: str, api_key: str, folder: Path, name: str, **extra: object
) -> AgentHome:
    """Registers the agent home in ``folder`` (made if new) with the server at ``server_url``
    (``url=`` overrides it, e.g. to go through a router).
    ``proxy`` (ProxySettings) is configured first; other keywords go to Registration."""
    home = AgentHome(folder) if (folder / "identity").exists() else new_agent_home(folder)
    proxy = extra.pop("proxy", None)
    if isinstance(proxy, ProxySettings):
        update_config_file(home.config_file, proxy=toml_data(proxy))
    details = Registration(
        server_url=str(extra.pop("url", server_url)),
        name=name,
        environments=extra.pop("environments", ["Test"]),
        roles=extra.pop("roles", ["web"]),
        server_thumbprint=thumbprint,
        api_key=api_key,
        **extra,  # type: ignore[arg-type]
    )
    await register(home, details)
    return home


class RunningAgent:
    """An agent daemon running as a task on the test's event loop."""

    def __init__(self, home: AgentHome, **settings: object) -> None:
        values: dict[str, object] = {"cancel_grace_seconds": 2.0, "backoff_max_seconds": 0.5}
        values.update(settings)
        base = home.settings()
        self.agent = Agent(home, base.model_copy(update=values))
        self.task = asyncio.create_task(self.agent.run())

    async def stop(self, levels: int = 1) -> None:
        for _ in range(levels):
            self.agent.escalate()
        await asyncio.wait_for(self.task, 30)


AgentFactory = Callable[..., Awaitable[RunningAgent]]


async def add_listening_agent(
    server: Server, api_key: str, folder: Path, name: str, **extra: object
) -> AgentHome:
    admin_url = f"http://127.0.0.1:{server.admin_port}"
    return await listen_at(admin_url, server.state.thumbprint, api_key, folder, name, **extra)


async def listen_at(
    admin_url: str, server_thumbprint: str, api_key: str, folder: Path, name: str,
    **extra: object,
) -> AgentHome:  # fmt: skip
    """Listening mode's registration: the agent listens on a free loopback port (or
    ``listening_url``'s, e.g. a relay in front of it) and trusts the server's thumbprint; the
    server is told its address and thumbprint (``targets add``)."""
    home = AgentHome(folder) if (folder / "identity").exists() else new_agent_home(folder)
    port = int(str(extra.pop("port", 0))) or free_port()
    host = str(extra.pop("host", "127.0.0.1"))
    listening = ListeningSettings(host=host, port=port, server_thumbprint=server_thumbprint)
    update_config_file(home.config_file, listen=toml_data(listening), name=name)
    target = AddListeningTarget(
        name=name, listening_url=str(extra.pop("listening_url", f"https://127.0.0.1:{port}")),
        thumbprint=load_identity(home.identity_folder).thumbprint,
        environments=extra.pop("environments", ["Test"]), roles=extra.pop("roles", ["web"]),
    )  # fmt: skip
    async with AdminClient(admin_url, api_key) as client:
        await client.add_listening_target(target)
    return home


async def agent_in_mode(
    mode: str, server: Server, api_key: str, folder: Path, name: str, **extra: object
) -> AgentHome:
    """An agent set up to poll the server, or to be connected to by it (``mode``)."""
    add = add_listening_agent if mode == "listening" else register_agent
    return await add(server, api_key, folder, name, **extra)


@pytest.fixture
def mode() -> str:
    """How agents reach the server; test modules parametrise it to run in both modes."""
    return "polling"


@pytest.fixture
async def start_agent(
    server: Server, api_key: str, tmp_path: Path, mode: str
) -> AsyncIterator[AgentFactory]:
    agents: list[RunningAgent] = []

    async def start(name: str = "web1", **settings: object) -> RunningAgent:
        home = await agent_in_mode(mode, server, api_key, tmp_path / name, name)
        running = RunningAgent(home, **settings)
        agents.append(running)
        return running

    yield start
    for running in agents:
        if not running.task.done():
            await running.stop(levels=3)


def script_task(target: str, body: str, **extra: object) -> SubmitTask:
    syntax = extra.pop("syntax", "bash")
    variables = extra.pop("variables", [])
    arguments = extra.pop("arguments", [])
    spec = ScriptSpec(syntax=syntax, body=body, arguments=arguments)  # type: ignore[arg-type]
    return SubmitTask(target=target, script=spec, variables=variables, **extra)  # type: ignore[arg-type]


async def run_and_follow(admin: AdminClient, task: SubmitTask) -> tuple[TaskView, list[Event]]:
    submitted = await admin.submit(task)
    events: list[Event] = []
    final = await admin.follow(submitted.id, events.append)
    return final, events


async def wait_for_line(admin: AdminClient, task_id: str, text: str) -> list[Event]:
    """Follows a task (event-driven long poll) until a line containing ``text`` arrives."""
    seen: list[Event] = []
    after = 0
    while True:
        batch = await admin.events(task_id, after, 10)
        seen.extend(batch.events)
        if any(text in e.text for e in batch.events):
            return seen
        if batch.task.state.is_final:
            raise AssertionError(f"task ended {page.task.state} before printing {text!r}: {seen}")
        after = seen[-1].seq if seen else after


def secret(name: str, value: str) -> Variable:
    return Variable(name=name, value=value, sensitive=True)


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> Iterator[None]:
    """A transport or socket a test left unclosed warns when it is collected: collecting after
    each test makes that warning fail the test that leaked it, not whichever runs next. What
    survives is frozen (left out of later collections): each collection then looks only at
    one test's objects, not at the whole session's (70 s a run otherwise)."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def quiet_aiohttp_access_log() -> None:
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# The machine's PostgreSQL (trust auth); each test gets a schema of its own, dropped after it.
POSTGRESQL = os.environ.get("TENTACLE_POLL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A store_url naming a new, empty schema of the test database."""
    async with postgresql_schema() as url:
        yield url


@contextlib.asynccontextmanager
async def postgresql_schema() -> AsyncIterator[str]:
    import secrets

    import asyncpg

    schema = f"t_{secrets.token_hex(6)}"
    try:
        admin = await asyncpg.connect(POSTGRESQL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {POSTGRESQL} is needed by this test: {exc}")
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{POSTGRESQL}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
