"""What every handler needs, kept in one object on the aiohttp applications."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from pydantic import BaseModel

from tentacle_poll.config import ServerSettings
from tentacle_poll.logs import about
from tentacle_poll.protocol.codec import decode, encode
from tentacle_poll.protocol.models import TargetView, TaskView
from tentacle_poll.refusals import RefusalLog
from tentacle_poll.server.connections import OpenConnections
from tentacle_poll.server.dispatch import Dispatcher
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.server.metrics import ServerMetrics
from tentacle_poll.server.problems import ProblemError, refuse_oversized
from tentacle_poll.server.shortage import Shortage
from tentacle_poll.server.strangers import Strangers
from tentacle_poll.server.vault import Vault
from tentacle_poll.store import AgentRecord, Store, TaskRecord
from tentacle_poll.store.blobs import Blobs
from tentacle_poll.tls import TrustedClientCertificates, certificate_expiry_fast

if TYPE_CHECKING:
    from tentacle_poll.server.listening import Listening

M = TypeVar("M", bound=BaseModel)
CLUSTER_SEEN_MARGIN_SECONDS = 10.0  # a sweep (at most 5 s) and a slow database


async def _nothing() -> None:
    """One server: nobody else to tell."""


@dataclass
class ServerState:
    settings: ServerSettings
    store: Store
    dispatcher: Dispatcher
    trust: TrustedClientCertificates
    thumbprint: str
    home: ServerHome
    vault: Vault
    blobs: Blobs  # packages and transferred files, by SHA-256
    next_thumbprint: str | None = None
    refusals: RefusalLog = field(default_factory=RefusalLog)
    connections: OpenConnections = field(default_factory=OpenConnections)
    strangers: Strangers = field(init=False)  # connections without a certificate
    shortage: Shortage = field(init=False)  # out of descriptors to accept connections
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    # Hot-path caches (every held poll would otherwise read and write the store): agents by
    # certificate thumbprint, and last_seen times not yet written (the sweeper writes them).
    _agents: dict[str, AgentRecord] = field(default_factory=dict)
    _unwritten_seen: dict[str, tuple[float, str]] = field(default_factory=dict)
    # Tells the other nodes of a cluster that registrations or certificates changed.
    trust_echo: Callable[[], None] = lambda: None
    # Stores a server certificate rotation step for the other nodes of a cluster.
    identity_changed: Callable[[], Awaitable[None]] = _nothing
    # The comms URLs of the cluster's live nodes, announced to agents (none: one server).
    node_urls: Callable[[], list[str]] = list
    _nodes_told: dict[str, list[str]] = field(default_factory=dict)  # per agent
    # The connections this node keeps to listening targets (set once the comms port is up).
    listening: Listening | None = None

    def __post_init__(self) -> None:
        self.strangers = Strangers(self.settings, self.refusals)
        self.shortage = Shortage(self.refusals)
        self.metrics.watch(self)

    async def agent_for(self, thumbprint: str, at: float) -> AgentRecord | None:
        agent = self._agents.get(thumbprint)
        if agent is None or not _presents(agent, thumbprint, at):
            agent = await self.store.agent_by_thumbprint(thumbprint, at)
            if agent is not None:
                self._agents[thumbprint] = agent
        return agent

    def forget_agents(self) -> None:
        """After any change to registrations or certificates."""
        self._agents.clear()

    def registrations_changed(self) -> None:
        """A target registered, deleted or rotated its certificate: here, and on every node."""
        self.forget_agents()
        self.trust_echo()

    async def stop_trusting(self, agent: AgentRecord, why: str) -> None:
        """A target left (deleted, or deregistered itself): routes refuse it and its
        connections close first, then its certificate leaves the trust store."""
        self.cut_off(agent.thumbprint, agent.previous_thumbprint)
        if self.listening is not None:
            self.listening.forget(agent.id)
        await self.trust.remove(agent.certificate_pem.encode())
        about("target_removed", target=agent.name).info(
            "target {} {}; its certificate is no longer trusted", agent.name, why
        )

    def cut_off(self, *thumbprints: str | None) -> None:
        """Certificates no longer trusted: the lookups forget them, their connections close."""
        self.registrations_changed()
        self.connections.cut(t for t in thumbprints if t)

    async def seen(self, agent: AgentRecord, version: str, trusted: list[str], at: float) -> None:
        """Records that the agent polled: in memory now, in the store at the next flush."""
        if trusted and trusted != agent.trusted_server_thumbprints:
            await self.store.touch_agent(agent.id, version, at, trusted)
            self.forget_agents()
        self._unwritten_seen[agent.id] = (at, version)

    def heard_from(self, agent: AgentRecord, at: float) -> None:
        """Any request of the agent shows it alive, not only a poll: one posting a task's
        output or result through a busy server, between two polls, is not lost."""
        version = self._unwritten_seen.get(agent.id, (0.0, agent.agent_version))[1]
        self._unwritten_seen[agent.id] = (at, version)

    async def flush_seen(self) -> None:
        """Writes every pending last_seen. The write yields to the event loop between batches,
        so an entry leaves the pending map only once written, and only if no newer poll
        replaced it meanwhile: views never show an older time than they showed before."""
        pending = dict(self._unwritten_seen)
        if pending:
            await self.store.touch_agents([(a, at, v) for a, (at, v) in pending.items()])
        for agent_id, seen in pending.items():
            if self._unwritten_seen.get(agent_id) == seen:
                del self._unwritten_seen[agent_id]

    def nodes_untold(self, agent_id: str) -> bool:
        """The cluster's nodes changed since the agent was last told (or it never was): its
        poll is answered at once, so that it polls a new node within a moment."""
        nodes = self.node_urls()
        return bool(nodes) and self._nodes_told.get(agent_id) != nodes

    def tell_nodes(self, agent_id: str) -> list[str]:
        nodes = self.node_urls()
        if nodes:
            self._nodes_told[agent_id] = nodes
        return nodes

    def server_thumbprints(self) -> list[str]:
        """Announced in every poll answer: current first, then the prepared next one."""
        return [self.thumbprint, *([self.next_thumbprint] if self.next_thumbprint else [])]

    def is_connected(self, agent: AgentRecord) -> bool:
        """Polling this node now; or, in a cluster, seen by any node lately: an agent held
        by another node was seen when its poll came in, and that node records it within a
        sweep (so within one hold and a margin)."""
        if self.dispatcher.is_connected(agent.id):
            return True
        if not self.node_urls():
            return False
        seen = self._unwritten_seen.get(agent.id, (agent.last_seen, ""))[0] or 0.0
        return time.time() - seen < self.settings.hold_seconds + CLUSTER_SEEN_MARGIN_SECONDS

    def target_view(self, agent: AgentRecord) -> TargetView:
        return TargetView(
            name=agent.name,
            environments=agent.environments,
            roles=agent.roles,
            tenants=agent.tenants,
            tenant_tags=agent.tenant_tags,
            thumbprint=agent.thumbprint,
            connected=self.is_connected(agent),
            last_seen=self._unwritten_seen.get(agent.id, (agent.last_seen, ""))[0],
            agent_version=agent.agent_version,
            certificate_expires_at=certificate_expiry_fast(
                agent.certificate_pem.encode()
            ).timestamp()
            if agent.certificate_pem
            else None,
            previous_thumbprint=agent.previous_thumbprint,
            previous_valid_until=agent.previous_valid_until,
            trusts_next_server_certificate=(
                self.next_thumbprint in agent.trusted_server_thumbprints
                if self.next_thumbprint
                else None
            ),
            listening_url=agent.listening_url,
            last_connection=self.listening.last_connection(agent.id) if self.listening else None,
        )

    async def task_or_404(self, task_id: str) -> TaskRecord:
        task = await self.store.get_task(task_id)
        if task is None:
            raise ProblemError(404, "no such task", f"there is no task {task_id}")
        return task


STATE = web.AppKey("state", ServerState)


def _presents(agent: AgentRecord, thumbprint: str, at: float) -> bool:
    if agent.thumbprint == thumbprint:
        return True
    overlap = agent.previous_valid_until or 0.0
    return agent.previous_thumbprint == thumbprint and overlap > at


def task_view(task: TaskRecord) -> TaskView:
    return TaskView(
        id=task.id,
        target=task.target,
        kind=json.loads(task.spec_json).get("kind", "script"),
        state=task.state,
        exit_code=task.exit_code,
        reason=task.reason,
        cancel_requested=task.cancel_requested and not task.state.is_final,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        last_seq=task.last_seq,
        submitted_by=task.submitted_by,
        expires_at=task.expires_at,
    )


async def read_model(request: web.Request, model_type: type[M]) -> M:
    refuse_oversized(request, request.app[STATE].settings.max_body_bytes)
    return decode(model_type, await request.read())


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=encode(model), status=status, content_type="application/json")


def now() -> float:
    return time.time()


def task_fields(task: TaskRecord) -> dict[str, str | None]:
    """The structured log fields of a line about ``task`` (tentacle_poll.logs.about)."""
    return {"task_id": task.id, "target": task.target, "deployment_id": task.deployment_id}
