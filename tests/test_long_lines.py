"""A line longer than the agent's split size (64 KiB) reaches the server in pieces, each but the
last marked `continues`: the stored output, the admin API and `task follow` show it whole."""

from __future__ import annotations

from pathlib import Path

from tentacle_poll.protocol.models import Event, TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, script_task
from .test_deadlines import cli

LONG = 5_000_000


def joined(events: list[Event]) -> list[str]:
    """The lines as printed: a continued event's last line runs on into the next event."""
    text = "".join(e.text + ("" if e.continues else "\n") for e in events)
    return text.split("\n")[:-1]


async def test_a_5_mb_line_is_stored_in_marked_pieces_and_followed_whole(
    server: Server, api_key: str, admin: AdminClient, start_agent: AgentFactory, tmp_path: Path
) -> None:
    await start_agent("web1")
    body = f"head -c {LONG} /dev/zero | tr '\\0' x; echo; echo after"
    task = await admin.submit(script_task("web1", body))
    events: list[Event] = []
    final = await admin.follow(task.id, events.append)
    assert final.state == TaskState.SUCCEEDED
    assert sum(e.continues for e in events) >= LONG // (64 * 1024)  # every cut is marked
    assert joined(events) == ["x" * LONG, "after"]
    code, output = await cli(server, api_key, "task", "follow", task.id)
    assert code == 0 and output.split("\n")[:2] == ["x" * LONG, "after"]
