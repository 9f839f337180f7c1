"""Who may do what on the admin API: scoped API keys, environment limits, and the audit trail.

read    GET everything but the audit trail, tokens, keys and fetched files' bytes
deploy  read, and run tasks, deployments, cancels, uploads (limited to environments when
        the key names some)
admin   everything: targets, keys, tokens, the server certificate, the audit trail
"""

from __future__ import annotations

from aiohttp import web

from tentacle_poll.logs import hide_secret
from tentacle_poll.protocol import routes
from tentacle_poll.refusals import peer_of
from tentacle_poll.server.credentials import Credentials
from tentacle_poll.server.problems import Handler, ProblemError
from tentacle_poll.server.state import STATE, ServerState, now
from tentacle_poll.store import AgentRecord, ApiKeyRecord

RANK = {"read": 0, "deploy": 1, "admin": 2}
ADMIN_ONLY = {
    ("POST", routes.ADMIN_TARGETS),  # a listening target: a certificate trusted by thumbprint
    ("DELETE", routes.ADMIN_TARGET),
    ("GET", routes.ADMIN_TOKENS),
    ("POST", routes.ADMIN_TOKENS),
    ("DELETE", routes.ADMIN_TOKEN),
    ("POST", routes.ADMIN_SERVER_CERTIFICATE),
    ("GET", routes.ADMIN_KEYS),
    ("POST", routes.ADMIN_KEYS),
    ("DELETE", routes.ADMIN_KEY),
    ("GET", routes.ADMIN_AUDIT),
    ("DELETE", routes.ADMIN_PACKAGE),
    ("POST", routes.ADMIN_PRUNE),
}
DEPLOY_READS = {("GET", routes.ADMIN_FILE)}  # bytes fetched from targets: not for read keys
CALLER = web.RequestKey("caller", ApiKeyRecord)
UNAUTHENTICATED = {routes.ADMIN_HEALTH, routes.ADMIN_ALIVE, routes.ADMIN_READY}
BEARER = "Bearer "  # Prometheus sends a key as `Authorization: Bearer KEY`
PORTAL = "/portal"


def _bearer(request: web.Request) -> str:
    authorization = request.headers.get("Authorization", "")
    return authorization[len(BEARER) :].strip() if authorization.startswith(BEARER) else ""


def needed_scope(method: str, route: str) -> str:
    if (method, route) in ADMIN_ONLY:
        return "admin"
    if method in ("GET", "HEAD") and (method, route) not in DEPLOY_READS:
        return "read"
    return "deploy"


@web.middleware
async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route.resource
    template = route.canonical if route is not None else request.path
    if _needs_key(request, template) and request.match_info.http_exception is None:
        key = await _caller(request)
        scope = needed_scope(request.method, template)
        if RANK[key.scope] < RANK[scope]:
            raise ProblemError(
                403,
                "key not allowed",
                f"the key {key.name} has the {key.scope} scope; {request.method} {template} "
                f"needs {scope}",
            )
        request[CALLER] = key
    return await handler(request)


def _needs_key(request: web.Request, template: str) -> bool:
    if template.startswith(PORTAL):  # signed-in sessions, checked by the portal itself
        return False
    if template == routes.ADMIN_METRICS:
        return not request.app[STATE].settings.metrics_without_key
    return template not in UNAUTHENTICATED


async def _caller(request: web.Request) -> ApiKeyRecord:
    state = request.app[STATE]
    secret = request.headers.get(routes.API_KEY_HEADER, "") or _bearer(request)
    hide_secret(secret)
    key = await state.store.api_key(secret, now()) if secret else None
    if key is None:
        state.refusals.refused(
            "admin:key",
            f"admin API: refused {request.method} {request.path} from "
            f"{peer_of(request.transport)}: {'an unknown or revoked' if secret else 'no'} API key",
        )
        raise ProblemError(
            401,
            "API key required",
            f"send a valid key in the {routes.API_KEY_HEADER} header; "
            "create one with `tentacle-poll server api-key create`",
        )
    return key


def caller(request: web.Request) -> ApiKeyRecord:
    return request[CALLER]


def require_environment(request: web.Request, environment: str) -> None:
    """403 unless the caller's key may act in ``environment``."""
    key = caller(request)
    if key.environments and environment not in key.environments:
        raise ProblemError(
            403,
            "environment not allowed",
            f"the key {key.name} may deploy to {', '.join(key.environments)} only, "
            f"not to {environment}",
        )


def require_target(request: web.Request, agent: AgentRecord) -> None:
    """403 unless the caller's key may act on a target in any of its environments."""
    key = caller(request)
    if key.environments and not set(key.environments) & set(agent.environments):
        raise ProblemError(
            403,
            "environment not allowed",
            f"the key {key.name} may deploy to {', '.join(key.environments)} only, not to "
            f"{', '.join(agent.environments)} (target {agent.name})",
        )


def credentials(request: web.Request) -> Credentials:
    """Keys, tokens and the audit trail, acting as the caller's key."""
    state = request.app[STATE]
    return Credentials(state.store, state.thumbprint, caller(request).name)


async def audit(request: web.Request, action: str, subject: str, detail: str = "") -> None:
    await credentials(request).record(action, subject, detail)


async def record(state: ServerState, who: str, action: str, subject: str, detail: str = "") -> None:
    """An audit entry for a change made outside the admin API (a registration, a rotation)."""
    await Credentials(state.store, state.thumbprint, who).record(action, subject, detail)
