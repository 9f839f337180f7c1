"""Retention: tasks that ended more than ``retention_days`` ago go, with their output, and
so do deployments left empty. Pruning runs at startup and every PRUNE_EVERY_SECONDS, in
batches of PRUNE_BATCH rows, each its own short transaction, with a pause between them: a
poll or a post never waits behind more than one batch. ``retention_days = 0`` keeps all.

``GET /api/prune`` says what would go now (``server prune --dry-run``); ``POST /api/prune``
prunes now (admin keys). Both take ``older_than_days`` instead of the setting.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from loguru import logger

from tentacle_poll.protocol import routes
from tentacle_poll.protocol.models import PruneView
from tentacle_poll.server.access import audit
from tentacle_poll.server.query import malformed, optional_float_query
from tentacle_poll.server.state import STATE, ServerState, json_response
from tentacle_poll.server.sweeper import periodically

DAY = 86400.0
PRUNE_BATCH = 200
PAUSE_SECONDS = 0.02
PRUNE_EVERY_SECONDS = 3600.0
MAX_DAYS = 100 * 365.0


def add_retention_routes(app: web.Application) -> None:
    app.router.add_get(routes.ADMIN_PRUNE, prunable)
    app.router.add_post(routes.ADMIN_PRUNE, prune_now)


async def prune_forever(state: ServerState) -> None:
    if state.settings.retention_days > 0:
        await periodically(state, "prune old tasks", lambda: prune_old(state), PRUNE_EVERY_SECONDS)


async def prune_old(state: ServerState) -> int:
    return await prune(state, time.time() - state.settings.retention_days * DAY)


async def prune(state: ServerState, cutoff: float) -> int:
    """Removes, batch by batch, what ended before ``cutoff``; returns how many rows went."""
    removed = 0
    while not state.dispatcher.stopping:
        batch = await state.store.prune(cutoff, PRUNE_BATCH)
        if not batch:
            break
        removed += batch
        await asyncio.sleep(PAUSE_SECONDS)  # dispatch goes on between batches
    if removed:
        logger.info("retention: removed {} tasks and deployments that ended before {}",
                    removed, time.strftime("%Y-%m-%d %H:%M", time.localtime(cutoff)))  # fmt: skip
    return removed


async def prunable(request: web.Request) -> web.Response:
    return json_response(await _prunable_view(request))


async def prune_now(request: web.Request) -> web.Response:
    view = await _prunable_view(request)
    await prune(request.app[STATE], view.cutoff)
    await audit(request, "pruned", f"older than {view.older_than_days:g} days",
                f"{view.tasks} tasks, {view.deployments} deployments")  # fmt: skip
    return json_response(view.model_copy(update={"removed": True}))


async def _prunable_view(request: web.Request) -> PruneView:
    days, cutoff = _cutoff(request)
    found = await request.app[STATE].store.prunable(cutoff)
    return PruneView(
        older_than_days=days, cutoff=cutoff, tasks=found.tasks, deployments=found.deployments
    )


def _cutoff(request: web.Request) -> tuple[float, float]:
    days = optional_float_query(request, "older_than_days", 0, MAX_DAYS)
    if days is None:
        days = request.app[STATE].settings.retention_days
        if days <= 0:
            raise malformed("retention is off (retention_days = 0): give older_than_days (> 0)")
    elif days <= 0:
        raise malformed("older_than_days must be more than 0")
    return days, time.time() - days * DAY
