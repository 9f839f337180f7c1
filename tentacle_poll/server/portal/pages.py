"""The portal's pages: sign-in and sign-out, and the fleet (connection state kept live by
``static/fleet.js``, which asks ``/portal/fleet.json`` every few seconds)."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from tentacle_poll.logs import hide_secret
from tentacle_poll.protocol.models import TargetView
from tentacle_poll.server.access import record
from tentacle_poll.server.listings import requested_page
from tentacle_poll.server.portal.security import from_another_site
from tentacle_poll.server.portal.sessions import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    Session,
    Sessions,
    same_token,
    set_cookie,
)
from tentacle_poll.server.state import STATE, now

SESSIONS = web.AppKey("portal_sessions", Sessions)
PAGE_SIZE = 100
TEMPLATES = Environment(
    loader=PackageLoader("tentacle_poll.server.portal", "templates"),
    autoescape=select_autoescape(["html"]),  # every value is escaped: a name is never markup
)
STATIC = Path(__file__).parent / "static"
FILTERS = ("environment", "role", "tenant", "connected")


def add_portal_routes(app: web.Application, session_minutes: float) -> None:
    app[SESSIONS] = Sessions(session_minutes * 60)
    app.router.add_get("/portal", to_fleet)
    app.router.add_get("/portal/sign-in", sign_in_form)
    app.router.add_post("/portal/sign-in", sign_in)
    app.router.add_post("/portal/sign-out", sign_out)
    app.router.add_get("/portal/fleet", fleet)
    app.router.add_get("/portal/fleet.json", fleet_json)
    app.router.add_static("/portal/static", STATIC, append_version=True)


async def to_fleet(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/portal/fleet")


async def sign_in_form(request: web.Request, problem: str = "", status: int = 200) -> web.Response:
    token = request.cookies.get(SIGN_IN_COOKIE) or _new_token()
    response = _page("sign_in.html", status=status, csrf=token, problem=problem)
    set_cookie(response, request, SIGN_IN_COOKIE, token)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    if from_another_site(request) or not same_token(
        str(form.get("csrf", "")), request.cookies.get(SIGN_IN_COOKIE, "")
    ):
        return await sign_in_form(request, "This form expired; sign in again.", 403)
    secret = str(form.get("api_key", "")).strip()
    hide_secret(secret)  # never in a log line, whatever happens next
    state = request.app[STATE]
    key = await state.store.api_key(secret, now()) if secret else None
    if key is None:
        return await sign_in_form(request, "That API key is unknown or revoked.", 401)
    session_id, _ = request.app[SESSIONS].open(key, secret)
    await record(state, f"key {key.name}", "portal sign-in", key.name)
    response = web.HTTPSeeOther("/portal/fleet")
    set_cookie(response, request, SESSION_COOKIE, session_id)
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    session = await _session(request)
    await _check_form(request, session)
    request.app[SESSIONS].close(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/portal/sign-in")
    response.del_cookie(SESSION_COOKIE, path="/portal")
    raise response


async def fleet(request: web.Request) -> web.Response:
    session = await _session(request)
    targets, following = await _fleet(request)
    shown = {name: request.query.get(name, "") for name in FILTERS}
    return _page(
        "fleet.html", session=session, targets=[_row(t) for t in targets], filters=shown,
        following=following, query_string=request.query_string,
    )  # fmt: skip


async def fleet_json(request: web.Request) -> web.Response:
    await _session(request)
    targets, _ = await _fleet(request)
    return web.json_response([_row(t) for t in targets])


async def _fleet(request: web.Request) -> tuple[list[TargetView], str | None]:
    agents, following = await requested_page(request, PAGE_SIZE, PAGE_SIZE)
    return [request.app[STATE].target_view(a) for a in agents], following


def _row(target: TargetView) -> dict[str, Any]:
    return {
        "name": target.name, "environments": ", ".join(target.environments),
        "roles": ", ".join(target.roles), "tenants": ", ".join(target.tenants),
        "connected": target.connected, "version": target.agent_version,
        "last_seen": _when(target.last_seen),
    }  # fmt: skip


async def _session(request: web.Request) -> Session:
    """The signed-in session, or off to the sign-in page (an expired or revoked one too)."""
    session = request.app[SESSIONS].find(request.cookies.get(SESSION_COOKIE))
    if session is not None and await request.app[STATE].store.api_key(session.secret, now()):
        return session
    request.app[SESSIONS].close(request.cookies.get(SESSION_COOKIE))
    if request.path.endswith(".json"):
        raise web.HTTPUnauthorized(text="sign in again", content_type="text/plain")
    raise web.HTTPSeeOther("/portal/sign-in")


async def _check_form(request: web.Request, session: Session) -> None:
    form = await request.post()
    if from_another_site(request) or not same_token(str(form.get("csrf", "")), session.csrf):
        raise web.HTTPForbidden(
            text="refused: this form did not come from the portal (or it expired); reload it",
            content_type="text/plain",
        )


def _page(template: str, status: int = 200, **values: Any) -> web.Response:
    html = TEMPLATES.get_template(template).render(**values)
    return web.Response(text=html, status=status, content_type="text/html")


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _when(stamp: float | None) -> str:
    if not stamp:
        return "never"
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")
