"""What every handler needs, kept in one object on the aiohttp applications."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel

from tentacle_poll.config import ServerSettings
from tentacle_poll.protocol.codec import decode, encode
from tentacle_poll.protocol.models import TargetView, TaskView
from tentacle_poll.server.dispatch import Dispatcher
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.store import AgentRecord, Store, TaskRecord
from tentacle_poll.tls import TrustedClientCertificates, certificate_expiry

M = TypeVar("M", bound=BaseModel)


@dataclass
class ServerState:
    settings: ServerSettings
    store: Store
    dispatcher: Dispatcher
    trust: TrustedClientCertificates
    thumbprint: str
    home: ServerHome
    next_thumbprint: str | None = None

    def server_thumbprints(self) -> list[str]:
        """Announced in every poll answer: current first, then the prepared next one."""
        return [self.thumbprint, *([self.next_thumbprint] if self.next_thumbprint else [])]

    def target_view(self, agent: AgentRecord) -> TargetView:
        return TargetView(
            name=agent.name,
            environments=agent.environments,
            roles=agent.roles,
            tenants=agent.tenants,
            tenant_tags=agent.tenant_tags,
            thumbprint=agent.thumbprint,
            connected=self.dispatcher.is_connected(agent.id),
            last_seen=agent.last_seen,
            agent_version=agent.agent_version,
            certificate_expires_at=certificate_expiry(agent.certificate_pem.encode()).timestamp(),
            previous_thumbprint=agent.previous_thumbprint,
            previous_valid_until=agent.previous_valid_until,
            trusts_next_server_certificate=(
                self.next_thumbprint in agent.trusted_server_thumbprints
                if self.next_thumbprint
                else None
            ),
        )

    async def task_or_404(self, task_id: str) -> TaskRecord:
        task = await self.store.get_task(task_id)
        if task is None:
            raise ProblemError(404, "no such task", f"there is no task {task_id}")
        return task


STATE = web.AppKey("state", ServerState)


def task_view(task: TaskRecord) -> TaskView:
    return TaskView(
        id=task.id,
        target=task.target,
        kind="script",
        state=task.state,
        exit_code=task.exit_code,
        reason=task.reason,
        cancel_requested=task.cancel_requested and not task.state.is_final,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        last_seq=task.last_seq,
    )


async def read_model(request: web.Request, model_type: type[M]) -> M:
    return decode(model_type, await request.read())


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=encode(model), status=status, content_type="application/json")


def now() -> float:
    return time.time()
