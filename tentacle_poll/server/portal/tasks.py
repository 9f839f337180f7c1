"""The task pages: the newest tasks with filters, one task with its output (streamed by
``output``), and its cancel button."""

from __future__ import annotations

from aiohttp import web

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server.admin import cancel
from tentacle_poll.server.portal.guard import acting_as, form_of, may, signed_in
from tentacle_poll.server.portal.rendering import page
from tentacle_poll.server.query import states_query
from tentacle_poll.server.state import STATE, task_view
from tentacle_poll.store.base import TaskQuery

LISTED = 100
SHOWN_LINES = 20_000  # the page keeps this many (static/task.js); a longer output opens at its end


def task_page_of(task_id: str) -> str:
    return f"/portal/tasks/{task_id}"


async def task_list(request: web.Request) -> web.Response:
    session = await signed_in(request)
    target = request.query.get("target") or None
    query = TaskQuery(target=target, limit=LISTED, states=states_query(request))
    tasks = await request.app[STATE].store.list_tasks(query)
    filters = {"target": target or "", "state": request.query.get("state", "")}
    return page(
        "tasks.html", session=session, tasks=[task_view(t) for t in tasks], filters=filters,
        states=[state.value for state in TaskState],
    )  # fmt: skip


async def task_page(request: web.Request) -> web.Response:
    session = await signed_in(request)
    task = task_view(await request.app[STATE].task_or_404(request.match_info["task_id"]))
    may_cancel = may(session, "deploy") and not task.state.is_final
    start_after = max(0, task.last_seq - SHOWN_LINES)
    return page("task.html", session=session, task=task, may_cancel=may_cancel,
                start_after=start_after)  # fmt: skip


async def cancel_task(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    await form_of(request, session)
    acting_as(request, session)
    task = await cancel(request, request.match_info["task_id"])
    raise web.HTTPSeeOther(task_page_of(task.id))
