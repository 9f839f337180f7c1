"""Where each portal page is (all under ``/portal``, on the admin listener)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from tentacle_poll.server.portal import deployments, fleet, output, packages, running, tasks
from tentacle_poll.server.portal.guard import SESSIONS
from tentacle_poll.server.portal.sessions import Sessions
from tentacle_poll.server.portal.signing import HOME, sign_in, sign_in_form, sign_out

STATIC = Path(__file__).parent / "static"


def add_portal_routes(app: web.Application, session_minutes: float) -> None:
    app[SESSIONS] = Sessions(session_minutes * 60)
    add = app.router
    add.add_get("/portal", to_home)
    add.add_get("/portal/sign-in", sign_in_form)
    add.add_post("/portal/sign-in", sign_in)
    add.add_post("/portal/sign-out", sign_out)
    add.add_get("/portal/fleet", fleet.fleet)
    add.add_get("/portal/fleet.json", fleet.fleet_json)
    add.add_get("/portal/tasks", tasks.task_list)
    add.add_get("/portal/tasks/{task_id}", tasks.task_page)
    add.add_get("/portal/tasks/{task_id}/stream", output.stream)
    add.add_get("/portal/tasks/{task_id}/output.txt", output.output_text)
    add.add_post("/portal/tasks/{task_id}/cancel", tasks.cancel_task)
    add.add_get("/portal/deployments", deployments.deployment_list)
    add.add_get("/portal/deployments/{deployment_id}", deployments.deployment_page)
    add.add_get("/portal/deployments/{deployment_id}/state.json", deployments.deployment_state)
    add.add_post("/portal/deployments/{deployment_id}/rollback", deployments.roll_back_deployment)
    add.add_get("/portal/packages", packages.package_list)
    add.add_get("/portal/run", running.run_form)
    add.add_post("/portal/run", running.run)
    add.add_static("/portal/static", STATIC, append_version=True)


async def to_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(HOME)
