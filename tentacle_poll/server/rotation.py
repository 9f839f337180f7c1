"""Admin routes for the server certificate: show it, prepare the next one, activate, cancel.

Rotation without losing any agent: *prepare* makes the next certificate and announces its
thumbprint in every poll answer (agents add it to their pins, learning it over the channel
pinned to the current one); *activate*, once every target reports that it trusts the next
thumbprint, makes it the certificate new connections see.
"""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from tentacle_poll.protocol import routes
from tentacle_poll.protocol.models import ServerCertificateAction, ServerCertificateView
from tentacle_poll.server.access import audit
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.state import STATE, ServerState, json_response, read_model
from tentacle_poll.tls import certificate_expiry_fast, load_identity


def add_rotation_routes(app: web.Application) -> None:
    app.router.add_get(routes.ADMIN_SERVER_CERTIFICATE, show_certificate)
    app.router.add_post(routes.ADMIN_SERVER_CERTIFICATE, change_certificate)


async def show_certificate(request: web.Request) -> web.Response:
    return json_response(certificate_view(request.app[STATE]))


async def change_certificate(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_model(request, ServerCertificateAction)
    if body.action == "prepare":
        state.next_thumbprint = state.home.prepare_rotation()
        logger.info(
            "prepared server certificate {}; announcing it to agents", state.next_thumbprint
        )
    elif body.action == "cancel":
        state.home.cancel_rotation()
        state.next_thumbprint = None
    else:
        await _activate(state, body.force)
    await state.identity_changed()
    await audit(request, f"server certificate {body.action}", state.thumbprint)
    return json_response(certificate_view(state))


async def _activate(state: ServerState, force: bool) -> None:
    if state.next_thumbprint is None:
        raise ProblemError(409, "no rotation prepared", "prepare the next certificate first")
    waiting = [
        agent.name
        for agent in await state.store.list_agents()
        if state.next_thumbprint not in agent.trusted_server_thumbprints
    ]
    if waiting and not force:
        raise ProblemError(
            409,
            "targets not ready",
            f"these targets have not confirmed the next thumbprint yet: {', '.join(waiting)}; "
            "wait until they poll, or activate with force (they would then need `tentacle-poll "
            "trust` or a new registration)",
        )
    state.thumbprint = state.home.activate_rotation()
    state.next_thumbprint = None
    state.trust.reload_identity()
    logger.warning("the server now presents certificate {}", state.thumbprint)


def certificate_view(state: ServerState) -> ServerCertificateView:
    current = load_identity(state.home.identity_folder)
    next_expiry = None
    if state.next_thumbprint:
        next_expiry = certificate_expiry_fast(
            load_identity(state.home.next_folder).cert_pem
        ).timestamp()
    return ServerCertificateView(
        thumbprint=current.thumbprint,
        expires_at=certificate_expiry_fast(current.cert_pem).timestamp(),
        next_thumbprint=state.next_thumbprint,
        next_expires_at=next_expiry,
    )
