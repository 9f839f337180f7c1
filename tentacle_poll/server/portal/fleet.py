"""The fleet page: every target with its connection state (kept live by ``static/fleet.js``,
which asks ``fleet.json`` for the same page every few seconds), labels, version, health."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tentacle_poll.protocol.models import TargetView
from tentacle_poll.server.listings import AGENT_FILTERS, requested_page
from tentacle_poll.server.portal.guard import may, signed_in
from tentacle_poll.server.portal.rendering import page, when
from tentacle_poll.server.state import STATE

PAGE_SIZE = 100
FILTERS = (*AGENT_FILTERS, "connected")
CERTIFICATE_WARNING_SECONDS = 14 * 24 * 3600


async def fleet(request: web.Request) -> web.Response:
    session = await signed_in(request)
    targets, following = await _fleet(request)
    shown = {name: request.query.get(name, "") for name in FILTERS}
    return page(
        "fleet.html", session=session, may_run=may(session, "deploy"), targets=targets,
        filters=shown, following=following, query_string=request.query_string,
    )  # fmt: skip


async def fleet_json(request: web.Request) -> web.Response:
    await signed_in(request)
    targets, _ = await _fleet(request)
    return web.json_response(targets)


async def _fleet(request: web.Request) -> tuple[list[dict[str, Any]], str | None]:
    agents, following = await requested_page(request, PAGE_SIZE, PAGE_SIZE)
    views = [request.app[STATE].target_view(agent) for agent in agents]
    return [_row(view) for view in views], following


def _row(target: TargetView) -> dict[str, Any]:
    return {
        "name": target.name, "environments": ", ".join(target.environments),
        "roles": ", ".join(target.roles), "tenants": ", ".join(target.tenants),
        "connected": target.connected, "version": target.agent_version,
        "last_seen": when(target.last_seen) if target.last_seen else "never",
        "health": health_of(target),
        "mode": "listening" if target.listening_url else "polling",
    }  # fmt: skip


def health_of(target: TargetView) -> str:
    """What needs an operator's eye first, or "healthy"."""
    expires = target.certificate_expires_at
    if expires is not None and expires < time.time() + CERTIFICATE_WARNING_SECONDS:
        return f"certificate expires {when(expires)}"
    if target.trusts_next_server_certificate is False:
        return "does not trust the server's next certificate yet"
    last = target.last_connection
    if not target.connected and last is not None and not last.ok:
        return f"unreachable: {last.detail}"  # listening mode: the server cannot connect
    return "healthy" if target.connected else "offline"
