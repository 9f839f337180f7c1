"""Fan-out: one task per target matching an environment and roles (and tenants, tenant tags),
grouped as a deployment with an aggregate state; optionally stopping the rest on a failure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from aiohttp import web

from tentacle_poll.exceptions import StoreError
from tentacle_poll.logs import about
from tentacle_poll.protocol import routes
from tentacle_poll.protocol.models import (
    DeploymentState,
    DeploymentSummaryView,
    DeploymentTarget,
    DeploymentView,
    FanOut,
    RollbackSpec,
    TaskSpec,
    TaskState,
)
from tentacle_poll.server.access import audit, caller, require_environment
from tentacle_poll.server.admin import resolved_spec
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.query import int_query
from tentacle_poll.server.queueing import queue_tasks
from tentacle_poll.server.state import STATE, ServerState, json_response, now, read_model
from tentacle_poll.store import AgentRecord, DeploymentEntry, TaskRecord
from tentacle_poll.store.base import DeploymentSummary

FAILED = {TaskState.FAILED, TaskState.TIMED_OUT, TaskState.LOST, TaskState.EXPIRED}
MAX_LISTED = 1000


def add_deployment_routes(app: web.Application) -> None:
    app.router.add_post(routes.ADMIN_DEPLOYMENTS, create_deployment)
    app.router.add_get(routes.ADMIN_DEPLOYMENTS, list_deployments)
    app.router.add_get(routes.ADMIN_DEPLOYMENT, show_deployment)
    app.router.add_post(routes.ADMIN_DEPLOYMENT_ROLLBACK, roll_back_deployment)


def matches(agent: AgentRecord, fan_out: FanOut) -> bool:
    """In the environment, with any of the roles, and any of the tenants and tags if given."""
    return (
        fan_out.environment in agent.environments
        and (not fan_out.roles or bool(set(fan_out.roles) & set(agent.roles)))
        and (not fan_out.tenants or bool(set(fan_out.tenants) & set(agent.tenants)))
        and (not fan_out.tenant_tags or bool(set(fan_out.tenant_tags) & set(agent.tenant_tags)))
    )


async def create_deployment(request: web.Request) -> web.Response:
    deployment_id = await deploy(request, await read_model(request, FanOut))
    return json_response(await deployment_view(request.app[STATE], deployment_id), status=201)


async def matching_targets(state: ServerState, fan_out: FanOut) -> list[AgentRecord]:
    """The targets ``fan_out`` reaches; a 404 that names the selection when there is none."""
    targets = [a for a in await state.store.list_agents() if matches(a, fan_out)]
    if not targets:
        roles = f" with any of the roles {', '.join(fan_out.roles)}" if fan_out.roles else ""
        detail = f"no target in {fan_out.environment}{roles}"
        raise ProblemError(404, "no matching targets", detail)
    return targets


async def deploy(request: web.Request, fan_out: FanOut) -> str:
    """Queues one task per matching target as the caller's key, all or none; the admin API's
    and the portal's way to run on an environment and roles. Returns the deployment's id."""
    targets = await matching_targets(request.app[STATE], fan_out)
    require_environment(request, fan_out.environment)
    task = _in_environment(fan_out)
    roles = ", ".join(fan_out.roles) or "all roles"
    description = f"{_what(task)} to {fan_out.environment} ({roles})"
    planned = [(agent, task) for agent in targets]
    return await _queue_deployment(request, planned, description, fan_out.stop_on_first_failure,
                                   fan_out.expires_seconds)  # fmt: skip


async def roll_back_deployment(request: web.Request) -> web.Response:
    deployment_id = await roll_back(request, request.match_info["deployment_id"])
    return json_response(await deployment_view(request.app[STATE], deployment_id), status=201)


async def roll_back(request: web.Request, deployment_id: str) -> str:
    """A new deployment rolling the package of ``deployment_id`` back on the same targets (to
    the release each had before). Returns the new deployment's id."""
    state = request.app[STATE]
    tasks = await state.store.deployment_tasks(deployment_id)
    deployed = TaskSpec.model_validate_json(tasks[0].spec_json).deploy if tasks else None
    if deployed is None or deployed.environment is None:
        detail = f"{deployment_id} deployed no package (or is gone); only a package rolls back"
        raise ProblemError(400, "nothing to roll back", detail)
    require_environment(request, deployed.environment)
    by_id = {agent.id: agent for agent in await state.store.list_agents()}
    targets = [by_id[task.agent_id] for task in tasks if task.agent_id in by_id]
    if not targets:
        raise ProblemError(404, "no matching targets", f"every target of {deployment_id} is gone")
    back = RollbackSpec(package_id=deployed.package_id, environment=deployed.environment)
    task = TaskSpec(kind="rollback", rollback=back)
    description = f"rollback of {deployment_id} ({deployed.package_id} in {deployed.environment})"
    return await _queue_deployment(request, [(a, task) for a in targets], description, False, None)


async def _queue_deployment(
    request: web.Request, planned: list[tuple[AgentRecord, TaskSpec]], description: str,
    stop_on_failure: bool, expires_seconds: float | None,
) -> str:  # fmt: skip
    state = request.app[STATE]
    resolved = [(agent, await resolved_spec(state, task, agent)) for agent, task in planned]
    deployment_id = await state.store.create_deployment(description, stop_on_failure, now())
    try:
        await queue_tasks(state, resolved, expires_seconds, caller(request).name, deployment_id)
    except StoreError as exc:
        raise ProblemError(409, "targets changed", f"{exc}; nothing was queued, try again") from exc
    await audit(
        request, "deployment created", deployment_id, f"{description}, {len(planned)} targets"
    )
    about("deployment_created", deployment_id=deployment_id).info(
        "deployment {}: {} on {} targets", deployment_id, description, len(planned)
    )
    return deployment_id


async def list_deployments(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 50, 1, MAX_LISTED)
    listed = await request.app[STATE].store.list_deployments(limit)
    return web.json_response([summary_view(s).model_dump(mode="json") for s in listed])


def summary_view(summary: DeploymentSummary) -> DeploymentSummaryView:
    return DeploymentSummaryView(
        id=summary.id, description=summary.description, created_at=summary.created_at,
        state=aggregate_of(summary.counts), counts=summary.counts,
    )  # fmt: skip


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
        state=aggregate_of(counts),
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


def _what(task: TaskSpec) -> str:
    """A deployment's task in a few words: "deploy web 2.0.0", "bash script", "health"."""
    if task.deploy is not None:
        return f"deploy {task.deploy.package_id} {task.deploy.version}"
    if task.script is not None:
        return f"{task.script.syntax} script"
    return task.kind


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


def aggregate_of(counts: Mapping[str, int]) -> DeploymentState:
    """Running while any task has not ended; then succeeded only if every one succeeded."""
    if any(not TaskState(state).is_final for state, count in counts.items() if count):
        return "running"
    succeeded = all(state == TaskState.SUCCEEDED for state, count in counts.items() if count)
    return "succeeded" if succeeded else "failed"
