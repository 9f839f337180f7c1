"""Column lists, row-to-record mapping and new ids, shared by both stores' parts."""

from __future__ import annotations

import json
import secrets

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.store.base import AgentRecord, DeploymentEntry, TaskRecord

TASK_COLUMNS = (
    "t.id, t.agent_id, a.name, t.spec_json, t.state, t.exit_code, t.reason, t.cancel_requested, "
    "t.created_at, t.leased_until, t.started_at, t.finished_at, t.last_seq, t.deployment_id, "
    "t.submitted_by, t.expires_at"
)
AGENT_COLUMNS = (
    "name, thumbprint, certificate_pem, environments, roles, tenants, tenant_tags, agent_version, "
    "id, registered_at, last_seen, listening_url"
)
ROTATION_COLUMNS = (
    "previous_thumbprint, previous_certificate_pem, previous_valid_until, "
    "trusted_server_thumbprints"
)


def new_task_id(now: float) -> str:
    """Sortable by creation time to the millisecond, unique by its random part: 64 bits, as a
    fan-out makes thousands in one millisecond (with 32, a 10,000-task fan-out collided)."""
    return f"{int(now * 1000):x}-{secrets.token_hex(8)}"


def agent_from_row(row: tuple[object, ...]) -> AgentRecord:
    (
        name,
        thumb,
        pem,
        envs,
        roles,
        tenants,
        tags,
        version,
        agent_id,
        reg,
        seen,
        listening_url,
        prev_thumb,
        prev_pem,
        prev_until,
        trusted,
    ) = row
    return AgentRecord(
        previous_thumbprint=str(prev_thumb) if prev_thumb else None,
        previous_certificate_pem=str(prev_pem) if prev_pem else None,
        previous_valid_until=opt_float(prev_until),
        trusted_server_thumbprints=json.loads(str(trusted)),
        name=str(name),
        thumbprint=str(thumb),
        certificate_pem=str(pem),
        environments=json.loads(str(envs)),
        roles=json.loads(str(roles)),
        tenants=json.loads(str(tenants)),
        tenant_tags=json.loads(str(tags)),
        agent_version=str(version),
        id=str(agent_id),
        registered_at=float(str(reg)),
        last_seen=float(str(seen)) if seen is not None else None,
        listening_url=str(listening_url) if listening_url else None,
    )


def task_from_row(row: tuple[object, ...]) -> TaskRecord:
    (
        task_id,
        agent_id,
        target,
        spec,
        state,
        code,
        reason,
        cancel,
        created,
        leased,
        started,
        finished,
        last_seq,
        deployment_id,
        submitted_by,
        expires_at,
    ) = row
    return TaskRecord(
        id=str(task_id),
        agent_id=str(agent_id),
        target=str(target),
        spec_json=str(spec),
        state=TaskState(str(state)),
        exit_code=code if isinstance(code, int) else None,
        reason=str(reason),
        cancel_requested=bool(cancel),
        created_at=float(str(created)),
        leased_until=opt_float(leased),
        started_at=opt_float(started),
        finished_at=opt_float(finished),
        last_seq=int(str(last_seq)),
        deployment_id=str(deployment_id) if deployment_id else None,
        submitted_by=str(submitted_by),
        expires_at=opt_float(expires_at),
    )


def opt_float(value: object) -> float | None:
    return None if value is None else float(str(value))


ENTRY_COLUMNS = "a.name, t.id, t.agent_id, t.state, t.reason"


def entry_from_row(row: tuple[object, ...]) -> DeploymentEntry:
    name, task_id, agent_id, state, reason = row
    return DeploymentEntry(
        str(name), str(task_id), str(agent_id), TaskState(str(state)), str(reason)
    )
