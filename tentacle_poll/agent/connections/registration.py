"""Registering this agent with a server: pin the server first, send the credential once.

The API key or token is sent only to a server whose thumbprint was verified (given, carried in
the token, or — behind an explicit flag — trusted on first use), and is never written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from loguru import logger
from pydantic import BaseModel

from tentacle_poll import __version__
from tentacle_poll.agent.connections.nodes import add_node
from tentacle_poll.agent.connections.proxy import proxy_for
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import ServerNode, comms_url, given_thumbprint, update_config_file
from tentacle_poll.exceptions import ConfigurationError, ServerIdentityMismatch, ServerUnavailable
from tentacle_poll.logs import hide_secret
from tentacle_poll.protocol.models import RegisterRequest, RegisterResponse
from tentacle_poll.protocol.routes import API_KEY_HEADER, REGISTER, REGISTRATION_TOKEN_HEADER
from tentacle_poll.protocol.tokens import parse_token
from tentacle_poll.proxies import ProxyRoute
from tentacle_poll.tls import load_identity

UNPINNABLE = "0" * 64  # no certificate has this thumbprint


class RegisterProbe(BaseModel):
    """Never sent: the pinned handshake fails first."""


@dataclass(frozen=True)
class Registration:
    server_url: str
    name: str
    environments: list[str]
    roles: list[str]
    tenants: list[str] = field(default_factory=list)
    tenant_tags: list[str] = field(default_factory=list)
    server_thumbprint: str | None = None
    server_name: str | None = None
    api_key: str | None = None
    token: str | None = None
    trust_on_first_use: bool = False
    replace: bool = False


async def register(home: AgentHome, details: Registration) -> RegisterResponse:
    details = replace(details, server_url=comms_url(details.server_url))
    identity = load_identity(home.identity_folder)
    header = _credential_header(details)
    proxy = proxy_for(details.server_url, home.settings().proxy)
    thumbprint = await _server_thumbprint(details, proxy)
    client = CommsClient(
        details.server_url, [thumbprint], None, server_name=details.server_name, proxy=proxy
    )
    request = RegisterRequest(
        name=details.name,
        certificate_pem=identity.cert_pem.decode(),
        environments=details.environments,
        roles=details.roles,
        tenants=details.tenants,
        tenant_tags=details.tenant_tags,
        agent_version=__version__,
        replace=details.replace,
    )
    try:
        answer = await client.post(REGISTER, request, RegisterResponse, headers=header)
    finally:
        await client.close()
    _remember_server(home, details, answer)
    return answer


def _credential_header(details: Registration) -> dict[str, str]:
    if bool(details.api_key) == bool(details.token):
        raise ConfigurationError("give exactly one of --api-key or --token")
    if details.api_key:
        hide_secret(details.api_key)
        return {API_KEY_HEADER: details.api_key}
    assert details.token is not None
    hide_secret(details.token)
    return {REGISTRATION_TOKEN_HEADER: details.token}


async def _server_thumbprint(details: Registration, proxy: ProxyRoute | None) -> str:
    given = details.server_thumbprint
    given = given_thumbprint(given, "--server-thumbprint") if given else None
    if details.token:
        carried, _ = parse_token(details.token)
        if given and given != carried:
            raise ConfigurationError("--server-thumbprint differs from the thumbprint in the token")
        return carried
    if given:
        return given
    if details.trust_on_first_use:
        seen = await fetch_server_thumbprint(details.server_url, details.server_name, proxy)
        logger.warning(
            "trusting server {} on first use with thumbprint {}: compare it with "
            "`tentacle-poll server show-thumbprint` on the server",
            details.server_url,
            seen,
        )
        return seen
    raise ConfigurationError(
        "the server's thumbprint is needed so the key is only ever sent to the real server: "
        "pass --server-thumbprint (from `tentacle-poll server show-thumbprint`), use a "
        "registration token, or --trust-on-first-use if you accept the risk"
    )


async def fetch_server_thumbprint(
    url: str, server_name: str | None = None, proxy: ProxyRoute | None = None
) -> str:
    """The thumbprint the server presents, learnt the way a real connection would go (proxy,
    server name) from a handshake pinned to nothing: not one request byte is sent."""
    probe = CommsClient(url, [UNPINNABLE], None, server_name=server_name, proxy=proxy)
    try:
        await probe.post(REGISTER, RegisterProbe(), RegisterResponse)
    except ServerIdentityMismatch as exc:
        return exc.actual_thumbprint
    finally:
        await probe.close()
    raise ServerUnavailable(f"{url} did not present a certificate")


def _remember_server(home: AgentHome, details: Registration, answer: RegisterResponse) -> None:
    node = ServerNode(
        url=details.server_url, thumbprint=answer.server_thumbprint, server_name=details.server_name
    )
    add_node(home, node)
    update_config_file(home.config_file, name=answer.name)
