"""The store interface the server's handlers use. No SQL outside the implementations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tentacle_poll.protocol.models import Event, PackageView, ResultRequest, TaskState
from tentacle_poll.store.credentials import ApiKeyRecord, AuditEntry, TokenRecord


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
    # Listening mode: where the server connects to it (https://host:port); None: it polls.
    listening_url: str | None = None


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
class NewTask:
    agent_id: str
    spec_json: str
    deployment_id: str | None = None
    submitted_by: str = ""
    # Tasks of one agent with the same serial run one at a time, in the order submitted (deploys
    # and rollbacks of one package): a task is not leased while an earlier one is not final.
    serial: str | None = None
    expires_at: float | None = None  # not accepted by then: ends "expired", never delivered


TARGET_GONE = "a target was deleted while its task was being queued"


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
    deployment_id: str | None = None
    submitted_by: str = ""
    expires_at: float | None = None


@dataclass(frozen=True)
class DeploymentEntry:
    """One task of a deployment, as its progress is shown: what a view of 10,000 targets
    reads again and again, so only these columns."""

    target: str
    task_id: str
    agent_id: str
    state: TaskState
    reason: str


@dataclass(frozen=True)
class AgentQuery:
    """A page of targets: by name after ``after``, with the labels given (None: any), whose
    name holds ``search`` (None: any)."""

    after: str = ""
    limit: int = 100
    environment: str | None = None
    role: str | None = None
    tenant: str | None = None
    search: str | None = None

    def labels(self) -> list[tuple[str, str]]:
        """(column, label) pairs to match; each column holds a JSON list of labels."""
        wanted = [("environments", self.environment), ("roles", self.role),
                  ("tenants", self.tenant)]  # fmt: skip
        return [(column, label) for column, label in wanted if label is not None]


@dataclass(frozen=True)
class TaskQuery:
    """Tasks newest first: of ``target`` (any if None), in ``states`` (any if empty), created
    at ``since`` or later (any if None), at most ``limit``."""

    target: str | None = None
    limit: int = 50
    states: tuple[str, ...] = ()
    since: float | None = None


@dataclass(frozen=True)
class DeploymentSummary:
    """A deployment as a list shows it: what it does, when, and its tasks counted by state."""

    id: str
    description: str
    created_at: float
    counts: dict[str, int]


@dataclass(frozen=True)
class Prunable:
    """What retention would remove now: tasks (with their output) and deployments."""

    tasks: int
    deployments: int


class Store(Protocol):
    """Everything the server persists. Implementations must make each method atomic."""

    # (from, to) schema versions when opening the store migrated it (from 0: it was empty)
    schema_change: tuple[int, int] | None

    async def close(self) -> None: ...

    # credentials and the audit trail
    async def create_api_key(
        self,
        name: str,
        scope: str = "admin",
        environments: list[str] | None = None,
        created_by: str = "",
        now: float | None = None,
    ) -> str: ...
    async def api_key(self, key: str, now: float) -> ApiKeyRecord | None: ...
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...
    async def revoke_api_key(self, name: str) -> bool: ...
    async def create_registration_token(
        self, expires_at: float, now: float = 0.0, created_by: str = ""
    ) -> str: ...
    async def consume_registration_token(self, secret: str, now: float) -> str | None: ...
    async def list_registration_tokens(self, now: float) -> list[TokenRecord]: ...
    async def revoke_registration_token(self, token_id: str) -> bool: ...
    async def record(self, entry: AuditEntry) -> None: ...
    async def audit(self, since: float, key: str | None, limit: int) -> list[AuditEntry]: ...

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

    # packages (content-addressed blobs live beside the store, keyed by sha256)
    async def add_package(self, package: PackageView) -> PackageView: ...
    async def list_packages(self) -> list[PackageView]: ...
    async def delete_package(self, package_id: str, version: str) -> PackageView | None: ...
    async def package_uses(self, sha256: str) -> int: ...
    async def get_package(self, package_id: str, version: str) -> PackageView | None: ...

    # tasks
    async def create_task(self, task: NewTask, now: float) -> TaskRecord: ...
    async def create_tasks(self, tasks: list[NewTask], now: float) -> list[str]:
        """Queues all of them in one transaction (a fan-out is queued whole or not at all);
        returns their ids, in order."""
        ...

    async def requeue_task(self, task_id: str, now: float) -> TaskRecord:
        """A task its agent gave back unstarted: queued again, or expired past its deadline."""
        ...

    async def expire_tasks(self, now: float) -> list[TaskRecord]:
        """Queued tasks past their deadline end ``expired``; returns them."""
        ...

    async def create_deployment(
        self, description: str, stop_on_failure: bool, now: float
    ) -> str: ...
    async def deployment(self, deployment_id: str) -> tuple[str, bool, float] | None: ...
    async def deployment_tasks(self, deployment_id: str) -> list[TaskRecord]: ...
    async def list_deployments(self, limit: int) -> list[DeploymentSummary]: ...
    async def deployment_entries(self, deployment_id: str) -> list[DeploymentEntry]:
        """Its tasks' progress, by target name."""
        ...

    async def get_task(self, task_id: str) -> TaskRecord | None: ...
    async def list_tasks(self, query: TaskQuery) -> list[TaskRecord]: ...

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
    async def unfinished_specs(self) -> list[tuple[str, str]]: ...
    async def task_needs_blob(self, agent_id: str, sha256: str) -> bool: ...
    async def replace_spec(self, task_id: str, spec_json: str) -> None: ...
    async def silent_agents(self, seen_before: float) -> list[str]: ...
    async def mark_lost(self, agent_ids: list[str], reason: str, now: float) -> list[str]: ...

    # operations (store/operations.py)
    async def probe_write(self) -> None: ...
    async def agents_page(self, query: AgentQuery) -> list[AgentRecord]: ...
    async def task_counts(self) -> dict[str, int]: ...
    async def oldest_queued_at(self) -> float | None: ...
    async def prunable(self, cutoff: float) -> Prunable: ...
    async def prune(self, cutoff: float, batch: int) -> int: ...


@runtime_checkable
class ClusterStore(Store, Protocol):
    """A store several server nodes share (PostgreSQL): heartbeats, wake-ups, common secrets."""

    async def heartbeat(
        self, node_id: str, comms_url: str, started_at: float, now: float
    ) -> None: ...
    async def live_nodes(self, since: float) -> list[tuple[str, str]]: ...
    async def leave(self, node_id: str) -> None: ...
    async def forget_nodes(self, silent_since: float) -> None: ...
    async def cluster_secret(self, name: str, proposed: str) -> str: ...
    async def get_cluster_secret(self, name: str) -> str | None: ...
    async def set_cluster_secret(self, name: str, sealed: str) -> None: ...
    async def delete_cluster_secret(self, name: str) -> None: ...
    async def notify(self, channel: str, payload: str) -> None: ...
    async def listen(
        self, handlers: dict[str, Callable[[str], None]], on_reconnect: Callable[[], None]
    ) -> None: ...
