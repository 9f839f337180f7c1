"""Where each portal page is (all under ``/portal``, on the admin listener)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from tentacle_poll.server.portal import deployments, fleet, output, packages, running, tasks
from tentacle_poll.server.portal.guard import SESSIONS
from tentacle_poll.server.portal.sessions import Sessions
from tentacle_poll.server.portal.signing import HOME, sign_in, sign_in_form, sign_out

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
# The few static files, read once: served from memory, no file is left open when a browser
# drops a request half way (aiohttp's file responses were seen to leak one then).
STATIC_FILES = web.AppKey("portal_static_files", dict[str, tuple[bytes, str]])


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
    app[STATIC_FILES] = {
        path.name: (path.read_bytes(), STATIC_TYPES[path.suffix])
        for path in STATIC.iterdir() if path.suffix in STATIC_TYPES
    }  # fmt: skip
    add.add_get("/portal/static/{name}", static_file)


async def to_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(HOME)


async def static_file(request: web.Request) -> web.Response:
    found = request.app[STATIC_FILES].get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound(text="no such file", content_type="text/plain")
    body, content_type = found
    return web.Response(body=body, content_type=content_type, charset="utf-8")
