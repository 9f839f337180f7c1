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

from tentacle_poll.agent.connections.transport import client_for
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import AgentSettings
from tentacle_poll.protocol.models import CertificateRequest, CertificateResponse
from tentacle_poll.protocol.routes import CERTIFICATE
from tentacle_poll.tls import Identity, generate_identity, save_identity


async def rotate_certificate(home: AgentHome, settings: AgentSettings) -> Identity:
    new = generate_identity(os.uname().nodename)
    next_folder = home.folder / "identity.next"
    save_identity(next_folder, new)
    request = CertificateRequest(certificate_pem=new.cert_pem.decode())
    for node in settings.servers:
        client = client_for(node, settings, home.identity_folder)
        try:
            answer = await client.post(CERTIFICATE, request, CertificateResponse)
        finally:
            await client.close()
        until = dt.datetime.fromtimestamp(answer.previous_valid_until)
        logger.info(
            "{} trusts the new certificate; the old one until {:%Y-%m-%d %H:%M}", node.url, until
        )
    _swap_identity(home, next_folder)
    return new


def _swap_identity(home: AgentHome, next_folder: os.PathLike[str]) -> None:
    previous = home.folder / "identity.previous"
    shutil.rmtree(previous, ignore_errors=True)
    home.identity_folder.rename(previous)
    os.rename(next_folder, home.identity_folder)
