"""The benchmark figures. Each returns rows: (figure, value, reference, ratio, target, met)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tentacle_poll.agent.connections.registration import Registration, register
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.agent.kinds.packages import PackageCache
from tentacle_poll.config import update_config_file
from tentacle_poll.protocol.models import (
    DeploySpec,
    PollRequest,
    PollResponse,
    ScriptSpec,
    ScriptSyntax,
    SubmitTask,
)
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.tls import generate_identity, save_identity

from ..conftest import free_port
from ..processes import Daemon, start_server_process
from .fleet import (
    certificates,
    context_switches,
    cpu_by_name,
    cpu_seconds,
    cpu_spent_since,
    register_fleet,
    rss_bytes,
    start_loadgen,
)

MB = 1024 * 1024


@dataclass
class Row:
    figure: str
    value: str
    reference: str
    ratio: str
    target: str
    met: bool | None  # None: a figure without a target (reported, not judged)

    def cells(self) -> list[str]:
        verdict = "figure only" if self.met is None else ("met" if self.met else "NOT MET")
        return [self.figure, self.value, self.reference, self.ratio, self.target, verdict]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Bench:
    """One server home with an API key, the server and agents as real processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server_home = folder / "server"
        self.comms, self.admin_port = free_port(), free_port()
        self.server: Daemon | None = None
        self.key = ""

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def start(self, **settings: str) -> None:
        store = await ServerHome(self.server_home).open_store()
        self.key = await store.create_api_key("bench")
        await store.close()
        self.server = await start_server_process(
            self.server_home, self.comms, self.admin_port, **settings
        )

    async def agent_home(
        self, name: str, concurrency: int = 4, environment: str = "Bench"
    ) -> AgentHome:
        home = AgentHome(self.folder / name)
        save_identity(home.identity_folder, generate_identity(name))
        _, thumbprint = ServerHome(self.server_home).ensure_identity()
        details = Registration(
            server_url=f"https://127.0.0.1:{self.comms}",
            name=name,
            environments=[environment],
            roles=["bench"],
            server_thumbprint=thumbprint,
            api_key=self.key,
        )
        await register(home, details)
        update_config_file(home.config_file, concurrency=concurrency)
        return home

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


def script_task(target: str, body: str, syntax: ScriptSyntax = "bash") -> SubmitTask:
    return SubmitTask(target=target, script=ScriptSpec(syntax=syntax, body=body))


# --- dispatch latency ----------------------------------------------------------------------


async def local_spawn_latency(folder: Path, runs: int) -> list[float]:
    """Reference: spawn the same script locally, time to its first instruction."""
    samples = []
    for i in range(runs):
        stamp = folder / f"local-{i}"
        script = folder / "local.sh"
        script.write_text(f'printf "%s" "$EPOCHREALTIME" > {stamp}\n')
        started = time.time()
        process = await asyncio.create_subprocess_exec("bash", str(script))
        await process.wait()
        samples.append(float(stamp.read_text()) - started)
    return samples


async def dispatch_latency(
    bench: Bench, target: str, runs: int, admin_url: str | None = None
) -> list[float]:
    """Seconds from submitting a task (through ``admin_url``, the bench's server by default)
    to the first instruction of its script on the agent."""
    samples = []
    async with AdminClient(admin_url or bench.admin_url, bench.key) as admin:
        for i in range(runs):
            stamp = bench.folder / f"dispatch-{target}-{i}"
            task = script_task(target, f'printf "%s" "$EPOCHREALTIME" > {stamp}')
            started = time.time()
            submitted = await admin.submit(task)
            await admin.follow(submitted.id, lambda _: None)
            samples.append(float(stamp.read_text()) - started)
    return samples


def latency_rows(label: str, ours: list[float], local: list[float]) -> list[Row]:
    p50, p99, ref = percentile(ours, 50), percentile(ours, 99), percentile(local, 50)
    return [
        Row(
            f"dispatch latency p50 ({label})",
            f"{p50 * 1000:.1f} ms",
            f"local spawn {ref * 1000:.1f} ms",
            f"{p50 / ref:.1f}x",
            "p50 <= 10 ms",
            p50 <= 0.010,
        ),
        Row(
            f"dispatch latency p99 ({label})",
            f"{p99 * 1000:.1f} ms",
            f"local spawn p99 {percentile(local, 99) * 1000:.1f} ms",
            f"{p99 / percentile(local, 99):.1f}x",
            "p99 <= 50 ms",
            p99 <= 0.050,
        ),
    ]


# --- idle agents, reconnect storm ------------------------------------------------------------


async def run_fleet(bench: Bench, count: int, seconds: float) -> list[Daemon]:
    certs = certificates(count)
    per_process = 2500
    generators = []
    for index, first in enumerate(range(0, count, per_process)):
        report = bench.folder / f"loadgen-{index}.jsonl"
        generators.append(
            await start_loadgen(
                f"https://127.0.0.1:{bench.comms}",
                certs,
                first,
                min(per_process, count - first),
                seconds,
                report,
                ramp=max(2.0, count / 700),
            )
        )
    for generator in generators:
        await generator.wait_for("ready", timeout=300)
    return generators


def _back_after(record: dict, restarted: float) -> float | None:  # type: ignore[type-arg]
    """Seconds from the restart to the first poll held by the new server (sent after the
    restart and not failed afterwards)."""
    failures = record["failed"]
    for sent in record["sent"]:
        if sent > restarted and not any(f > sent for f in failures):
            return sent - restarted
    return None


def fleet_reports(bench: Bench) -> list[dict]:  # type: ignore[type-arg]
    records = []
    for report in sorted(bench.folder.glob("loadgen-*.jsonl")):
        records += [json.loads(line) for line in report.read_text().splitlines()]
    return records


async def plain_tls_reference(bench: Bench, count: int, settle: float) -> float:
    """Bytes of RSS per idle connection for a plain asyncio TLS server (default buffers)."""
    server = await Daemon.run(sys.executable, "-m", "tests.benchmarks.plain_tls", str(bench.comms))
    await server.wait_for(" listening: comms ")
    base = rss_bytes(server.process.pid)
    generators = await run_fleet(bench, count, seconds=settle + 60)
    await asyncio.sleep(settle)
    per_connection = (rss_bytes(server.process.pid) - base) / count
    for generator in generators:
        await generator.kill()
    await server.kill()
    for report in bench.folder.glob("loadgen-*.jsonl"):
        report.unlink()
    return per_connection


async def idle_and_storm(
    bench: Bench, count: int, storm_wait: float, local: list[float], latency_runs: int
) -> list[Row]:
    """N simulated agents hold polls: server RSS and CPU, dispatch latency to one real agent
    among them; then kill -9 of the server, restart, and the time until they poll again."""
    reference = await plain_tls_reference(bench, count, settle=count / 700 + 5)
    await register_fleet(bench.server_home, certificates(count), count)
    await bench.start()
    assert bench.server is not None
    base = rss_bytes(bench.server.process.pid)
    generators = await run_fleet(bench, count, seconds=3600)
    await asyncio.sleep(5)  # the generators started every agent during their ramp
    rss = rss_bytes(bench.server.process.pid)
    cpu_start, wall_start = cpu_seconds(bench.server.process.pid), time.monotonic()
    await asyncio.sleep(26)  # one whole hold period: every agent's poll is answered once
    cpu = (cpu_seconds(bench.server.process.pid) - cpu_start) / (time.monotonic() - wall_start)
    await bench.agent_home("lat")
    agent = await Daemon.start("--home", str(bench.folder / "lat"))
    await agent.wait_for("polling https://")
    latency = await dispatch_latency(bench, "lat", latency_runs)
    await agent.stop()
    from .listings import listing_rows  # they import this module
    from .portal import fleet_page_rows

    listings = await listing_rows(bench, count) + await fleet_page_rows(bench, count)
    await bench.server.kill()
    restarted = time.time()
    bench.server = await start_server_process(bench.server_home, bench.comms, bench.admin_port)
    listening_after = time.time() - restarted
    await asyncio.sleep(storm_wait)
    storm_rss = rss_bytes(bench.server.process.pid)
    for generator in generators:
        await generator.stop()
    reports = fleet_reports(bench)
    delays = sorted(d for d in (_back_after(r, restarted) for r in reports) if d is not None)
    failed = sum(1 for r in reports for t in r["failed"] if t > restarted)
    refused = sum(1 for r in reports for t in r["refused"] if t > restarted)
    connected_before = sum(1 for r in reports if any(t < restarted for t in r["sent"]))
    per_connection = (rss - base) / count
    at_10k = base + per_connection * 10000  # measured, when count is 10,000
    within_60 = sum(1 for d in delays if d <= 60) / count
    all_back = len(delays) == count and delays[-1] <= 120 if delays else False
    scale = "" if count == 10000 else f" (x{10000 / count:g}: projected to 10,000)"
    return [
        *latency_rows(f"{count} idle agents connected", latency, local),
        *listings,
        Row(
            f"idle server RSS, {count} mTLS long polls",
            f"{rss / MB:.0f} MiB ({per_connection / 1024:.0f} KiB/conn)",
            f"plain asyncio TLS {reference / 1024:.0f} KiB/conn",
            f"{per_connection / reference:.2f}x",
            f"<= 1 GiB at 10,000{scale}: {at_10k / MB:.0f} MiB",
            at_10k <= 1024 * MB,
        ),
        Row(
            f"idle server CPU, {count} polls, hold 25 s",
            f"{cpu * 100:.1f} % of a core",
            f"{connected_before}/{count} agents polling",
            "",
            f"<= 20 % at 10,000{scale}",
            cpu * 10000 / count <= 0.20,
        ),
        Row(
            f"reconnect storm, {count} agents",
            f"{within_60 * 100:.1f} % back in 60 s, last at "
            f"{delays[-1] if delays else float('nan'):.1f} s (server listening again after "
            f"{listening_after:.1f} s; {failed} failed polls, {refused} of them refused)",
            f"{len(delays)}/{count} back",
            "",
            "99 % in 60 s, all in 120 s",
            within_60 >= 0.99 and (all_back or storm_wait < 120),
        ),
        Row(
            "server RSS after the storm",
            f"{storm_rss / MB:.0f} MiB",
            f"before {rss / MB:.0f} MiB",
            f"{storm_rss / rss:.2f}x",
            "within its idle bound",
            storm_rss <= max(rss * 1.1, at_10k),
        ),
    ]


# --- throughput, streaming, footprint --------------------------------------------------------


async def local_spawn_rate(folder: Path, tasks: int, concurrency: int) -> float:
    script = folder / "tiny.sh"
    script.write_text("echo tiny\n")
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            process = await asyncio.create_subprocess_exec(
                "bash", str(script), stdout=asyncio.subprocess.PIPE
            )
            await process.communicate()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return tasks / (time.monotonic() - started)


async def throughput(bench: Bench, agents: int, tasks: int) -> list[Row]:
    homes = [await bench.agent_home(f"tp-{i}") for i in range(agents)]
    runner = await Daemon.run(
        sys.executable, "-m", "tests.benchmarks.agents", *map(str, (h.folder for h in homes))
    )
    await runner.wait_for("ready")
    assert bench.server is not None
    pids = {"server": bench.server.process.pid, "agents": runner.process.pid}
    async with AdminClient(bench.admin_url, bench.key) as admin:
        cpu_before = cpu_by_name(pids)
        started = time.monotonic()
        submitted = await asyncio.gather(
            *(admin.submit(script_task(f"tp-{i % agents}", "echo tiny")) for i in range(tasks))
        )
        finals = await asyncio.gather(*(admin.follow(t.id, lambda _: None) for t in submitted))
        rate = tasks / (time.monotonic() - started)
        per_task = {n: s / tasks for n, s in cpu_spent_since(cpu_before, pids).items()}
    await runner.stop()
    succeeded = sum(1 for f in finals if f.state == "succeeded")
    local = await local_spawn_rate(bench.folder, tasks, concurrency=agents * 4)
    spent = ", ".join(f"{name} CPU {seconds * 1000:.1f} ms" for name, seconds in per_task.items())
    return [
        Row(
            f"task throughput, {agents} agents",
            f"{rate:.0f} tasks/s ({succeeded}/{tasks} ok; per task {spent})",
            f"local spawn {local:.0f}/s",
            f"{rate / local:.2f}",
            "none: the ratio to local spawning on shared cores is retired (benchmark decision)",
            None,
        )
    ]


async def raw_tls_copy_rate(total: int) -> float:
    """Reference: bytes per second through one TLS connection over loopback."""
    folder = Path(tempfile.mkdtemp())
    save_identity(folder, generate_identity("copy"))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    received = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        while chunk := await reader.read(1 << 20):
            count += len(chunk)
        received.set_result(count)

    server = await asyncio.start_server(sink, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
    block = (b"x" * 99 + b"\n") * 10000
    started = time.monotonic()
    for _ in range(total // len(block)):
        writer.write(block)
        await writer.drain()
    writer.close()
    await received
    server.close()
    return total / (time.monotonic() - started)


async def output_streaming(bench: Bench, megabytes: int, runs: int) -> list[Row]:
    """Median of ``runs`` tasks, beside the median of as many raw TLS copies made in between."""
    home = await bench.agent_home("streamer")
    agent = await Daemon.start("--home", str(home.folder))
    await agent.wait_for("polling https://")
    lines = megabytes * MB // 100
    results, references = [], []
    for _ in range(runs):  # alternately, so that both sides see the machine in the same mood
        results.append(await _stream_once(bench, agent, lines))
        references.append(await raw_tls_copy_rate(lines * 100))
    await agent.stop()
    rate, stored, spent = sorted(results)[len(results) // 2]
    reference = statistics.median(references)
    return [
        Row(
            f"output streaming, {megabytes} MB of lines, median of {runs}",
            f"{rate / MB:.1f} MB/s ({stored}/{lines} lines; {spent})",
            f"raw TLS copy {reference / MB:.0f} MB/s",
            f"{rate / reference:.3f}",
            ">= 0.25",
            rate / reference >= 0.25 and all(r[1] == lines for r in results),
        )
    ]


async def _stream_once(bench: Bench, agent: Daemon, lines: int) -> tuple[float, int, str]:
    """One task printing ``lines`` lines of 100 bytes: its rate, the lines the server stored,
    and the CPU the server and the agent spent on it."""
    assert bench.server is not None
    pids = {"server": bench.server.process.pid, "agent": agent.process.pid}
    body = f"yes {'x' * 98} | head -n {lines}"
    async with AdminClient(bench.admin_url, bench.key) as admin:
        cpu_before = cpu_by_name(pids)
        started = time.monotonic()
        task = await admin.submit(script_task("streamer", body))
        final = await _wait_final(admin, task.id)
        elapsed = time.monotonic() - started
    cpu = cpu_spent_since(cpu_before, pids)
    spent = ", ".join(f"{name} CPU {seconds:.2f} s" for name, seconds in cpu.items())
    return lines * 100 / elapsed, final.last_seq, spent


async def _wait_final(admin: AdminClient, task_id: str):  # type: ignore[no-untyped-def]
    while True:
        page = await admin.events(task_id, 2**62, 30)
        if page.task.state.is_final:
            return page.task


# What the agent's stack occupies before any agent code: the libraries it is built on, imported,
# and one pydantic model (the first one builds pydantic's schema machinery).
STACK_ALONE = """
import asyncio, ssl, aiohttp, loguru, tenacity, pydantic, pydantic_settings
class Model(pydantic.BaseModel):
    field: int
Model(field=1)
"""


async def _idle_rss(code: str) -> int:
    """RSS of a python that ran ``code`` and now sleeps."""
    process = await Daemon.run(
        sys.executable, "-c", f"{code}\nimport time; print('up', flush=True); time.sleep(30)"
    )
    await process.wait_for("up")
    rss = rss_bytes(process.process.pid)
    await process.kill()
    return rss


AGENT_IDLE_RSS_TARGET = 55 * MB  # benchmark decision: the chosen stack alone is ~46 MiB


async def agent_footprint(bench: Bench, idle_window: float) -> list[Row]:
    home = await bench.agent_home("footprint")
    started = time.monotonic()
    agent = await Daemon.start("--home", str(home.folder))
    async with AdminClient(bench.admin_url, bench.key) as admin:
        task = await admin.submit(script_task("footprint", "true"))
        await admin.follow(task.id, lambda _: None)
        to_first_task = time.monotonic() - started
    await asyncio.sleep(2)
    pid = agent.process.pid
    switches, cpu = context_switches(pid), cpu_seconds(pid)
    await asyncio.sleep(idle_window)  # inside one 25 s hold: an idle agent does nothing at all
    wakeups = (context_switches(pid) - switches) / idle_window
    idle_cpu = (cpu_seconds(pid) - cpu) / idle_window
    rss, peak = rss_bytes(pid), rss_bytes(pid, "VmHWM")
    await agent.stop()
    bare_rss = await _idle_rss("pass")
    stack_rss = await _idle_rss(STACK_ALONE)
    return [
        Row(
            "agent RSS, idle in its poll",
            f"{rss / MB:.1f} MiB (peak {peak / MB:.1f} MiB)",
            f"bare python {bare_rss / MB:.1f} MiB; the stack alone {stack_rss / MB:.1f} MiB",
            f"{rss / stack_rss:.2f}x the stack",
            "<= 55 MiB idle (the stack alone is about 46)",
            rss <= AGENT_IDLE_RSS_TARGET,
        ),
        Row(
            "agent start to first task running",
            f"{to_first_task * 1000:.0f} ms",
            "",
            "",
            "first poll <= 1 s",
            to_first_task <= 1.0,
        ),
        Row(
            "agent wake-ups while idle",
            f"{wakeups:.2f}/s, CPU {idle_cpu * 100:.2f} %",
            "",
            "",
            "no busy wake-ups",
            wakeups < 1.0,
        ),
    ]


async def package_transfer(bench: Bench, megabytes: int) -> list[Row]:
    """The agent's verified, cached download of a package beside curl fetching the same bytes
    from the same server route with the same client certificate."""
    home = await bench.agent_home("downloader")
    archive = bench.folder / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        zipped.writestr("blob.bin", os.urandom(megabytes * MB))
    async with AdminClient(bench.admin_url, bench.key) as admin:
        stored = await admin.upload_package("big", "1", archive, "zip")
    node = home.settings().servers[0]
    ours, theirs = [], []
    for attempt in range(3):
        cache = PackageCache(bench.folder / f"cache-{attempt}")
        client = CommsClient(node.url, node.thumbprints, home.identity_folder)
        await _lease_a_deploy(bench, client, "downloader", "big")
        started = time.monotonic()
        await cache.fetch(client, stored.sha256, stored.size)
        ours.append(time.monotonic() - started)
        await client.close()
        theirs.append(await _curl_seconds(bench, home.identity_folder, stored.sha256))
    rate, reference = stored.size / median_of(ours), stored.size / median_of(theirs)
    return [Row(f"package transfer, {megabytes} MB, hash verified", f"{rate / MB:.0f} MB/s",
                f"curl {reference / MB:.0f} MB/s", f"{rate / reference:.2f}", ">= 0.70",
                rate / reference >= 0.70)]  # fmt: skip


async def _lease_a_deploy(bench: Bench, client: CommsClient, target: str, package: str) -> None:
    """A deploy of the package leased (for lease_seconds) to the target: agents get only the
    bytes a task they hold names, and the transfer figure is about the transfer alone."""
    async with AdminClient(bench.admin_url, bench.key) as admin:
        deploy = DeploySpec(package_id=package, version="1")
        await admin.submit(SubmitTask(target=target, kind="deploy", deploy=deploy))
    await client.post(POLL, PollRequest(free_slots=1, hold_seconds=0), PollResponse)


async def _curl_seconds(bench: Bench, identity: Path, sha256: str) -> float:
    url = f"https://127.0.0.1:{bench.comms}/v1/packages/{sha256}"
    started = time.monotonic()
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-k",
        "--cert",
        str(identity / "cert.pem"),
        "--key",
        str(identity / "key.pem"),
        "-H",
        "X-Tentacle-Protocol: 1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
        stdout=asyncio.subprocess.PIPE,
    )
    status = (await curl.communicate())[0].decode()
    if status != "200":
        raise RuntimeError(f"curl got HTTP {status}")
    return time.monotonic() - started


def median_of(samples: list[float]) -> float:
    return statistics.median(samples)
