"""The agent daemon's lifecycle: recover → poll until asked to stop → drain → shutdown.

Stopping escalates, one step per signal (``escalate``): first stop taking work, let running
tasks finish up to the drain deadline and deliver what is spooled; second cancel running tasks
and report them cancelled; third give up at once (the spool keeps what was not delivered).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from tentacle_poll.agent.connections.discovery import Discovery
from tentacle_poll.agent.connections.failover import ClusterClient
from tentacle_poll.agent.connections.listening import ListeningClient
from tentacle_poll.agent.connections.nodes import (
    learn_listening_thumbprints,
    learn_server_thumbprints,
)
from tentacle_poll.agent.connections.status import AgentStatus
from tentacle_poll.agent.connections.transport import CommsClient, client_for
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.agent.kinds.packages import PackageCache
from tentacle_poll.agent.running.disk import HomeSpace
from tentacle_poll.agent.running.isolation import IsolationMutexes
from tentacle_poll.agent.running.journal import Journal
from tentacle_poll.agent.running.poll_loop import PollLoop
from tentacle_poll.agent.running.recovery import (
    deliver_unreported,
    end_leftover_cgroups,
    fail_interrupted_tasks,
    repair_releases,
)
from tentacle_poll.agent.running.runner import RunnerContext, TaskRunner
from tentacle_poll.agent.running.slots import Slots
from tentacle_poll.agent.running.spool import Spool
from tentacle_poll.config import AgentSettings, ServerNode
from tentacle_poll.exceptions import AgentUnregistered
from tentacle_poll.workers.cgroups import CgroupRoot, describe
from tentacle_poll.workers.extract import Limits

if TYPE_CHECKING:
    from tentacle_poll.agent.metrics import MetricsEndpoint

MB = 1024 * 1024
SPOOL_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class _Shared:
    """What every server node's poll loop shares: one journal, spool, set of mutexes, cache."""

    journal: Journal
    spool: Spool
    mutexes: IsolationMutexes
    packages: PackageCache


class Agent:
    def __init__(self, home: AgentHome, settings: AgentSettings) -> None:
        self.home = home
        self.settings = settings
        self.stop_polling = asyncio.Event()
        self.cancel_running = asyncio.Event()
        self.give_up = asyncio.Event()
        self.started = asyncio.Event()
        self.slots = Slots(settings.concurrency)
        self._runners: dict[str, TaskRunner] = {}
        self._stop_level = 0
        self.clients: dict[str, CommsClient] = {}  # by server URL, while running
        self._cgroups: CgroupRoot | None = None
        self._polling: dict[str, asyncio.Task[None]] = {}  # by server URL
        self._loop_stops: dict[str, asyncio.Event] = {}
        self._discovery = Discovery(home, self._poll_new_node, self._stop_polling_node)
        self.status = AgentStatus()  # what each node's poll loop last heard
        self.home_space = HomeSpace(home.folder, int(settings.min_free_home_mb * MB))
        self._spool: Spool | None = None
        self.metrics: MetricsEndpoint | None = None  # with metrics_port set, once started
        self.unregistered_by: list[str] = []  # servers that refused its certificate for long

    def spool_bytes(self) -> int:
        return self._spool.used_bytes if self._spool is not None else 0

    def escalate(self) -> int:
        """One step further towards stopping; returns the new level (1, 2, 3...)."""
        self._stop_level += 1
        steps = [self.stop_polling, self.cancel_running, self.give_up]
        for event in steps[: self._stop_level]:
            event.set()
        return self._stop_level

    async def run(self) -> None:
        with self.home.exclusive():
            await self._run_locked()

    async def _run_locked(self) -> None:
        journal = Journal(self.home.journal_file)
        spool = self._spool = Spool(self.home.spool_folder, int(self.settings.spool_max_mb * MB))
        clients = self.clients = {
            node.url: client_for(node, self.settings, self.home.identity_folder)
            for node in self.settings.servers
        }
        endpoint = await self._serve_metrics()
        try:
            await self._listen_for_the_server(clients)
            await self._run(journal, spool, clients)
        finally:
            for client in clients.values():
                await client.shut_down()
            journal.close()
            if endpoint is not None:
                await endpoint.stop()
        logger.info("agent stopped")

    async def _listen_for_the_server(self, clients: dict[str, CommsClient]) -> None:
        """Listening mode: one more client, whose connections the server opens."""
        if self.settings.listen is not None:
            client = ListeningClient(self.settings.listen, self.home.identity_folder)
            clients[client.url] = client  # first: shut down with the others if start fails
            await client.start()

    async def _serve_metrics(self) -> MetricsEndpoint | None:
        if self.settings.metrics_port is None:
            return None
        # Imported only here: an agent without metrics never loads the HTTP server or the
        # Prometheus library (its idle memory is a benchmark target).
        from tentacle_poll.agent.metrics import MetricsEndpoint

        endpoint = self.metrics = MetricsEndpoint(self, self.settings.metrics_port)
        await endpoint.start()
        return endpoint

    def _applications_root(self) -> Path:
        return self.settings.applications_root or self.home.folder / "Applications"

    async def _run(self, journal: Journal, spool: Spool, clients: dict[str, CommsClient]) -> None:
        shutil.rmtree(self.home.work_folder, ignore_errors=True)  # left by an agent that died
        fail_interrupted_tasks(journal, spool)  # ends the orphans' groups, says so in output
        self._cgroups = CgroupRoot.find(self.home.folder)
        await end_leftover_cgroups(self._cgroups)  # then whatever escaped their groups
        repair_releases(self._applications_root())
        backlog = asyncio.create_task(
            deliver_unreported(
                journal, spool, clients, self.give_up, self.settings.backoff_max_seconds
            )
        )
        shared = _Shared(
            journal,
            spool,
            IsolationMutexes(),
            PackageCache(self.home.folder / "packages", int(self.settings.package_cache_mb * MB)),
        )
        self._shared = shared
        for client in clients.values():
            self._start_polling(client)
        self.started.set()
        named = f"agent {self.settings.name}" if self.settings.name else "agent"  # listening only
        logger.info("{} started with {} slots; tasks run in {}", named, self.slots.capacity,
                    describe(self._cgroups))  # fmt: skip
        await self.stop_polling.wait()
        for stop in self._loop_stops.values():
            stop.set()
        await asyncio.gather(*self._polling.values())
        await self._drain(backlog)
        if self._cgroups is not None:
            self._cgroups.release()

    def _start_polling(self, client: CommsClient) -> None:
        """A poll loop for the node, stopped with the others or on its own when dropped."""
        stop = self._loop_stops[client.url] = asyncio.Event()
        loop = self._poll_loop(client, self._shared, stop)
        self._polling[client.url] = asyncio.create_task(self._run_loop(client.url, loop))
        self.slots.loops = len(self._polling)

    async def _run_loop(self, url: str, loop: PollLoop) -> None:
        try:
            await loop.run()
        except AgentUnregistered as exc:
            logger.error("{}", exc)
            self.unregistered_by.append(url)
        except BaseException:
            self.stop_polling.set()  # a loop that fails stops the agent, as it always did
            raise
        finally:
            # Dropped (not stopping): the others share its slots. A node dropped and added
            # again meanwhile has a new loop under its URL: that one stays.
            if not self.stop_polling.is_set() and self._polling.get(url) is asyncio.current_task():
                del self._polling[url], self._loop_stops[url]
                self.slots.loops = max(len(self._polling), 1)
                self._stop_if_unregistered_everywhere()

    def _stop_if_unregistered_everywhere(self) -> None:
        if not self._polling and self.unregistered_by:
            logger.error("no server takes this agent any more: stopping (exit status 78)")
            self.stop_polling.set()

    def _learn_nodes(self, client: CommsClient, announced: list[str]) -> None:
        # A listening agent is reached by the server, it does not dial: nothing to poll.
        listening = isinstance(client, ListeningClient)
        if self.settings.discover_nodes and not self.stop_polling.is_set() and not listening:
            self._discovery.heard(client.url, announced)

    def _poll_new_node(self, node: ServerNode) -> None:
        client = client_for(node, self.settings, self.home.identity_folder)
        self.clients[client.url] = client
        self._start_polling(client)

    def _stop_polling_node(self, url: str) -> None:
        if url in self._loop_stops:
            self._loop_stops[url].set()

    def _cluster_of(self, home: CommsClient) -> list[CommsClient]:
        """The polled nodes that share ``home``'s certificate: its cluster."""
        pins = set(home.thumbprints)
        return [
            client
            for url, client in self.clients.items()
            if url in self._polling and pins & set(client.thumbprints)
        ]

    def _poll_loop(self, client: CommsClient, shared: _Shared, stop: asyncio.Event) -> PollLoop:
        context = RunnerContext(
            client=ClusterClient(client, self._cluster_of),
            journal=shared.journal,
            spool=shared.spool,
            mutexes=shared.mutexes,
            work_folder=self.home.work_folder,
            grace_seconds=self.settings.cancel_grace_seconds,
            max_backoff=self.settings.backoff_max_seconds,
            max_output_bytes=int(self.settings.max_output_mb * MB),
            max_envelope_bytes=self.settings.max_envelope_kb * 1024,
            packages=shared.packages,
            applications_root=self._applications_root(),
            identity_folder=self.home.identity_folder,
            file_roots=self.settings.file_roots or [self.home.folder / "files"],
            free_slots=self.slots.not_running,
            home_space=self.home_space,
            cgroups=self._cgroups,
            extract_limits=Limits(
                max_bytes=int(self.settings.max_extract_mb * MB),
                max_entries=self.settings.max_extract_entries,
                max_ratio=self.settings.max_extract_ratio,
                min_free_bytes=int(self.settings.min_free_disk_mb * MB),
            ),
            stop_reporting=self.give_up,
            unregistered_give_up_seconds=self.settings.unregistered_give_up_seconds,
        )
        return PollLoop(
            client, self.slots, context, stop, self._runners, self._learn_thumbprints,
            self._learn_nodes, self.status.node(client.url),
        )  # fmt: skip

    def _learn_thumbprints(self, client: CommsClient, thumbprints: list[str]) -> None:
        """The server announced its certificates over the pinned channel: trust exactly those,
        from now on and after a restart."""
        client.trust(thumbprints)
        if isinstance(client, ListeningClient):
            learn_listening_thumbprints(self.home, thumbprints)
        else:
            learn_server_thumbprints(self.home, client.url, thumbprints)
        logger.info("server {} now pinned to {}", client.url, ", ".join(thumbprints))

    async def _drain(self, backlog: asyncio.Task[None]) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.drain_seconds
        if not await self._wait_for(
            self.slots.tasks(), self.cancel_running, self.settings.drain_seconds
        ):
            logger.warning("cancelling {} running tasks", len(self.slots.tasks()))
            for runner in list(self._runners.values()):
                runner.cancel("the agent is stopping")
            # Long enough for each tree to end and its result to be spooled; not for ever: a
            # server that is away would keep the delivery retrying (it is made at next start).
            patience = self.settings.cancel_grace_seconds + SPOOL_MARGIN_SECONDS
            await self._wait_for(self.slots.tasks(), self.give_up, patience)
        remaining = max(deadline - asyncio.get_running_loop().time(), 1.0)
        if not await self._wait_for([backlog], self.give_up, remaining):
            logger.warning("spooled results not yet delivered stay in {}", self.home.spool_folder)
        undelivered = [task for task in self.slots.tasks() if not task.done()]
        if undelivered:
            logger.warning("{} results not yet delivered stay in {}; sent at the next start",
                           len(undelivered), self.home.spool_folder)  # fmt: skip
        for task in [*undelivered, backlog]:
            task.cancel()

    async def _wait_for(
        self, tasks: list[asyncio.Task[None]], interrupt: asyncio.Event, timeout: float | None
    ) -> bool:
        """True when ``tasks`` all ended before ``interrupt`` was set or ``timeout`` passed."""
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return True
        logger.info("waiting for {} tasks to finish", len(pending))
        waiters = [
            asyncio.ensure_future(asyncio.wait(pending, timeout=timeout)),
            asyncio.ensure_future(interrupt.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return all(t.done() for t in pending)
