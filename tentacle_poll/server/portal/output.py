"""A task's output for the browser: a server-sent event stream that resumes where it broke off
(the browser sends back the last ``id``, the last line it got), and the whole output as text.

Lines go in batches (``lines`` events, each ``id`` the batch's last line): at 10,000 lines a
second that is a few messages a second, which ``static/task.js`` renders once per frame. The
task's state goes as ``task`` events when it changes, and ``end`` says the task ended and every
line was sent (the browser stops reconnecting then).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

from aiohttp import web
from loguru import logger

from tentacle_poll.exceptions import StorageFull, StoreUnavailable
from tentacle_poll.protocol.models import Event, TaskView
from tentacle_poll.server.dispatch import wait_for_bell
from tentacle_poll.server.portal.guard import live_session, signed_in
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.query import int_query
from tentacle_poll.server.state import STATE, task_view

BATCH_LINES = 2000
TEXT_PAGE_LINES = 5000
KEEPALIVE_SECONDS = 15.0  # a comment now and then keeps proxies from closing an idle stream
SESSION_CHECK_SECONDS = 15.0  # a busy stream, too, stops soon after its session has ended
RETRY_MS = 1000  # how soon the browser reconnects after a cut
MAX_SEQ_TEXT = 20


async def stream(request: web.Request) -> web.StreamResponse:
    await signed_in(request)
    task_id = request.match_info["task_id"]
    await request.app[STATE].task_or_404(task_id)  # a 404 before the stream opens
    after = _resume_point(request)
    response = web.StreamResponse(headers={"X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    with _ending_quietly(f"output stream of task {task_id}"):  # the browser resumes
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        await _follow(request, response, task_id, after)
    return response


@contextlib.contextmanager
def _ending_quietly(what: str) -> Iterator[None]:
    """Once an answer has begun no error status can be sent: a browser that left (or a cut
    connection) just ends it, and so does a failing store, with a line in the log."""
    try:
        yield
    except ConnectionResetError:
        pass
    except (StoreUnavailable, StorageFull, OSError) as exc:
        logger.warning("{} ended: {}", what, exc)


def _resume_point(request: web.Request) -> int:
    """The last line the browser has: ``Last-Event-ID`` on a reconnect, else ``?after=``."""
    resumed = request.headers.get("Last-Event-ID", "").strip()
    if not resumed:
        return int_query(request, "after", 0, 0, 2**62)
    if not resumed.isdigit() or len(resumed) > MAX_SEQ_TEXT:
        raise ProblemError(400, "malformed request", "Last-Event-ID must be a line number")
    return int(resumed)


async def _follow(
    request: web.Request, response: web.StreamResponse, task_id: str, after: int
) -> None:
    state = request.app[STATE]
    shown: tuple[object, ...] = ()
    session_checked = time.monotonic()
    while not state.dispatcher.stopping:
        if time.monotonic() - session_checked >= SESSION_CHECK_SECONDS:
            if await live_session(request) is None:  # signed out, expired or key revoked
                return await _send(response, "signed-out", "{}")
            session_checked = time.monotonic()
        bell = state.dispatcher.tasks.current(task_id)
        task = await state.store.get_task(task_id)  # before its lines, as the API's follow
        if task is None:  # pruned or its target deleted while watched
            return await _send(response, "end", "{}")
        lines = await state.store.events_after(task_id, after, BATCH_LINES)
        view = task_view(task)
        if (changes := _changes(view)) != shown:
            shown = changes
            await _send(response, "task", view.model_dump_json())
        if lines:
            after = lines[-1].seq
            await _send(response, "lines", _batch(lines), event_id=after)
        elif task.state.is_final:
            return await _send(response, "end", "{}")
        elif not await wait_for_bell(bell, KEEPALIVE_SECONDS):
            await response.write(b": still here\n\n")


def _changes(view: TaskView) -> tuple[object, ...]:
    """What a watcher is told of when it changes (not every new line's count)."""
    return view.state, view.cancel_requested, view.exit_code, view.reason


def _batch(lines: list[Event]) -> str:
    return json.dumps([[line.seq, line.stream, line.text, line.continues] for line in lines])


async def _send(
    response: web.StreamResponse, event: str, data: str, event_id: int | None = None
) -> None:
    named = f"id: {event_id}\n" if event_id is not None else ""
    await response.write(f"{named}event: {event}\ndata: {data}\n\n".encode())


async def output_text(request: web.Request) -> web.StreamResponse:
    """The task's whole output as plain text (lines past what the page keeps are here)."""
    await signed_in(request)
    task_id = request.match_info["task_id"]
    await request.app[STATE].task_or_404(task_id)
    response = web.StreamResponse()
    response.content_type, response.charset = "text/plain", "utf-8"
    with _ending_quietly(f"output download of task {task_id}"):
        await response.prepare(request)
        after = 0
        while lines := await request.app[STATE].store.events_after(task_id, after, TEXT_PAGE_LINES):
            text = "".join(line.text + ("" if line.continues else "\n") for line in lines)
            await response.write(text.encode())
            after = lines[-1].seq
        await response.write_eof()
    return response
