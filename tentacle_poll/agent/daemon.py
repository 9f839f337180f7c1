"""The agent daemon's lifecycle: startup → poll until asked to stop → drain → shutdown.

Stopping escalates, one step per signal (``escalate``): first stop taking work and let running
tasks finish up to the drain deadline; second cancel running tasks and report them cancelled;
third give up at once.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from tentacle_poll.agent.home import AgentHome
from tentacle_poll.agent.poll_loop import PollLoop
from tentacle_poll.agent.runner import RunnerContext, TaskRunner
from tentacle_poll.agent.slots import Slots
from tentacle_poll.agent.transport import CommsClient
from tentacle_poll.config import AgentSettings


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

    def escalate(self) -> int:
        """One step further towards stopping; returns the new level (1, 2, 3...)."""
        self._stop_level += 1
        steps = [self.stop_polling, self.cancel_running, self.give_up]
        for event in steps[: self._stop_level]:
            event.set()
        return self._stop_level

    async def run(self) -> None:
        clients = [
            CommsClient(node.url, [node.thumbprint], self.home.identity_folder,
                        self.settings.connect_timeout_seconds)
            for node in self.settings.servers
        ]  # fmt: skip
        try:
            loops = [self._poll_loop(client) for client in clients]
            polling = [asyncio.create_task(loop.run()) for loop in loops]
            self.started.set()
            logger.info("agent {} started with {} slots", self.settings.name, self.slots.capacity)
            await asyncio.gather(*polling)
            await self._drain()
        finally:
            for client in clients:
                await client.close()
        logger.info("agent stopped")

    def _poll_loop(self, client: CommsClient) -> PollLoop:
        context = RunnerContext(
            client=client, work_folder=self.home.work_folder,
            grace_seconds=self.settings.cancel_grace_seconds,
            max_backoff=self.settings.backoff_max_seconds, stop_reporting=self.give_up,
        )  # fmt: skip
        return PollLoop(client, self.slots, context, self.stop_polling, self._runners)

    async def _drain(self) -> None:
        if not await self._wait_running(self.cancel_running, self.settings.drain_seconds):
            logger.warning("cancelling {} running tasks", len(self.slots.tasks()))
            for runner in list(self._runners.values()):
                runner.cancel("the agent is stopping")
            if not await self._wait_running(self.give_up, None):
                for task in self.slots.tasks():
                    task.cancel()

    async def _wait_running(self, interrupt: asyncio.Event, timeout: float | None) -> bool:
        """True when every running task ended before ``interrupt`` or ``timeout``."""
        running = self.slots.tasks()
        if not running:
            return True
        logger.info("waiting for {} running tasks to finish", len(running))
        waiters = [
            asyncio.ensure_future(asyncio.wait(running, timeout=timeout)),
            asyncio.ensure_future(interrupt.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not self.slots.tasks()
