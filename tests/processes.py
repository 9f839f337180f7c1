"""Real processes for fault tests: the CLI's server and agent, started, awaited, signalled."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tentacle_poll.cli.server import loopback_server_arguments

CLI = [sys.executable, "-m", "tentacle_poll"]


class Daemon:
    """A process in the background whose output lines are collected as they come (so its pipe
    never fills) and can be awaited: each ``wait_for`` looks at lines after the last match."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._cursor = 0
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Daemon:
        """``tentacle-poll ARGS``."""
        return await cls.run(*CLI, *args, env=env)

    @classmethod
    async def run(cls, *argv: str, env: dict[str, str] | None = None) -> Daemon:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._new_line.set()
        self._new_line.set()

    async def wait_for(self, text: str, timeout: float = 120.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                while self._cursor < len(self.lines):
                    line = self.lines[self._cursor]
                    self._cursor += 1
                    if text in line:
                        return line
                if self._reader.done():
                    raise AssertionError(f"exited before printing {text!r}: {self.lines[-10:]}")
                self._new_line.clear()
                await self._new_line.wait()

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signum)
        code = await self.process.wait()
        await self._reader
        return code

    async def kill(self) -> None:
        """kill -9: no handler runs, nothing is flushed."""
        await self.stop(signal.SIGKILL)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


async def start_server_process(
    home: Path, comms_port: int, admin_port: int, *flags: str, **settings: str
) -> Daemon:
    """``flags`` go on the command line, ``settings`` into the environment."""
    env = {f"TENTACLE_POLL_{k.upper()}": v for k, v in settings.items()}
    arguments = loopback_server_arguments(home, comms_port, admin_port)
    server = await Daemon.start(*arguments, *flags, env=env)
    await server.wait_for(" listening: comms ")
    return server


async def start_agent_process(home: Path, **settings: str) -> Daemon:
    env = {f"TENTACLE_POLL_{k.upper()}": v for k, v in settings.items()}
    agent = await Daemon.start("--home", str(home), env=env)
    await agent.wait_for("polling ")  # https://… or, listening, the server connecting to …
    return agent
