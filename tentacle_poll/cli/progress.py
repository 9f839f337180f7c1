"""Following a fan-out to its end: each target's output as it comes, a progress line every few
seconds (how many are done, which are waiting and why), then a summary with every target that
did not succeed. ``--wait`` bounds the whole command; the tasks go on without it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tentacle_poll.cli.tasks import EXIT_STOPPED_WAITING, print_event, print_task
from tentacle_poll.protocol.models import DeploymentTarget, DeploymentView, Event, TaskView

if TYPE_CHECKING:  # the admin client loads aiohttp: only admin commands import it
    from tentacle_poll.server.admin_client import AdminClient

PROGRESS_EVERY_SECONDS = 5.0
FOLLOWED_AT_ONCE = 50  # long polls held open at once; the others wait their turn
NAMES_SHOWN = 10


async def follow_deployment(client: AdminClient, view: DeploymentView, wait: float | None) -> int:
    """Exit code: 0 when every target succeeded, 75 when ``wait`` ran out first, 1 otherwise."""
    turns = asyncio.Semaphore(FOLLOWED_AT_ONCE)

    async def follow(target: DeploymentTarget) -> None:
        def show(event: Event) -> None:
            print(f"  [{target.target}] {event.text}", flush=True)

        async with turns:
            print_task(await client.follow(target.task_id, show))

    followers = [asyncio.create_task(follow(target)) for target in view.targets]
    reporter = asyncio.create_task(_report_progress(client, view.id))
    finished = await _all_done_within(followers, wait)
    reporter.cancel()
    final = await client.deployment(view.id)
    print_summary(final, finished, wait)
    if not finished:
        return EXIT_STOPPED_WAITING
    return 0 if final.state == "succeeded" else 1


async def follow_one(client: AdminClient, task: TaskView, wait: float | None) -> TaskView | None:
    """The task once it ended, or None when ``wait`` ran out first (said on the way out)."""
    try:
        async with asyncio.timeout(wait):
            return await client.follow(task.id, print_event)
    except TimeoutError:
        now = await client.task(task.id)
        print(f"stopped waiting after {wait:g} s: task {task.id} on {task.target} is {now.state}; "
              f"it goes on: `tentacle-poll task follow {task.id}`")  # fmt: skip
        return None


async def _all_done_within(followers: list[asyncio.Task[None]], wait: float | None) -> bool:
    try:
        async with asyncio.timeout(wait):
            await asyncio.gather(*followers)
        return True
    except TimeoutError:
        return False
    finally:
        for follower in followers:
            follower.cancel()


async def _report_progress(client: AdminClient, deployment_id: str) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_SECONDS)
        view = await client.deployment(deployment_id)
        waiting = [t for t in view.targets if not t.state.is_final]
        done = len(view.targets) - len(waiting)
        if waiting:
            print(f"progress: {done} of {len(view.targets)} done; waiting for "
                  f"{_names(waiting)}", flush=True)  # fmt: skip


def print_summary(view: DeploymentView, finished: bool, wait: float | None) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(view.counts.items()))
    print(f"deployment {view.id} {view.state}: {counts}")
    for target in view.targets:
        if target.state.is_final and target.state != "succeeded":
            reason = f": {target.reason}" if target.reason else ""
            print(f"  {target.target}: {target.state}{reason}")
    if not finished:
        waiting = [t for t in view.targets if not t.state.is_final]
        print(f"stopped waiting after {wait:g} s with {len(waiting)} not done: "
              f"{_names(waiting)}; their tasks go on (`tentacle-poll task follow "
              "ID`)")  # fmt: skip


def _why_waiting(target: DeploymentTarget) -> str:
    if target.state == "queued" and not target.connected:
        return f"{target.target} (offline, task {target.task_id})"
    return f"{target.target} ({target.state}, task {target.task_id})"


def _names(targets: list[DeploymentTarget]) -> str:
    shown = [_why_waiting(t) for t in targets[:NAMES_SHOWN]]
    more = len(targets) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")
