"""Fan-out: one task per target matching an environment and roles (and tenants, tenant tags),
grouped as a deployment with an aggregate state; optionally stopping the rest on a failure."""

from __future__ import annotations

from collections import Counter
from typing import Literal

from aiohttp import web

from tentacle_poll.exceptions import StoreError
from tentacle_poll.logs import about
from tentacle_poll.protocol import routes
from tentacle_poll.protocol.models import (
    DeploymentTarget,
    DeploymentView,
    FanOut,
    TaskSpec,
    TaskState,
)
from tentacle_poll.server.access import audit, caller, require_environment
from tentacle_poll.server.admin import resolved_spec
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.queueing import queue_tasks
from tentacle_poll.server.state import STATE, ServerState, json_response, now, read_model
from tentacle_poll.store import AgentRecord, DeploymentEntry, TaskRecord

FAILED = {TaskState.FAILED, TaskState.TIMED_OUT, TaskState.LOST, TaskState.EXPIRED}


def add_deployment_routes(app: web.Application) -> None:
    app.router.add_post(routes.ADMIN_DEPLOYMENTS, create_deployment)
    app.router.add_get(routes.ADMIN_DEPLOYMENT, show_deployment)


def matches(agent: AgentRecord, fan_out: FanOut) -> bool:
    """In the environment, with any of the roles, and any of the tenants and tags if given."""
    return (
        fan_out.environment in agent.environments
        and (not fan_out.roles or bool(set(fan_out.roles) & set(agent.roles)))
        and (not fan_out.tenants or bool(set(fan_out.tenants) & set(agent.tenants)))
        and (not fan_out.tenant_tags or bool(set(fan_out.tenant_tags) & set(agent.tenant_tags)))
    )


async def create_deployment(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fan_out = await read_model(request, FanOut)
    targets = [a for a in await state.store.list_agents() if matches(a, fan_out)]
    if not targets:
        roles = f" with any of the roles {', '.join(fan_out.roles)}" if fan_out.roles else ""
        detail = f"no target in {fan_out.environment}{roles}"
        raise ProblemError(404, "no matching targets", detail)
    require_environment(request, fan_out.environment)
    task = _in_environment(fan_out)
    specs = [await resolved_spec(state, task, agent) for agent in targets]  # all or none
    roles = ", ".join(fan_out.roles) or "all roles"
    description = f"{task.kind} to {fan_out.environment} ({roles})"
    deployment_id = await state.store.create_deployment(
        description, fan_out.stop_on_first_failure, now()
    )
    planned = list(zip(targets, specs, strict=True))
    try:
        await queue_tasks(state, planned, fan_out.expires_seconds, caller(request).name,
                          deployment_id)  # fmt: skip
    except StoreError as exc:
        raise ProblemError(409, "targets changed", f"{exc}; nothing was queued, try again") from exc
    await audit(
        request, "deployment created", deployment_id, f"{description}, {len(targets)} targets"
    )
    about("deployment_created", deployment_id=deployment_id).info(
        "deployment {}: {} on {} targets", deployment_id, description, len(targets)
    )
    return json_response(await deployment_view(state, deployment_id), status=201)


async def show_deployment(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response(await deployment_view(state, request.match_info["deployment_id"]))


async def deployment_view(state: ServerState, deployment_id: str) -> DeploymentView:
    found = await state.store.deployment(deployment_id)
    if found is None:
        raise ProblemError(404, "no such deployment", f"there is no deployment {deployment_id}")
    entries = await state.store.deployment_entries(deployment_id)
    targets = [_target(state, entry) for entry in entries]
    counts = Counter(entry.state.value for entry in entries)
    offline = [t.target for t in targets if not t.connected and not t.state.is_final]
    # Built from the store's own rows, not validated again: 10,000 targets, watched often.
    return DeploymentView.model_construct(
        id=deployment_id,
        description=found[0],
        state=_aggregate(entries),
        counts=dict(counts),
        targets=targets,
        offline=offline,
    )


async def stop_rest_if_failed(state: ServerState, task: TaskRecord) -> None:
    """Called when a task of a deployment ends: on failure, cancel the others if asked to."""
    if task.deployment_id is None or task.state not in FAILED:
        return
    found = await state.store.deployment(task.deployment_id)
    if found is None or not found[1]:
        return
    for other in await state.store.deployment_entries(task.deployment_id):
        if not other.state.is_final:
            await state.store.request_cancel(other.task_id, now())
            state.dispatcher.work_for(other.agent_id)
            state.dispatcher.task_changed(other.task_id)
    about("deployment_stopping", deployment_id=task.deployment_id, target=task.target).warning(
        "deployment {}: {} failed; stopping the rest", task.deployment_id, task.target
    )


def _in_environment(fan_out: FanOut) -> TaskSpec:
    payload = fan_out.task.deploy or fan_out.task.rollback
    if payload is None:
        return fan_out.task
    moved = payload.model_copy(update={"environment": fan_out.environment})
    return fan_out.task.model_copy(update={fan_out.task.kind: moved})


def _target(state: ServerState, entry: DeploymentEntry) -> DeploymentTarget:
    return DeploymentTarget.model_construct(
        target=entry.target, task_id=entry.task_id, state=entry.state, reason=entry.reason,
        connected=state.dispatcher.is_connected(entry.agent_id),
    )  # fmt: skip


def _aggregate(entries: list[DeploymentEntry]) -> Literal["running", "succeeded", "failed"]:
    if any(not entry.state.is_final for entry in entries):
        return "running"
    return "succeeded" if all(e.state == TaskState.SUCCEEDED for e in entries) else "failed"
