"""The agent's own metrics and health, on 127.0.0.1:``metrics_port`` when set (off by default:
the agent listens on nothing unless asked, and its memory stays that of a plain agent).

``/metrics``: running tasks, free slots, spool bytes, and per server node the seconds since
its last answered poll, its failed polls in a row and whether the agent is backing off.
``/healthz``: alive. ``/readyz``: the identity is there, the home takes a write and has room,
the agent is not draining, and some server answered a poll lately.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tentacle_poll.agent.connections.status import ANSWERED_LATELY_SECONDS
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.tls.files import CERT_FILE

if TYPE_CHECKING:
    from tentacle_poll.agent.daemon import Agent

PREFIX = "tentacle_poll_agent"


class MetricsEndpoint:
    """The agent's small HTTP listener; started and stopped with the daemon."""

    def __init__(self, agent: Agent, port: int) -> None:
        self._agent = agent
        self._port = port
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Levels(agent))
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._alive)
        app.router.add_get("/readyz", self._ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigurationError(
                f"cannot serve metrics on 127.0.0.1:{self._port}: {exc.strerror or exc}; choose "
                "another metrics_port in agent.toml (or remove it)"
            ) from exc
        self.port = int(self._runner.addresses[0][1])
        logger.info("metrics and health on http://127.0.0.1:{}/metrics", self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _alive(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _ready(self, request: web.Request) -> web.Response:
        problems = readiness_problems(self._agent)
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})


def readiness_problems(agent: Agent) -> list[str]:
    checks: list[Callable[[Agent], str | None]] = [
        _identity_missing, _home_unwritable, _home_short, _draining, _no_server_answers,
    ]  # fmt: skip
    return [problem for check in checks if (problem := check(agent)) is not None]


def _identity_missing(agent: Agent) -> str | None:
    if (agent.home.identity_folder / CERT_FILE).exists():
        return None
    return f"the agent certificate is missing from {agent.home.identity_folder}"


def _home_unwritable(agent: Agent) -> str | None:
    probe = agent.home.folder / ".ready-probe"
    try:
        _write_and_sync(probe)
    except OSError as exc:
        return f"the agent home {agent.home.folder} does not take a write: {exc.strerror or exc}"
    return None


def _write_and_sync(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"ready\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def _home_short(agent: Agent) -> str | None:
    return agent.home_space.shortage()


def _draining(agent: Agent) -> str | None:
    return "the agent is stopping: it takes no new work" if agent.stop_polling.is_set() else None


def _no_server_answers(agent: Agent) -> str | None:
    if agent.status.answered_lately():
        return None
    return (
        f"no server answered a poll in the last {ANSWERED_LATELY_SECONDS:g} s; "
        "`tentacle-poll diagnose` says why"
    )


class _Levels(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterable[Metric]:
        agent = self._agent
        running = len(agent.slots.running_ids)
        yield _gauge("running_tasks", "Tasks running now", running)
        yield _gauge("free_slots", "Slots free for new tasks", agent.slots.capacity - running)
        yield _gauge("spool_bytes", "Output and results not yet acknowledged", agent.spool_bytes())
        yield _gauge("draining", "1 while stopping", int(agent.stop_polling.is_set()))
        yield from self._nodes()

    def _nodes(self) -> Iterator[Metric]:
        now = time.time()
        since = GaugeMetricFamily(
            f"{PREFIX}_seconds_since_answered_poll",
            "Seconds since the node last answered a poll (absent: never yet)",
            labels=["node"],
        )
        failures = GaugeMetricFamily(
            f"{PREFIX}_poll_failures_in_a_row",
            "Failed polls since the last answer",
            labels=["node"],
        )
        backing_off = GaugeMetricFamily(
            f"{PREFIX}_backing_off",
            "1 while polls to the node fail and are retried",
            labels=["node"],
        )
        for url, node in sorted(self._agent.status.nodes.items()):
            if node.last_answer is not None:
                since.add_metric([url], now - node.last_answer)
            failures.add_metric([url], node.failures_in_a_row)
            backing_off.add_metric([url], int(node.failures_in_a_row > 0))
        yield from (since, failures, backing_off)


def _gauge(name: str, text: str, value: float) -> Metric:
    return GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value)
