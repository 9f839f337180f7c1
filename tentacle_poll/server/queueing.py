"""How a task joins its target's queue: sealed, with its deadline and its serial.

Deadline: a task no agent has accepted by ``expires_at`` ends ``expired`` and is never
delivered, so that a fan-out over offline targets finishes. Deploys, rollbacks and health
checks get a default deadline; other tasks wait for their target unless given one.

Serial: deploys and rollbacks of one package on one target run one at a time, in the order
they were submitted (the store leases a task only when every earlier one of its serial is
final), so the last one submitted is the one left ``current``.
"""

from __future__ import annotations

from tentacle_poll.protocol.models import TaskSpec
from tentacle_poll.server.state import ServerState, now
from tentacle_poll.store import AgentRecord, NewTask, TaskRecord

DEFAULT_EXPIRY_SECONDS = {"deploy": 3600.0, "rollback": 3600.0, "health": 600.0}


def deadline(spec: TaskSpec, expires_seconds: float | None, at: float) -> float | None:
    seconds = expires_seconds or DEFAULT_EXPIRY_SECONDS.get(spec.kind)
    return at + seconds if seconds else None


def serial_of(spec: TaskSpec) -> str | None:
    payload = spec.deploy or spec.rollback
    return f"package:{payload.package_id}" if payload is not None else None


async def queue_task(
    state: ServerState,
    agent: AgentRecord,
    spec: TaskSpec,
    expires_seconds: float | None,
    submitted_by: str,
) -> TaskRecord:
    at = now()
    task = await state.store.create_task(
        _new_task(state, agent, spec, expires_seconds, submitted_by, None, at), at
    )
    state.dispatcher.work_for(agent.id)
    return task


async def queue_tasks(
    state: ServerState,
    planned: list[tuple[AgentRecord, TaskSpec]],
    expires_seconds: float | None,
    submitted_by: str,
    deployment_id: str,
) -> None:
    """A deployment's tasks: queued in one transaction (whole or not at all, and one commit
    instead of one per target), then every target woken."""
    at = now()
    tasks = [
        _new_task(state, agent, spec, expires_seconds, submitted_by, deployment_id, at)
        for agent, spec in planned
    ]
    await state.store.create_tasks(tasks, at)
    for agent, _ in planned:
        state.dispatcher.work_for(agent.id)


def _new_task(
    state: ServerState,
    agent: AgentRecord,
    spec: TaskSpec,
    expires_seconds: float | None,
    submitted_by: str,
    deployment_id: str | None,
    at: float,
) -> NewTask:
    return NewTask(
        agent_id=agent.id,
        spec_json=state.vault.seal_spec(spec.model_dump(mode="json")),
        deployment_id=deployment_id,
        submitted_by=submitted_by,
        serial=serial_of(spec),
        expires_at=deadline(spec, expires_seconds, at),
    )
