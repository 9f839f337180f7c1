"""The server's Prometheus metrics (``GET /metrics`` on the admin listener).

Events are counted where they happen (dispatch latency, task durations, output bytes, store
latency); levels (connected agents, held polls, tasks by state, the oldest queued task, disk
free, refusals by kind) are read when Prometheus scrapes, so nothing runs between scrapes.
Labels are bounded sets: task states, refusal kinds, store operations; never ids or names.
Each server has a registry of its own (tests run several servers in one process).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tentacle_poll.protocol.models import TaskState

if TYPE_CHECKING:
    from tentacle_poll.server.state import ServerState

PREFIX = "tentacle_poll"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


@dataclass
class StoreLevels:
    """What a scrape reads from the store, read just before the text is made."""

    task_counts: dict[str, int] = field(default_factory=dict)
    oldest_queued_at: float | None = None


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.levels = StoreLevels()
        self.dispatch_latency = Histogram(
            f"{PREFIX}_dispatch_latency_seconds",
            "From a task's queueing to its delivery in a poll answer",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.task_duration = Histogram(
            f"{PREFIX}_task_duration_seconds",
            "From a task's start on its agent to its result, by final state",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.output_bytes = Counter(
            f"{PREFIX}_output_bytes", "Task output text stored", registry=self.registry
        )
        self.store_latency = Histogram(
            f"{PREFIX}_store_operation_seconds",
            "Time taken by the store on the agents' hot paths",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )

    @contextlib.contextmanager
    def store_timer(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.store_latency.labels(operation).observe(time.perf_counter() - started)

    def watch(self, state: ServerState) -> None:
        """Levels are read from ``state`` at each scrape."""
        self.registry.register(_Levels(state, self.levels))

    async def exposition(self, state: ServerState) -> bytes:
        with self.store_timer("scrape"):
            self.levels.task_counts = await state.store.task_counts()
            self.levels.oldest_queued_at = await state.store.oldest_queued_at()
        return generate_latest(self.registry)


class _Levels(Collector):
    def __init__(self, state: ServerState, levels: StoreLevels) -> None:
        self._state = state
        self._levels = levels

    def describe(self) -> Iterable[Metric]:
        return []  # levels are made at each scrape; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        yield from self._connections()
        yield from self._tasks()
        yield self._refusals()
        with contextlib.suppress(OSError):  # a home gone: no figure, rather than no scrape
            free = shutil.disk_usage(self._state.home.folder).free
            yield GaugeMetricFamily(
                f"{PREFIX}_disk_free_bytes", "Free space on the server home's disk", value=free
            )

    def _connections(self) -> Iterator[Metric]:
        dispatcher = self._state.dispatcher
        yield GaugeMetricFamily(
            f"{PREFIX}_connected_agents",
            "Agents polling this node now (or between two polls)",
            value=dispatcher.connected_count(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_held_polls",
            "Polls held open, waiting for work",
            value=dispatcher.held_count(),
        )
        listening = self._state.listening
        targets, unreachable = listening.counts() if listening else (0, 0)
        yield GaugeMetricFamily(
            f"{PREFIX}_listening_targets", "Listening targets this node connects to", value=targets
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_listening_targets_unreachable",
            "Listening targets whose last connection attempt from this node failed",
            value=unreachable,
        )

    def _tasks(self) -> Iterator[Metric]:
        counts = GaugeMetricFamily(
            f"{PREFIX}_tasks", "Tasks in the store by state", labels=["state"]
        )
        for state in TaskState:
            counts.add_metric([state.value], self._levels.task_counts.get(state.value, 0))
        yield counts
        oldest = self._levels.oldest_queued_at
        yield GaugeMetricFamily(
            f"{PREFIX}_queued_tasks", "Tasks waiting for their agents",
            value=self._levels.task_counts.get(TaskState.QUEUED.value, 0),
        )  # fmt: skip
        yield GaugeMetricFamily(
            f"{PREFIX}_oldest_queued_task_age_seconds",
            "Age of the oldest queued task (0 when none waits)",
            value=0.0 if oldest is None else max(0.0, time.time() - oldest),
        )

    def _refusals(self) -> Metric:
        refusals = CounterMetricFamily(
            f"{PREFIX}_refusals",
            "Refused handshakes, registrations and requests, by kind",
            labels=["kind"],
        )
        for kind, count in sorted(self._state.refusals.counts.items()):
            refusals.add_metric([kind], count)
        return refusals
