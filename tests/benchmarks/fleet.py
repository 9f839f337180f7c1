"""Setting up a fleet for the benchmarks: certificates (cached), registrations written straight
into the server's store, load generators as real processes, /proc readings."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tentacle_poll.server.identity import ServerHome
from tentacle_poll.store import NewAgent
from tentacle_poll.tls import thumbprint_of_pem

from ..processes import Daemon
from .loadgen import make_certificates

CACHE = Path(".bench-cache")


def certificates(count: int) -> Path:
    """``count`` agent certificates in a cache folder, made once and reused by later runs."""
    folder = CACHE / "certs"
    make_certificates(folder, 0, count)
    return folder


async def register_fleet(server_home: Path, certs: Path, count: int, prefix: str = "sim") -> None:
    store = await ServerHome(server_home).open_store()
    try:
        for index in range(count):
            pem = (certs / f"cert-{index}.pem").read_text()
            agent = NewAgent(
                f"{prefix}-{index}", thumbprint_of_pem(pem.encode()), pem, ["Bench"], ["sim"]
            )
            await store.save_agent(agent, replace=True, now=time.time())
    finally:
        await store.close()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident memory now, or at its peak with ``field="VmHWM"``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_name(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_spent_since(before: dict[str, float], pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds each named process spent since ``before`` (from ``cpu_by_name``)."""
    return {name: seconds - before[name] for name, seconds in cpu_by_name(pids).items()}


def context_switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


async def start_loadgen(
    url: str, certs: Path, first: int, count: int, seconds: float, report: Path, ramp: float
) -> Daemon:
    generator = await Daemon.run(
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
