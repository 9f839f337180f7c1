"""Handlers of the admin API (HTTP, loopback by default): targets, tasks, tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import web
from pydantic import BaseModel

from tentacle_poll.exceptions import StoreError
from tentacle_poll.logs import about
from tentacle_poll.protocol import routes
from tentacle_poll.protocol.models import (
    AddListeningTarget,
    ApiKeyCreate,
    EventsPage,
    SubmitTask,
    TaskSpec,
)
from tentacle_poll.server.access import (
    audit,
    caller,
    credentials,
    require_environment,
    require_target,
)
from tentacle_poll.server.dispatch import wait_for_bell
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.query import float_query, int_query
from tentacle_poll.server.queueing import queue_task
from tentacle_poll.server.state import STATE, ServerState, json_response, now, read_model, task_view
from tentacle_poll.store import AgentRecord, NewAgent, TaskRecord

MAX_FOLLOW_WAIT = 60.0
DEFAULT_TOKEN_TTL = 24 * 3600.0


def add_admin_routes(app: web.Application) -> None:
    app.router.add_post(routes.ADMIN_TARGETS, add_listening_target)
    app.router.add_delete(routes.ADMIN_TARGET, delete_target)
    app.router.add_post(routes.ADMIN_TASKS, submit_task)
    app.router.add_get(routes.ADMIN_TASK, show_task)
    app.router.add_get(routes.ADMIN_TASK_EVENTS, task_events)
    app.router.add_post(routes.ADMIN_TASK_CANCEL, cancel_task)
    app.router.add_post(routes.ADMIN_TOKENS, create_token)
    app.router.add_get(routes.ADMIN_TOKENS, list_tokens)
    app.router.add_delete(routes.ADMIN_TOKEN, revoke_token)
    app.router.add_get(routes.ADMIN_KEYS, list_keys)
    app.router.add_post(routes.ADMIN_KEYS, create_key)
    app.router.add_delete(routes.ADMIN_KEY, revoke_key)
    app.router.add_get(routes.ADMIN_AUDIT, list_audit)


async def add_listening_target(request: web.Request) -> web.Response:
    """A target in listening mode: this server connects to it (server/listening.py)."""
    state = request.app[STATE]
    body = await read_model(request, AddListeningTarget)
    for environment in body.environments:
        require_environment(request, environment)
    if body.thumbprint in state.server_thumbprints():
        raise ProblemError(422, "not an agent's thumbprint", (
            f"{body.thumbprint} is this server's own certificate; give the agent's, which "
            "`tentacle-poll listen` prints on the target (or `tentacle-poll show-thumbprint`)"
        ))  # fmt: skip
    before = await state.store.agent_by_name(body.name)
    kept_certificate = (
        before.certificate_pem if before and before.thumbprint == body.thumbprint else ""
    )
    new = NewAgent(
        name=body.name, thumbprint=body.thumbprint, certificate_pem=kept_certificate,
        environments=body.environments, roles=body.roles, tenants=body.tenants,
        tenant_tags=body.tenant_tags, listening_url=body.listening_url,
    )  # fmt: skip
    try:
        agent = await state.store.save_agent(new, body.replace, now())
    except StoreError as exc:
        raise ProblemError(409, "name or certificate already registered", str(exc)) from exc
    if before is not None and before.thumbprint != agent.thumbprint:
        await state.stop_trusting(before, "replaced")
    state.registrations_changed()
    assert state.listening is not None  # set at startup, before any request
    state.listening.watch(agent)
    await audit(request, "target added", agent.name, f"listening at {agent.listening_url}, "
                f"certificate {agent.thumbprint}")  # fmt: skip
    return json_response(state.target_view(agent), status=201)


async def delete_target(request: web.Request) -> web.Response:
    state = request.app[STATE]
    agent = await state.store.delete_agent(request.match_info["name"])
    if agent is None:
        raise ProblemError(404, "no such target", f"no target named {request.match_info['name']}")
    await state.stop_trusting(agent, "deleted")
    await audit(request, "target deleted", agent.name, agent.thumbprint)
    return json_response(state.target_view(agent))


async def submit_task(request: web.Request) -> web.Response:
    task = await submit(request, await read_model(request, SubmitTask))
    return json_response(task_view(task), status=201)


async def submit(request: web.Request, body: SubmitTask) -> TaskRecord:
    """Queues ``body`` as the caller's key (its environments respected): the admin API's and
    the portal's way to run a task on one target."""
    state = request.app[STATE]
    agent = await state.store.agent_by_name(body.target)
    if agent is None:
        detail = f"no target named {body.target}; list them with `tentacle-poll targets`"
        raise ProblemError(404, "no such target", detail)
    require_target(request, agent)
    asked = TaskSpec.model_validate(body.model_dump(exclude={"target", "expires_seconds"}))
    spec = await resolved_spec(state, asked, agent)
    payload = spec.deploy or spec.rollback
    if payload is not None and payload.environment is not None:
        require_environment(request, payload.environment)
    who = caller(request).name
    task = await queue_task(state, agent, spec, body.expires_seconds, who)
    await audit(request, "task submitted", task.id, f"{spec.kind} on {agent.name}")
    about("task_queued", task_id=task.id, target=agent.name).info(
        "queued task {} for {} (key {})", task.id, agent.name, who
    )
    return task


async def resolved_spec(state: ServerState, spec: TaskSpec, agent: AgentRecord) -> TaskSpec:
    """Fills in what the agent needs and only the server knows: the package's digest, size and
    format, and the environment (the target's first one unless given; it must be one of its)."""
    if spec.send_file is not None and not await state.blobs.local(spec.send_file.sha256):
        detail = f"no file with sha256 {spec.send_file.sha256}; upload it with PUT /api/files"
        raise ProblemError(404, "no such file", detail)
    payload = spec.deploy or spec.rollback
    if payload is None:
        return spec
    environment = payload.environment or agent.environments[0]
    if environment not in agent.environments:
        detail = f"{agent.name} is in {', '.join(agent.environments)}, not {environment}"
        raise ProblemError(400, "wrong environment", detail)
    update: dict[str, object] = {"environment": environment}
    if spec.deploy is not None:
        package = await state.store.get_package(spec.deploy.package_id, spec.deploy.version)
        if package is None:
            detail = f"no package {spec.deploy.package_id} {spec.deploy.version}; upload it first"
            raise ProblemError(404, "no such package", detail)
        update |= {"sha256": package.sha256, "size": package.size, "format": package.format}
    return spec.model_copy(update={spec.kind: payload.model_copy(update=update)})


async def show_task(request: web.Request) -> web.Response:
    task = await request.app[STATE].task_or_404(request.match_info["task_id"])
    return json_response(task_view(task))


async def task_events(request: web.Request) -> web.Response:
    """Lines after ``after``; with ``wait`` held until new lines arrive or the task ends."""
    state = request.app[STATE]
    task_id = request.match_info["task_id"]
    after = int_query(request, "after", 0, 0, 2**62)
    limit = int_query(request, "limit", 1000, 1, 10000)
    wait = float_query(request, "wait", 0.0, 0.0, MAX_FOLLOW_WAIT)
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        bell = state.dispatcher.tasks.current(task_id)
        task = await state.task_or_404(task_id)  # before the lines: an ended task's page that
        lines = await state.store.events_after(task_id, after, limit)  # is not full is its last
        remaining = deadline - asyncio.get_running_loop().time()
        if lines or task.state.is_final or remaining <= 0 or state.dispatcher.stopping:
            return json_response(EventsPage(task=task_view(task), events=lines))
        await wait_for_bell(bell, remaining)


async def cancel_task(request: web.Request) -> web.Response:
    return json_response(task_view(await cancel(request, request.match_info["task_id"])))


async def cancel(request: web.Request, task_id: str) -> TaskRecord:
    """Asks for ``task_id`` to be cancelled, as the caller's key (its environments respected)."""
    state = request.app[STATE]
    task = await state.task_or_404(task_id)
    agent = await state.store.agent_by_name(task.target)
    if agent is not None:
        require_target(request, agent)
    updated = await state.store.request_cancel(task.id, now())
    assert updated is not None
    await audit(request, "task cancelled", task.id, task.target)
    state.dispatcher.work_for(task.agent_id)
    state.dispatcher.task_changed(task.id)
    about("task_cancel_requested", task_id=task.id, target=task.target).info(
        "cancel requested for task {} ({})", task.id, updated.state
    )
    return updated


async def create_token(request: web.Request) -> web.Response:
    ttl = float_query(request, "ttl", DEFAULT_TOKEN_TTL, 60.0, 30 * 24 * 3600.0)
    return json_response(await credentials(request).create_token(ttl), status=201)


async def list_tokens(request: web.Request) -> web.Response:
    return _json_list(await credentials(request).tokens())


async def revoke_token(request: web.Request) -> web.Response:
    await credentials(request).revoke_token(request.match_info["token_id"])
    return web.json_response({"revoked": request.match_info["token_id"]})


async def list_keys(request: web.Request) -> web.Response:
    return _json_list(await credentials(request).keys())


async def create_key(request: web.Request) -> web.Response:
    body = await read_model(request, ApiKeyCreate)
    return json_response(await credentials(request).create_key(body), status=201)


async def revoke_key(request: web.Request) -> web.Response:
    await credentials(request).revoke_key(request.match_info["name"])
    return web.json_response({"revoked": request.match_info["name"]})


async def list_audit(request: web.Request) -> web.Response:
    since = float_query(request, "since", 0.0, 0.0, 2**40)
    limit = int_query(request, "limit", 1000, 1, 100_000)
    return _json_list(await credentials(request).audit(since, request.query.get("key"), limit))


def _json_list(models: Sequence[BaseModel]) -> web.Response:
    return web.json_response([m.model_dump(mode="json") for m in models])
