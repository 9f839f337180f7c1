"""The web portal, served by the server on its admin listener (docs/portal.md).

Server-rendered pages (Jinja2, escaping every value) with a little vanilla JavaScript from
``static/``; no CDN, no build step. An API key is exchanged once for a session cookie
(``sessions``, ``signing``); every form carries a CSRF token and every action runs as the
session's key with the admin API's own checks (``guard``); every answer carries a strict
Content-Security-Policy (no inline script, no framing) (``security``). Pages: ``fleet``,
``tasks`` (with ``output`` streamed live), ``deployments``, ``packages``, ``running``.
"""

from tentacle_poll.server.portal.routes import add_portal_routes

__all__ = ["add_portal_routes"]
