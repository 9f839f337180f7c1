"""`make bench` / `make bench-quick`: every figure beside its in-run reference, as a table.

python -m tests.benchmarks.run [--quick] [--markdown FILE] [--only GROUP ...]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tentacle_poll.logs import setup_logging

from ..processes import Daemon
from .agent_memory import agent_memory
from .cluster import cluster_figures
from .figures import (
    Bench,
    Row,
    agent_footprint,
    dispatch_latency,
    idle_and_storm,
    latency_rows,
    local_spawn_latency,
    output_streaming,
    package_transfer,
    throughput,
)
from .listening import listening_latency_rows
from .portal import live_output_rows

HEADERS = ["figure", "value", "reference (same run)", "ratio", "target", "verdict"]


GROUPS = [
    "latency", "throughput", "streaming", "footprint", "package", "portal", "fleet", "cluster",
]  # fmt: skip


async def run_all(quick: bool, groups: list[str]) -> list[Row]:
    sizes = {
        "latency_runs": 30 if quick else 200,
        "fleet": 1000 if quick else 10000,
        "storm_wait": 20.0 if quick else 125.0,
        "agents": 10 if quick else 50,
        "tasks": 60 if quick else 500,
        "stream_mb": 5 if quick else 100,
        "idle_window": 8.0 if quick else 20.0,
        "package_mb": 32 if quick else 256,
        "tiny_tasks": 1000 if quick else 10000,
    }
    folder = Path(tempfile.mkdtemp(prefix="tentacle-bench-"))
    try:
        return await _run_groups(folder, sizes, groups)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # a full run leaves about 400 MB of output


async def _run_groups(folder: Path, sizes: dict[str, Any], groups: list[str]) -> list[Row]:
    rows: list[Row] = []
    local = await local_spawn_latency(folder, sizes["latency_runs"])
    bench = Bench(folder / "main")
    await bench.start()
    try:
        if "latency" in groups:
            await bench.agent_home("lat")
            agent = await Daemon.start("--home", str(folder / "main" / "lat"))
            await agent.wait_for("polling https://")
            latencies = await dispatch_latency(bench, "lat", sizes["latency_runs"])
            rows += latency_rows("1 idle agent", latencies, local)
            await agent.stop()
            rows += await listening_latency_rows(bench, sizes["latency_runs"], latencies, local)
        if "throughput" in groups:
            rows += await throughput(bench, sizes["agents"], sizes["tasks"])
        if "streaming" in groups:
            rows += await output_streaming(bench, sizes["stream_mb"], runs=3)
        if "footprint" in groups:
            rows += await agent_footprint(bench, sizes["idle_window"])
            rows += await agent_memory(bench, sizes["stream_mb"], sizes["tiny_tasks"])
        if "package" in groups:
            rows += await package_transfer(bench, sizes["package_mb"])
        if "portal" in groups:
            rows += await live_output_rows(bench)
    finally:
        await bench.stop()
    if "cluster" in groups:
        rows += await cluster_figures(folder / "cluster", sizes["fleet"], sizes["latency_runs"])
    if "fleet" in groups:
        fleet = Bench(folder / "fleet")
        try:
            rows += await idle_and_storm(
                fleet, sizes["fleet"], sizes["storm_wait"], local, sizes["latency_runs"]
            )
        finally:
            await fleet.stop()
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 2 minutes")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--only", choices=GROUPS, action="append", help="run only this group (repeatable)"
    )
    args = parser.parse_args()
    setup_logging("WARNING")
    started = time.monotonic()
    rows = asyncio.run(run_all(args.quick, args.only or GROUPS))
    output = table(rows)
    elapsed = time.monotonic() - started
    stamp = f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}, {elapsed:.0f} s"
    print(f"\n{output}\n\n({'quick' if args.quick else 'full'} run, {stamp})")
    if args.markdown:
        args.markdown.write_text(output + "\n")


if __name__ == "__main__":
    main()
