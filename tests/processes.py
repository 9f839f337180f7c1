"""Real processes for fault tests: the CLI's server and agent, started, awaited, signalled."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "tentacle_poll"]


class Daemon:
    """A CLI process in the background whose output can be awaited line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Daemon:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        return cls(process)

    async def wait_for(self, text: str) -> str:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode().rstrip()
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"exited before printing {text!r}: {self.lines}")

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signum)
        assert self.process.stdout is not None
        rest = (await self.process.stdout.read()).decode().splitlines()
        self.lines.extend(line.rstrip() for line in rest)
        return await self.process.wait()

    async def kill(self) -> None:
        """kill -9: no handler runs, nothing is flushed."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


async def start_server_process(
    home: Path, comms_port: int, admin_port: int, **settings: str
) -> Daemon:
    env = {f"TENTACLE_POLL_{k.upper()}": v for k, v in settings.items()}
    server = await Daemon.start(
        "server",
        "run",
        "--server-home",
        str(home),
        "--comms-host",
        "127.0.0.1",
        "--comms-port",
        str(comms_port),
        "--admin-port",
        str(admin_port),
        env=env,
    )
    await server.wait_for("listening")
    return server


async def start_agent_process(home: Path, **settings: str) -> Daemon:
    env = {f"TENTACLE_POLL_{k.upper()}": v for k, v in settings.items()}
    agent = await Daemon.start("--home", str(home), env=env)
    await agent.wait_for("polling")
    return agent
