"""`make run`: a server and one registered agent on loopback, a sample task followed live.

Server and agent run as real child processes of their own (each in its own session, so one
Ctrl-C reaches only the demo, which then stops both in order with SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from tentacle_poll.agent.connections.registration import Registration, register
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.cli.server import loopback_server_arguments
from tentacle_poll.config import DEFAULT_ADMIN_PORT, DEFAULT_COMMS_PORT
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.protocol.models import Event, ScriptSpec, SubmitTask, Variable
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.tls import generate_identity, save_identity

AGENT_NAME = "demo-agent"
READY_TIMEOUT = 30.0
SAMPLE_SCRIPT = """\
echo "Hello from $(hostname), task $TENTACLE_TASK_ID"
echo "deploying to the $ENVIRONMENT environment"
for step in fetch verify extract switch; do echo "step: $step"; sleep 0.4; done
echo "the database password is $DB_PASSWORD (masked before it left the agent)"
echo "a warning on stderr" >&2
echo "done"
"""


class Child:
    """A child process whose stderr is echoed with a prefix; ``wait_for`` awaits a line."""

    def __init__(self, label: str, process: asyncio.subprocess.Process) -> None:
        self.label = label
        self.process = process
        self._watch: tuple[str, asyncio.Event] | None = None
        self._echo = asyncio.create_task(self._echo_lines())

    async def wait_for(self, text: str) -> None:
        event = asyncio.Event()
        self._watch = (text, event)
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait(
                [waiter, self._echo], timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if not event.is_set():
            raise ConfigurationError(f"the demo {self.label} did not start; see its lines above")

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await self.process.wait()
        await self._echo
        return code

    async def _echo_lines(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            print(f"  [{self.label}] {line}", flush=True)
            if self._watch and self._watch[0] in line:
                self._watch[1].set()


async def run_demo(folder: Path) -> int:
    """Runs until Ctrl-C (or SIGTERM); then stops agent and server in order."""
    children: list[Child] = []
    stop = _stop_on_signals(children)
    try:
        await _until_stopped(_start_and_show(folder.resolve(), children), stop)
    finally:
        print("\nstopping agent and server...", flush=True)
        codes = [await child.stop() for child in reversed(children)]
    print("stopped.", flush=True)
    return 0 if all(code == 0 for code in codes) else 1


async def _start_and_show(folder: Path, children: list[Child]) -> None:
    server_home, agent_home = ServerHome(folder / "server"), AgentHome(folder / "agent")
    _, thumbprint = server_home.ensure_identity()
    api_key = await _api_key(server_home, folder / "api-key")
    comms_port, admin_port = _port(DEFAULT_COMMS_PORT), _port(DEFAULT_ADMIN_PORT)
    print(f"demo folder: {folder}\nserver thumbprint: {thumbprint}\n", flush=True)
    server = await _spawn(
        "server", *loopback_server_arguments(server_home.folder, comms_port, admin_port)
    )
    children.append(server)
    await server.wait_for("listening")
    await _register(agent_home, comms_port, thumbprint, api_key)
    agent = await _spawn("agent", "--home", str(agent_home.folder))
    children.append(agent)
    await agent.wait_for("polling")
    admin_url = f"http://127.0.0.1:{admin_port}"
    await _run_sample(admin_url, api_key)
    _print_next_steps(admin_url, folder)


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Runs ``work``, then waits for ``stop``; a stop during ``work`` cancels it."""
    running = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([running, stopped], return_when=asyncio.FIRST_COMPLETED)
    if not running.done():
        running.cancel()
        return
    running.result()  # raises what the start-up raised
    await stopped


async def _api_key(server_home: ServerHome, key_file: Path) -> str:
    if key_file.exists():
        return key_file.read_text().strip()
    store = await server_home.open_store()
    try:
        key = await store.create_api_key("demo")
    finally:
        await store.close()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


async def _register(home: AgentHome, port: int, thumbprint: str, api_key: str) -> None:
    if not home.has_identity():
        save_identity(home.identity_folder, generate_identity(AGENT_NAME))
    details = Registration(
        server_url=f"https://127.0.0.1:{port}",
        name=AGENT_NAME,
        environments=["Demo"],
        roles=["web"],
        server_thumbprint=thumbprint,
        api_key=api_key,
        replace=True,
    )
    # A rerun uses new ports: keep only this run's server in the agent's configuration.
    home.config_file.unlink(missing_ok=True)
    await register(home, details)


async def _run_sample(admin_url: str, api_key: str) -> None:
    task = SubmitTask(
        target=AGENT_NAME,
        script=ScriptSpec(syntax="bash", body=SAMPLE_SCRIPT),
        variables=[
            Variable(name="ENVIRONMENT", value="Demo"),
            Variable(name="DB_PASSWORD", value="correct-horse-battery", sensitive=True),
        ],
    )
    async with AdminClient(admin_url, api_key) as admin:
        queued = await admin.submit(task)
        print(
            f"\n=== sample task {queued.id} queued for {AGENT_NAME}; its output, live:", flush=True
        )
        final = await admin.follow(queued.id, _print_line)
    code = "" if final.exit_code is None else f" with exit code {final.exit_code}"
    print(f"=== task {final.id} {final.state}{code}\n", flush=True)


def _print_line(event: Event) -> None:
    print(f"  | {'[stderr] ' if event.stream == 'stderr' else ''}{event.text}", flush=True)


def _print_next_steps(admin_url: str, folder: Path) -> None:
    key_file = folder / "api-key"
    print(
        f"The server and agent keep running. Admin API: {admin_url} (key in {key_file}).\n"
        f"Web portal: {admin_url}/portal (sign in with that key).\n"
        "Submit another task from a second terminal:\n"
        f"  export TENTACLE_POLL_ADMIN_URL={admin_url} TENTACLE_POLL_API_KEY=$(cat {key_file})\n"
        f"  .venv/bin/tentacle-poll task run --target {AGENT_NAME} --script 'uname -a; df -h .'\n"
        "  .venv/bin/tentacle-poll targets\n"
        "Press Ctrl-C to stop both.\n",
        flush=True,
    )


async def _spawn(label: str, *args: str) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tentacle_poll",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches only the demo, which stops children in order
    )
    return Child(label, process)


def _stop_on_signals(children: list[Child]) -> asyncio.Event:
    """The first Ctrl-C stops the demo (the agent drains); each further one is passed on to
    the agent, whose own escalation then cancels running tasks, then exits at once."""
    stop = asyncio.Event()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
            return
        for child in children:
            if child.label == "agent" and child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    return stop


def _port(preferred: int) -> int:
    """The default port when it is free, so the demo matches the docs; any free one if not."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
