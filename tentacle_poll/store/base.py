"""The store interface the server's handlers use. No SQL outside the implementations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tentacle_poll.protocol.models import Event, ResultRequest, TaskState


@dataclass(frozen=True)
class NewAgent:
    name: str
    thumbprint: str
    certificate_pem: str
    environments: list[str]
    roles: list[str]
    tenants: list[str] = field(default_factory=list)
    tenant_tags: list[str] = field(default_factory=list)
    agent_version: str = ""


@dataclass(frozen=True)
class AgentRecord(NewAgent):
    id: str = ""
    registered_at: float = 0.0
    last_seen: float | None = None
    previous_thumbprint: str | None = None
    previous_certificate_pem: str | None = None
    previous_valid_until: float | None = None
    trusted_server_thumbprints: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TaskRecord:
    id: str
    agent_id: str
    target: str
    spec_json: str
    state: TaskState
    exit_code: int | None
    reason: str
    cancel_requested: bool
    created_at: float
    leased_until: float | None
    started_at: float | None
    finished_at: float | None
    last_seq: int


class Store(Protocol):
    """Everything the server persists. Implementations must make each method atomic."""

    async def close(self) -> None: ...

    # credentials
    async def create_api_key(self, name: str) -> str: ...
    async def api_key_valid(self, key: str) -> bool: ...
    async def create_registration_token(self, expires_at: float) -> str: ...
    async def consume_registration_token(self, secret: str, now: float) -> bool: ...

    # agents
    async def save_agent(self, agent: NewAgent, replace: bool, now: float) -> AgentRecord: ...
    async def agent_by_thumbprint(
        self, thumbprint: str, now: float | None = None
    ) -> AgentRecord | None: ...
    async def agent_by_name(self, name: str) -> AgentRecord | None: ...
    async def list_agents(self) -> list[AgentRecord]: ...
    async def delete_agent(self, name: str) -> AgentRecord | None: ...
    async def touch_agent(
        self, agent_id: str, agent_version: str, now: float, trusted: list[str] | None = None
    ) -> None: ...
    async def touch_agents(self, seen: list[tuple[str, float, str]]) -> None: ...
    async def rotate_certificate(
        self, agent_id: str, pem: str, thumbprint: str, overlap_until: float
    ) -> AgentRecord: ...
    async def expire_previous_certificates(self, now: float) -> list[str]: ...

    # tasks
    async def create_task(self, agent_id: str, spec_json: str, now: float) -> TaskRecord: ...
    async def get_task(self, task_id: str) -> TaskRecord | None: ...
    async def list_tasks(self, target: str | None, limit: int) -> list[TaskRecord]: ...
    async def lease_tasks(
        self, agent_id: str, limit: int, now: float, lease_seconds: float
    ) -> list[TaskRecord]: ...
    async def accept_task(self, task_id: str, agent_id: str, now: float) -> TaskRecord | None: ...
    async def request_cancel(self, task_id: str, now: float) -> TaskRecord | None: ...
    async def cancels_for(self, agent_id: str, task_ids: list[str]) -> list[str]: ...
    async def append_events(self, task_id: str, events: list[Event]) -> int: ...
    async def events_after(self, task_id: str, after_seq: int, limit: int) -> list[Event]: ...
    async def finish_task(self, task_id: str, result: ResultRequest, now: float) -> TaskRecord: ...
    async def expire_leases(self, now: float) -> list[str]: ...
    async def silent_agents(self, seen_before: float) -> list[str]: ...
    async def mark_lost(self, agent_ids: list[str], reason: str, now: float) -> list[str]: ...
