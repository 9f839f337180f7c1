"""Each line of a task's output is stored once, however an agent's retries batch it: hypothesis
re-batches one spool (overlapping, split, merged and reordered blocks, repeats) and posts it to a
real server; what the server stores must be the spool, exactly."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.protocol.models import (
    Event,
    EventsRequest,
    EventsResponse,
)
from tentacle_poll.protocol.routes import TASK_EVENTS, task_path
from tentacle_poll.server.admin_client import AdminClient

from .conftest import LONG_RUN
from .test_protocol import running_task

LINE = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"]), max_size=12)


@st.composite
def spool_and_batches(draw: st.DrawFn) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """The spool's lines, and posts: each a list of blocks (first, last seq). Random blocks,
    then the spool's own blocks in a shuffled order, so every line is covered at least once."""
    lines = draw(st.lists(LINE, min_size=1, max_size=40))
    count = len(lines)
    seq = st.integers(min_value=1, max_value=count)
    random_blocks = draw(st.lists(st.tuples(seq, seq).map(lambda p: (min(p), max(p))), max_size=12))
    cut = st.integers(min_value=2, max_value=max(count, 2)).filter(lambda c: c <= count)
    cuts = sorted(set(draw(st.lists(cut, max_size=6)))) if count > 1 else []
    starts = [1, *cuts]
    own = [(a, b - 1) for a, b in zip(starts, [*cuts, count + 1], strict=True)]
    blocks = random_blocks + draw(st.permutations(own))
    sizes = draw(st.lists(st.integers(min_value=1, max_value=4), min_size=len(blocks)))
    posts, taken = [], 0
    for size in sizes:
        if taken < len(blocks):
            posts.append(blocks[taken : taken + size])
            taken += size
    return lines, posts


def as_event(lines: list[str], first: int, last: int) -> Event:
    return Event(
        seq=first, stream="stdout", text="\n".join(lines[first - 1 : last]), ts=1.0,
        lines=last - first + 1,
    )  # fmt: skip


async def test_every_line_is_stored_once_whatever_the_batching(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    loop = asyncio.get_running_loop()

    async def replay(lines: list[str], posts: list[list[tuple[int, int]]]) -> list[str]:
        task = await running_task(agent_client, admin)
        for blocks in posts:
            body = EventsRequest(events=[as_event(lines, a, b) for a, b in blocks])
            await agent_client.post(task_path(TASK_EVENTS, task.id), body, EventsResponse)
        page = await admin.events(task.id, 0, 0, limit=1000)
        assert [e.seq for e in page.events] == list(range(1, len(lines) + 1))
        return [e.text for e in page.events]

    @settings(max_examples=1000 if LONG_RUN else 60, database=None)
    @given(spool_and_batches())
    def stored_is_the_spool(case: tuple[list[str], list[list[tuple[int, int]]]]) -> None:
        lines, posts = case
        stored = asyncio.run_coroutine_threadsafe(replay(lines, posts), loop).result(30)
        assert stored == lines

    await asyncio.to_thread(stored_is_the_spool)


async def test_the_issues_own_case_seven_to_nine_then_eight_alone(
    agent_client: CommsClient, admin: AdminClient
) -> None:
    lines = [str(i) for i in range(1, 10)]
    task = await running_task(agent_client, admin)
    path = task_path(TASK_EVENTS, task.id)
    acks = []
    for blocks in ([(1, 6)], [(7, 9)], [(8, 8)]):
        body = EventsRequest(events=[as_event(lines, a, b) for a, b in blocks])
        acks.append((await agent_client.post(path, body, EventsResponse)).acked_seq)
    assert acks == [6, 9, 9]
    page = await admin.events(task.id, 0, 0)
    assert [e.text for e in page.events] == lines  # not 1 2 3 4 5 6 7 8 9 8
