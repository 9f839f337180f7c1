"""Signing in (an API key exchanged for a session cookie) and out."""

from __future__ import annotations

import secrets

from aiohttp import web

from tentacle_poll.logs import hide_secret
from tentacle_poll.refusals import peer_of
from tentacle_poll.server.access import record
from tentacle_poll.server.portal.guard import SESSIONS, SIGN_IN, form_of, signed_in
from tentacle_poll.server.portal.rendering import page
from tentacle_poll.server.portal.security import from_another_site
from tentacle_poll.server.portal.sessions import (
    PATH,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    same_token,
    set_cookie,
)
from tentacle_poll.server.state import STATE, now

HOME = "/portal/fleet"


async def sign_in_form(request: web.Request, problem: str = "", status: int = 200) -> web.Response:
    token = request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(32)
    response = page("sign_in.html", status=status, csrf=token, problem=problem)
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
        state.refusals.refused(
            "admin:key", f"portal: refused a sign-in from {peer_of(request.transport)}: "
            f"{'an unknown or revoked' if secret else 'no'} API key",
        )  # fmt: skip
        return await sign_in_form(request, "That API key is unknown or revoked.", 401)
    session_id, _ = request.app[SESSIONS].open(key, secret)
    await record(state, f"key {key.name}", "portal sign-in", key.name)
    response = web.HTTPSeeOther(HOME)
    set_cookie(response, request, SESSION_COOKIE, session_id)
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await form_of(request, await signed_in(request))
    request.app[SESSIONS].close(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther(SIGN_IN)
    response.del_cookie(SESSION_COOKIE, path=PATH)
    raise response
