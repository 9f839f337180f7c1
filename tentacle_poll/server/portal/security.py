"""The headers every portal answer carries: scripts and styles only from the portal's own
static files (no inline script, so injected markup cannot run), no framing, no sniffing, no
referrer beyond the portal; a refusal of any form posted from another site; and errors shown
to people as a page, not as the API's JSON problem."""

from __future__ import annotations

from aiohttp import web

from tentacle_poll.protocol.models import Problem
from tentacle_poll.protocol.routes import PROBLEM_CONTENT_TYPE
from tentacle_poll.server.portal.rendering import problem_page
from tentacle_poll.server.problems import Handler

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on every
    # form post, and a post from the portal itself could no longer be told from another's.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@web.middleware
async def portal_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/portal"):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(HEADERS)
        raise
    if response.content_type == PROBLEM_CONTENT_TYPE and not for_scripts(request):
        assert isinstance(response, web.Response) and isinstance(response.body, bytes)
        response = problem_page(Problem.model_validate_json(response.body))
    response.headers.update(HEADERS)
    return response


def for_scripts(request: web.Request) -> bool:
    """What the portal's scripts read (data and streams) keeps the API's JSON problems."""
    return request.path.endswith((".json", "/stream"))


def from_another_site(request: web.Request) -> bool:
    """A browser names the page a form came from; another site's is refused."""
    site = request.headers.get("Sec-Fetch-Site")  # what current browsers say
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("Origin")  # older ones
    scheme = "https" if over_https(request) else "http"
    return origin is not None and origin != f"{scheme}://{request.host}"


def over_https(request: web.Request) -> bool:
    """Reached over TLS: directly, or through a reverse proxy that ends TLS and says so
    (``X-Forwarded-Proto: https``). Believing the header can only make cookies stricter, and a
    page of another site cannot set it on a victim's form post."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"
