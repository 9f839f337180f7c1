"""Wake-ups: a queued task rings its agent's held poll; a stored line wakes followers.

Each waiter takes the current bell *before* it reads the store, so a ring that lands between
the read and the wait is never missed. In a cluster every ring is also passed to ``echo``
(server/cluster.py sends it to the other nodes), and rings from other nodes arrive by ``heard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator


class Bells:
    """One asyncio.Event per key, replaced after every ring."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def current(self, key: str) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    def ring(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def ring_all(self) -> None:
        for key in list(self._events):
            self.ring(key)


async def wait_for_bell(bell: asyncio.Event, timeout: float) -> bool:
    """True when the bell rang, False when ``timeout`` passed first."""
    # asyncio.timeout, not wait_for: no extra task per held poll (measurable at 10,000 polls).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(timeout, 0)):
            await bell.wait()
            return True
    return False


# Polls one agent may hold at once beyond its slots. One is normal; a restarted agent's old
# poll may linger until its dead connection is noticed; more than this is a misbehaving client.
POLL_MARGIN = 2


class HeldPoll:
    """One held poll; set ``superseded`` when newer polls of its agent push it over the cap:
    it is answered at once, empty."""

    __slots__ = ("superseded",)

    def __init__(self) -> None:
        self.superseded = False


class Dispatcher:
    """Who is polling right now, and the bells for agents and for task followers."""

    def __init__(self) -> None:
        self.agents = Bells()
        self.tasks = Bells()
        self.polls = Bells()  # rung when an agent's poll starts: lets callers await a connection
        self.stopping = False
        self._held: dict[str, list[HeldPoll]] = {}  # per agent, oldest first
        self._without_work: set[str] = set()
        # Wake-ups so far, per agent and for all: a store read that found no work marks the
        # agent only if none came while it ran (with a store whose reads yield to the event
        # loop, a task queued meanwhile would otherwise be marked away and wait for ever).
        self._wakes: Counter[str] = Counter()
        self._wakes_of_all = 0
        self._last_poll_end: dict[str, float] = {}
        self._results: Counter[str] = Counter()  # per agent: results received, i.e. slots freed
        self._answering: Counter[str] = Counter()  # per agent: its requests being handled now
        self.echo: Callable[[str, str], None] = _alone  # ("agent" | "task", id) to other nodes

    @contextlib.contextmanager
    def polling(self, agent_id: str, slots: int) -> Iterator[HeldPoll]:
        """Counts the poll while it is held; beyond ``slots`` + POLL_MARGIN polls of one agent,
        the oldest are superseded (the newest is the one a live agent is waiting on)."""
        held = self._held.setdefault(agent_id, [])
        poll = HeldPoll()
        held.append(poll)
        self._supersede_beyond(agent_id, held, slots + POLL_MARGIN)
        self.polls.ring(agent_id)
        answered = False
        try:
            yield poll
            answered = True
        finally:
            held.remove(poll)
            if not held:
                del self._held[agent_id]
            # A poll that ended because the agent went away leaves it disconnected at once;
            # one that was answered leaves it connected for the moment it takes to poll again.
            self._last_poll_end[agent_id] = time.time() if answered else 0.0

    def _supersede_beyond(self, agent_id: str, held: list[HeldPoll], cap: int) -> None:
        if len(held) > cap:
            for poll in held[: len(held) - cap]:
                poll.superseded = True
            self.agents.ring(agent_id)

    def has_no_work(self, agent_id: str) -> bool:
        return agent_id in self._without_work

    def wake_mark(self, agent_id: str) -> tuple[int, int]:
        """Taken before a store read; given back to ``no_work_for`` after it."""
        return self._wakes_of_all, self._wakes[agent_id]

    def no_work_for(self, agent_id: str, mark: tuple[int, int]) -> None:
        """The store had no work for the agent when read: skip it until the next wake-up,
        unless one came while it was being read."""
        if mark == self.wake_mark(agent_id):
            self._without_work.add(agent_id)

    def work_for(self, agent_id: str) -> None:
        """Something may be queued or cancelled for the agent: check the store, wake its poll."""
        self._wakes[agent_id] += 1
        self._without_work.discard(agent_id)
        self.agents.ring(agent_id)
        self.echo("agent", agent_id)

    def task_changed(self, task_id: str) -> None:
        """New output or a new state: wake whoever follows the task."""
        self.tasks.ring(task_id)
        self.echo("task", task_id)

    def heard(self, kind: str, key: str) -> None:
        """A ring from another node of the cluster."""
        if kind == "agent":
            self._wakes[key] += 1
            self._without_work.discard(key)
            self.agents.ring(key)
        elif kind == "task":
            self.tasks.ring(key)

    def heard_everything(self) -> None:
        """Rings from other nodes may have been missed: every waiter checks the store again."""
        self._wakes_of_all += 1
        self._without_work.clear()
        self.agents.ring_all()
        self.tasks.ring_all()

    def result_received(self, agent_id: str) -> None:
        """One of the agent's slots is about to free up: wake its poll if it has none free. A
        task that ended may also let a queued one of its serial be leased: check the store."""
        self._results[agent_id] += 1
        self.work_for(agent_id)

    def results_received(self, agent_id: str) -> int:
        return self._results[agent_id]

    def talking_to(self, agent_id: str) -> None:
        """A request of the agent is being handled (until ``done_talking``): an agent whose
        requests wait on a busy server (its store queue) is not silent."""
        self._answering[agent_id] += 1

    def done_talking(self, agent_id: str) -> None:
        self._answering[agent_id] -= 1
        if not self._answering[agent_id]:
            del self._answering[agent_id]

    def is_talking(self, agent_id: str) -> bool:
        """Holding a poll or waiting for any other answer: not silent, however long ago it
        was last seen."""
        return agent_id in self._held or agent_id in self._answering

    def is_polling(self, agent_id: str) -> bool:
        return agent_id in self._held

    def polls_held(self, agent_id: str) -> int:
        return len(self._held.get(agent_id, ()))

    def is_connected(self, agent_id: str, grace_seconds: float = 5.0) -> bool:
        """Polling now, or between two polls (an agent re-polls within milliseconds)."""
        if self.is_polling(agent_id):
            return True
        return time.time() - self._last_poll_end.get(agent_id, 0.0) < grace_seconds

    def connected_count(self) -> int:
        known = self._held.keys() | self._last_poll_end.keys()
        return sum(1 for agent_id in known if self.is_connected(agent_id))

    def held_count(self) -> int:
        return sum(len(polls) for polls in self._held.values())

    def stop(self) -> None:
        self.stopping = True
        self.agents.ring_all()
        self.tasks.ring_all()
        self.polls.ring_all()

    async def wait_until_polling(self, agent_id: str) -> None:
        bell = self.polls.current(agent_id)
        if not self.is_polling(agent_id):
            await bell.wait()


def _alone(kind: str, key: str) -> None:
    """One node: nobody else to tell."""
