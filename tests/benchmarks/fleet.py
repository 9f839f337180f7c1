"""Setting up a fleet for the benchmarks: certificates (cached), registrations written straight
into the server's store, the server and load generators as real processes, /proc readings."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

from tentacle_poll.server.identity import ServerHome
from tentacle_poll.store import NewAgent
from tentacle_poll.tls import generate_identity, thumbprint_of_pem
from tentacle_poll.tls.files import _write_private

CACHE = Path(".bench-cache")
CLI = [sys.executable, "-m", "tentacle_poll"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def certificates(count: int) -> Path:
    """``count`` agent certificates in a cache folder, made once and reused by later runs."""
    folder = CACHE / "certs"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        if not (folder / f"cert-{index}.pem").exists():
            identity = generate_identity(f"sim-{index}")
            _write_private(folder / f"key-{index}.pem", identity.key_pem)
            (folder / f"cert-{index}.pem").write_bytes(identity.cert_pem)
    return folder


async def register_fleet(server_home: Path, certs: Path, count: int, prefix: str = "sim") -> None:
    store = ServerHome(server_home).open_store()
    try:
        for index in range(count):
            pem = (certs / f"cert-{index}.pem").read_text()
            agent = NewAgent(
                f"{prefix}-{index}", thumbprint_of_pem(pem.encode()), pem, ["Bench"], ["sim"]
            )
            await store.save_agent(agent, replace=True, now=time.time())
    finally:
        await store.close()


class Process:
    """A child process whose output is collected, with /proc readings of its resources."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Process:
        process = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        return cls(process)

    async def wait_for(self, text: str, timeout: float = 120.0) -> None:
        async def scan() -> None:
            assert self.process.stdout is not None
            async for raw in self.process.stdout:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if text in line:
                    return
            raise RuntimeError(f"exited before {text!r}: {self.lines[-5:]}")

        await asyncio.wait_for(scan(), timeout)
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    async def stop(self, kill: bool = False) -> int:
        if self.process.returncode is None:
            self.process.kill() if kill else self.process.terminate()
        return await self.process.wait()

    def rss_bytes(self) -> int:
        return rss_bytes(self.process.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


async def start_server(home: Path, comms: int, admin: int, **settings: str) -> Process:
    env = {f"TENTACLE_POLL_{k.upper()}": v for k, v in settings.items()}
    server = await Process.start(
        *CLI,
        "server",
        "run",
        "--server-home",
        str(home),
        "--comms-host",
        "127.0.0.1",
        "--comms-port",
        str(comms),
        "--admin-port",
        str(admin),
        env=env,
    )
    await server.wait_for("listening")
    return server


async def start_loadgen(
    url: str, certs: Path, first: int, count: int, seconds: float, report: Path, ramp: float
) -> Process:
    generator = await Process.start(
        sys.executable,
        "-m",
        "tests.benchmarks.loadgen",
        "--server",
        url,
        "--certs",
        str(certs),
        "--first",
        str(first),
        "--count",
        str(count),
        "--seconds",
        str(seconds),
        "--report",
        str(report),
        "--ramp",
        str(ramp),
    )
    return generator
