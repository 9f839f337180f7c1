"""Who is signed in, and what they may do: every page needs a live session (its key still
valid), every form its CSRF token, every action the scope it would need on the admin API.

An action runs as the session's key (``access.CALLER``), so the admin API's own checks apply
unchanged: a deploy key limited to environments is refused a target outside them.
"""

from __future__ import annotations

from aiohttp import web
from multidict import MultiDictProxy

from tentacle_poll.server.access import CALLER, RANK
from tentacle_poll.server.portal.security import for_scripts, from_another_site
from tentacle_poll.server.portal.sessions import SESSION_COOKIE, Session, Sessions, same_token
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.state import STATE, now

SESSIONS = web.AppKey("portal_sessions", Sessions)
SIGN_IN = "/portal/sign-in"
Form = MultiDictProxy[str | bytes | bytearray | web.FileField]


async def signed_in(request: web.Request) -> Session:
    """The signed-in session, or off to the sign-in page (an expired or revoked one too);
    what scripts ask (``.json``, a stream) gets a 401 instead of a page."""
    session = await live_session(request)
    if session is not None:
        return session
    if for_scripts(request):
        raise web.HTTPUnauthorized(text="sign in again", content_type="text/plain")
    raise web.HTTPSeeOther(SIGN_IN)


async def live_session(request: web.Request) -> Session | None:
    sessions = request.app[SESSIONS]
    session = sessions.find(request.cookies.get(SESSION_COOKIE))
    if session is not None and await request.app[STATE].store.api_key(session.secret, now()):
        return session
    sessions.close(request.cookies.get(SESSION_COOKIE))
    return None


async def form_of(request: web.Request, session: Session) -> Form:
    """The posted form, once it is known to come from the portal page of this session."""
    form = await request.post()
    if from_another_site(request) or not same_token(str(form.get("csrf", "")), session.csrf):
        raise web.HTTPForbidden(
            text="refused: this form did not come from the portal (or it expired); reload it",
            content_type="text/plain",
        )
    return form


def may(session: Session, scope: str) -> bool:
    return RANK[session.key.scope] >= RANK[scope]


def require(session: Session, scope: str) -> None:
    """A 403 that says why unless the session's key has ``scope``."""
    if not may(session, scope):
        detail = f"the key {session.key.name} has the {session.key.scope} scope; this needs {scope}"
        raise ProblemError(403, "key not allowed", detail)


def acting_as(request: web.Request, session: Session, scope: str = "deploy") -> None:
    """The request acts as the session's key from here on, which must have ``scope``."""
    require(session, scope)
    request[CALLER] = session.key
