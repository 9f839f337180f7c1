"""The fleet and task listings of the admin API: filters, and pages that stay fast at 10,000
targets.

``GET /api/targets?environment=&role=&tenant=&connected=&search=&after=NAME&limit=N``: targets
by name (``search``: names holding that text),
a page at a time (the store reads one page, not the fleet). A full page carries
``Link: <...after=LAST>; rel="next"``; a shorter one is the last. ``connected``: polling this
node, or (in a cluster) seen by any node within one hold and a margin.

``GET /api/tasks?target=&state=a,b&since=EPOCH&limit=N``: newest first.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from tentacle_poll.protocol import routes
from tentacle_poll.server.query import bool_query, int_query, optional_float_query, states_query
from tentacle_poll.server.state import STATE, ServerState, task_view
from tentacle_poll.store import AgentRecord
from tentacle_poll.store.base import AgentQuery, TaskQuery

PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000
# With ?connected=, pages are read in chunks this big until the page is full or none is left.
SCAN_CHUNK = 1000
MAX_TASKS = 10_000
AGENT_FILTERS = ("environment", "role", "tenant", "search")


def add_listing_routes(app: web.Application) -> None:
    app.router.add_get(routes.ADMIN_TARGETS, list_targets)
    app.router.add_get(routes.ADMIN_TASKS, list_tasks)


async def list_targets(request: web.Request) -> web.Response:
    state = request.app[STATE]
    agents, following = await requested_page(request, PAGE_SIZE, MAX_PAGE_SIZE)
    response = web.json_response([state.target_view(a).model_dump(mode="json") for a in agents])
    if following is not None:
        response.headers["Link"] = f'<{following}>; rel="next"'
    return response


async def requested_page(
    request: web.Request, page_size: int, max_page_size: int
) -> tuple[list[AgentRecord], str | None]:
    """The page of targets the request's filters ask for (also the portal's), and the address
    of the next page when this one is full. An empty filter is no filter (as forms send it)."""
    query = AgentQuery(
        after=request.query.get("after", ""),
        limit=int_query(request, "limit", page_size, 1, max_page_size),
        **{name: request.query.get(name) or None for name in AGENT_FILTERS},
    )
    agents = await fleet_page(request.app[STATE], query, bool_query(request, "connected"))
    if len(agents) < query.limit:
        return agents, None
    return agents, str(request.rel_url.update_query(after=agents[-1].name))


async def fleet_page(
    state: ServerState, query: AgentQuery, connected: bool | None
) -> list[AgentRecord]:
    if connected is None:
        return await state.store.agents_page(query)
    found: list[AgentRecord] = []
    chunk = dataclasses.replace(query, limit=SCAN_CHUNK)
    while len(found) < query.limit:
        agents = await state.store.agents_page(chunk)
        found += [a for a in agents if state.is_connected(a) == connected]
        if len(agents) < chunk.limit:
            break
        chunk = dataclasses.replace(chunk, after=agents[-1].name)
    return found[: query.limit]


async def list_tasks(request: web.Request) -> web.Response:
    state = request.app[STATE]
    query = TaskQuery(
        target=request.query.get("target"),
        limit=int_query(request, "limit", 50, 1, MAX_TASKS),
        states=states_query(request),
        since=optional_float_query(request, "since", 0, 2**40),
    )
    tasks = await state.store.list_tasks(query)
    return web.json_response([task_view(t).model_dump(mode="json") for t in tasks])
