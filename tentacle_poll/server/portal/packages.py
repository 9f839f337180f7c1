"""The packages page: every uploaded package and version, each with a way to deploy it."""

from __future__ import annotations

from aiohttp import web

from tentacle_poll.server.portal.guard import may, signed_in
from tentacle_poll.server.portal.rendering import page
from tentacle_poll.server.state import STATE


async def package_list(request: web.Request) -> web.Response:
    session = await signed_in(request)
    packages = await request.app[STATE].store.list_packages()
    packages.sort(key=lambda p: (p.package_id, -p.uploaded_at))
    return page("packages.html", session=session, packages=packages,
                may_deploy=may(session, "deploy"))  # fmt: skip
