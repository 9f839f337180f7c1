"""An HTTP CONNECT proxy as both sides reach one: the agent on its way to its servers
(agent/connections/proxy.py), the server on its way to listening targets (server/dialling.py).

Credentials never travel in a proxy URL, which ends up in error texts: they go in a
``Proxy-Authorization`` header, and both the password and the header are hidden from logs.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from tentacle_poll.logs import hide_secret


@dataclass(frozen=True)
class ProxyRoute:
    host: str
    port: int
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def proxy_route(host: str, port: int, user: str | None, password: str | None) -> ProxyRoute:
    """The proxy at host:port, with basic credentials when ``user`` is given."""
    if user is None:
        return ProxyRoute(host, port)
    hide_secret(password)
    credentials = f"{user}:{password or ''}".encode()
    auth = "Basic " + base64.b64encode(credentials).decode()
    hide_secret(auth)
    return ProxyRoute(host, port, {"Proxy-Authorization": auth})
