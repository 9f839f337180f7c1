"""Health for people, supervisors and load balancers, and metrics for Prometheus.

``/healthz``: alive (the event loop answers), 200 always; a supervisor restarts on no answer.
``/readyz``: ready for agents and operators: 200, or 503 with every reason (the store did not
take a write, the disk is under its floor, the identity is gone, the server is stopping, a
recent shortage). ``/api/health``: the summary the CLI shows. ``/metrics``: Prometheus text.
"""

from __future__ import annotations

import asyncio
import shutil

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from tentacle_poll.exceptions import TentaclePollError
from tentacle_poll.protocol import routes
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.state import STATE, ServerState
from tentacle_poll.tls.files import CERT_FILE

PROBE_SECONDS = 2.0
MB = 1024 * 1024


def add_health_routes(app: web.Application) -> None:
    app.router.add_get(routes.ADMIN_HEALTH, health)
    app.router.add_get(routes.ADMIN_ALIVE, alive)
    app.router.add_get(routes.ADMIN_READY, ready)
    app.router.add_get(routes.ADMIN_METRICS, metrics)


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    problems = state.shortage.problems()
    status = "degraded" if problems else "ok"
    # nodes: the cluster's live nodes (none from a single server)
    answer = {"status": status, "server_thumbprint": state.thumbprint, "problems": problems}
    return web.json_response({**answer, "nodes": state.node_urls()})


async def alive(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    problems = [*await readiness_problems(state), *state.shortage.problems()]
    if problems:
        raise ProblemError(503, "not ready", "; ".join(problems))
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await state.metrics.exposition(state)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readiness_problems(state: ServerState) -> list[str]:
    problems = []
    if state.dispatcher.stopping:
        problems.append("the server is stopping: it takes no new work")
    if not (state.home.identity_folder / CERT_FILE).exists():
        problems.append(
            f"the server certificate is missing from {state.home.identity_folder}: restore "
            "it from a backup (agents pin its thumbprint)"
        )
    problems.extend(_disk_problems(state))
    if failed := await _store_write_fails(state):
        problems.append(f"the store did not take a write: {failed}")
    return problems


def _disk_problems(state: ServerState) -> list[str]:
    try:
        free = shutil.disk_usage(state.home.folder).free
    except OSError as exc:  # the home is gone or unreadable: not ready, and say why
        return [f"cannot read the free space of {state.home.folder}: {exc.strerror or exc}"]
    floor = state.settings.min_free_disk_mb * MB
    if free >= floor:
        return []
    return [
        f"{free / MB:.0f} MB free on the disk of {state.home.folder}, under its floor of "
        f"{floor / MB:.0f} MB (min_free_disk_mb): free space there (old packages: "
        "`tentacle-poll package delete`; old tasks: retention_days)"
    ]


async def _store_write_fails(state: ServerState) -> str | None:
    try:
        await asyncio.wait_for(state.store.probe_write(), PROBE_SECONDS)
    except TimeoutError:
        return f"no answer within {PROBE_SECONDS:g} s (the database is busy, locked or away)"
    except (TentaclePollError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None
