"""An agent leaving for good (`tentacle-poll deregister`): the running daemon drains and stops,
every server it polls removes its target (asked with the agent's own certificate, no API key),
then its home goes (unless kept).

Nothing is deleted locally unless every server answered: an agent whose server was away keeps
its identity, so deregistering again later still works.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

from tentacle_poll import __version__
from tentacle_poll.agent.connections.listening import over_the_next_connection
from tentacle_poll.agent.connections.transport import CommsClient, client_for
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import AgentSettings, ListeningSettings, ServerNode
from tentacle_poll.exceptions import (
    CertificateRejected,
    ConfigurationError,
    RequestRejected,
    ServerUnavailable,
)
from tentacle_poll.protocol.models import DeregisterRequest, DeregisterResponse
from tentacle_poll.protocol.routes import DEREGISTER

STOP_MARGIN_SECONDS = 15.0


async def stop_daemon(home: AgentHome, settings: AgentSettings) -> int | None:
    """Asks a daemon running on ``home`` to drain and stop (SIGTERM), and waits until it has;
    returns its pid, or None when none ran."""
    pid = home.running_daemon()
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        raise ConfigurationError(
            f"the agent running on {home.folder} (pid {pid}) belongs to another user: run "
            "deregister as that user or as root, or stop it first (`tentacle-poll service stop`)"
        ) from None
    patience = settings.drain_seconds + settings.cancel_grace_seconds + STOP_MARGIN_SECONDS
    try:
        async with asyncio.timeout(patience):
            await _exited(pid)
    except TimeoutError:
        raise ConfigurationError(
            f"the agent (pid {pid}) did not stop within {patience:.0f} s; stop it "
            f"(`tentacle-poll service stop`, or kill {pid}) and run deregister again"
        ) from None
    return pid


async def _exited(pid: int) -> None:
    """Returns once process ``pid`` has exited (a pidfd turns readable then)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, _settle, gone)
    try:
        await gone
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def deregister(home: AgentHome, settings: AgentSettings) -> list[str]:
    """Removes this agent's target from every server it polls; a line per server. The nodes
    of one cluster share a certificate and a database: one of them answering is enough.
    Raises ServerUnavailable naming the servers none of whose nodes could be reached."""
    if not settings.servers and settings.listen is None:
        raise ConfigurationError(f"the agent home {home.folder} is registered with no server")
    if not home.has_identity():
        raise ConfigurationError(
            f"the agent home {home.folder} holds no certificate: this agent cannot prove who "
            "it is; delete its target on the server instead (`tentacle-poll targets delete NAME`)"
        )
    said, unreachable = [], []
    if settings.listen is not None:
        try:
            said.append(await _deregister_listening(home, settings.listen))
        except ServerUnavailable as exc:
            unreachable.append(str(exc))
    for cluster in _clusters(settings.servers):
        try:
            said.append(await _deregister_from_cluster(home, settings, cluster))
        except ServerUnavailable as exc:
            unreachable.append(str(exc))
    if unreachable:
        raise ServerUnavailable(
            f"could not reach {'; '.join(unreachable)}; nothing was deleted here. Run "
            "`tentacle-poll deregister` again once it is back, or delete the target there "
            "(`tentacle-poll targets delete NAME`) and then this agent with `tentacle-poll "
            "deregister --local-only`"
        )
    return said


def _clusters(nodes: list[ServerNode]) -> list[list[ServerNode]]:
    """Nodes grouped by the server certificate they present (one per cluster)."""
    groups: dict[str, list[ServerNode]] = {}
    for node in nodes:
        groups.setdefault(node.thumbprint, []).append(node)
    return list(groups.values())


async def _deregister_from_cluster(
    home: AgentHome, settings: AgentSettings, cluster: list[ServerNode]
) -> str:
    failures = []
    for node in cluster:
        try:
            return f"{node.url}: {await _deregister_at(home, settings, node)}"
        except ServerUnavailable as exc:
            failures.append(f"{node.url} ({exc})")
    raise ServerUnavailable("; ".join(failures))


async def _deregister_listening(home: AgentHome, listening: ListeningSettings) -> str:
    """Listening mode: the same request, over the next connection the server opens (the
    daemon's port is free again: it was stopped first)."""
    said = await over_the_next_connection(listening, home.identity_folder, _deregister_with)
    return f"{listening.server}: {said}"


async def _deregister_at(home: AgentHome, settings: AgentSettings, node: ServerNode) -> str:
    client = client_for(node, settings, home.identity_folder)
    try:
        return await _deregister_with(client)
    finally:
        await client.close()


async def _deregister_with(client: CommsClient) -> str:
    try:
        request = DeregisterRequest(agent_version=__version__)
        answer = await client.post(DEREGISTER, request, DeregisterResponse)
    except CertificateRejected:
        return "this agent is not registered there (already removed)"
    except RequestRejected as exc:
        if exc.status != 403:
            raise
        return "this agent is not registered there (already removed)"
    return f"target {answer.name} removed"


def delete_home(home: AgentHome) -> None:
    """Only a folder that holds an agent identity: never a mistyped --home such as /."""
    if not home.has_identity():
        raise ConfigurationError(
            f"{home.folder} holds no agent identity: not deleting it (pass --keep-home, or "
            "delete it by hand)"
        )
    shutil.rmtree(home.folder)
