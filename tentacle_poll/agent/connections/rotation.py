"""Rotating the agent's certificate without re-registering and without missing a task.

The new certificate is sent to every server over a connection made with the old one; each
server trusts both for its overlap window. Only when all accepted is the new one put in place,
and the running daemon uses it from its next poll on (it watches the identity files).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil

from loguru import logger

from tentacle_poll.agent.connections.listening import over_the_next_connection
from tentacle_poll.agent.connections.transport import CommsClient, client_for
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import AgentSettings
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.protocol.models import CertificateRequest, CertificateResponse
from tentacle_poll.protocol.routes import CERTIFICATE
from tentacle_poll.tls import Identity, generate_identity, save_identity


async def rotate_certificate(home: AgentHome, settings: AgentSettings) -> Identity:
    _refuse_while_listening_daemon_runs(home, settings)
    new = generate_identity(os.uname().nodename)
    next_folder = home.folder / "identity.next"
    save_identity(next_folder, new)
    request = CertificateRequest(certificate_pem=new.cert_pem.decode())

    async def send(client: CommsClient) -> CertificateResponse:
        return await client.post(CERTIFICATE, request, CertificateResponse)

    for node in settings.servers:
        client = client_for(node, settings, home.identity_folder)
        try:
            _trusted(node.url, await send(client))
        finally:
            await client.close()
    if settings.listen is not None:
        answer = await over_the_next_connection(settings.listen, home.identity_folder, send)
        _trusted(settings.listen.server, answer)
    _swap_identity(home, next_folder)
    return new


def _refuse_while_listening_daemon_runs(home: AgentHome, settings: AgentSettings) -> None:
    """In listening mode the request goes over a connection the server opens to the agent's
    port, which a running daemon holds."""
    pid = home.running_daemon()
    if settings.listen is not None and pid is not None:
        raise ConfigurationError(
            f"this agent listens for its server on port {settings.listen.port}, which its "
            f"running daemon (pid {pid}) holds: stop it (`tentacle-poll service stop`, or kill "
            f"-TERM {pid}), run `tentacle-poll rotate-certificate` again, then start it"
        )


def _trusted(server: str, answer: CertificateResponse) -> None:
    until = dt.datetime.fromtimestamp(answer.previous_valid_until)
    logger.info("{} trusts the new certificate; the old one until {:%Y-%m-%d %H:%M}", server, until)


def _swap_identity(home: AgentHome, next_folder: os.PathLike[str]) -> None:
    previous = home.folder / "identity.previous"
    shutil.rmtree(previous, ignore_errors=True)
    home.identity_folder.rename(previous)
    os.rename(next_folder, home.identity_folder)
