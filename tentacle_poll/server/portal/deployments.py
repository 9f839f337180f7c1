"""The deployment pages: the newest deployments with their aggregate state, and one deployment
with every target's state (kept live by ``static/deployment.js``) and its rollback."""

from __future__ import annotations

from aiohttp import web

from tentacle_poll.server.deployments import deployment_view, roll_back, summary_view
from tentacle_poll.server.portal.guard import acting_as, form_of, may, signed_in
from tentacle_poll.server.portal.rendering import page
from tentacle_poll.server.state import STATE, json_response

LISTED = 100
SHOWN_TARGETS = 1000  # rows on the page; the counts above them cover every target


def deployment_page_of(deployment_id: str) -> str:
    return f"/portal/deployments/{deployment_id}"


async def deployment_list(request: web.Request) -> web.Response:
    session = await signed_in(request)
    listed = await request.app[STATE].store.list_deployments(LISTED)
    return page("deployments.html", session=session, deployments=map(summary_view, listed))


async def deployment_page(request: web.Request) -> web.Response:
    session = await signed_in(request)
    view = await deployment_view(request.app[STATE], request.match_info["deployment_id"])
    # Only a package's deployment rolls back (the server checks again when asked).
    may_roll_back = may(session, "deploy") and view.description.startswith("deploy ")
    return page(
        "deployment.html", session=session, deployment=view,
        targets=view.targets[:SHOWN_TARGETS], hidden=len(view.targets) - SHOWN_TARGETS,
        may_roll_back=may_roll_back,
    )  # fmt: skip


async def deployment_state(request: web.Request) -> web.Response:
    await signed_in(request)
    view = await deployment_view(request.app[STATE], request.match_info["deployment_id"])
    shown = view.model_copy(update={"targets": view.targets[:SHOWN_TARGETS]})
    return json_response(shown)


async def roll_back_deployment(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    form = await form_of(request, session)
    acting_as(request, session)
    deployment_id = request.match_info["deployment_id"]
    if form.get("confirmed") != "yes":
        view = await deployment_view(request.app[STATE], deployment_id)
        return page("roll_back.html", session=session, deployment=view)
    raise web.HTTPSeeOther(deployment_page_of(await roll_back(request, deployment_id)))
