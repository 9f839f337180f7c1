"""Handlers of the admin API (HTTP, loopback by default): targets, tasks, tokens."""

from __future__ import annotations

import asyncio

from aiohttp import web
from loguru import logger

from tentacle_poll.exceptions import StoreError
from tentacle_poll.logs import hide_secret
from tentacle_poll.protocol import routes
from tentacle_poll.protocol.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyView,
    AuditEntryView,
    EventsPage,
    SubmitTask,
    TaskSpec,
    TokenCreated,
    TokenView,
)
from tentacle_poll.protocol.tokens import make_token
from tentacle_poll.server.access import audit, caller, require_environment, require_target
from tentacle_poll.server.dispatch import wait_for_bell
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.state import STATE, ServerState, json_response, now, read_model, task_view
from tentacle_poll.store import AgentRecord, ApiKeyRecord
from tentacle_poll.store.credentials import token_id_of

MAX_FOLLOW_WAIT = 60.0
DEFAULT_TOKEN_TTL = 24 * 3600.0


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(routes.ADMIN_HEALTH, health)
    app.router.add_get(routes.ADMIN_TARGETS, list_targets)
    app.router.add_delete(routes.ADMIN_TARGET, delete_target)
    app.router.add_get(routes.ADMIN_TASKS, list_tasks)
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


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"status": "ok", "server_thumbprint": state.thumbprint})


async def list_targets(request: web.Request) -> web.Response:
    state = request.app[STATE]
    views = [state.target_view(agent) for agent in await state.store.list_agents()]
    return web.json_response([v.model_dump(mode="json") for v in views])


async def delete_target(request: web.Request) -> web.Response:
    state = request.app[STATE]
    agent = await state.store.delete_agent(request.match_info["name"])
    if agent is None:
        raise ProblemError(404, "no such target", f"no target named {request.match_info['name']}")
    state.forget_agents()  # first: routes refuse it from now on, before the trust rebuild
    await state.trust.remove(agent.certificate_pem.encode())
    await audit(request, "target deleted", agent.name, agent.thumbprint)
    logger.info("removed target {}; its certificate is no longer trusted", agent.name)
    return json_response(state.target_view(agent))


async def submit_task(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_model(request, SubmitTask)
    agent = await state.store.agent_by_name(body.target)
    if agent is None:
        detail = f"no target named {body.target}; list them with `tentacle-poll targets`"
        raise ProblemError(404, "no such target", detail)
    require_target(request, agent)
    spec = await resolved_spec(
        state, TaskSpec.model_validate(body.model_dump(exclude={"target"})), agent
    )
    payload = spec.deploy or spec.rollback
    if payload is not None and payload.environment is not None:
        require_environment(request, payload.environment)
    sealed = state.vault.seal_spec(spec.model_dump(mode="json"))
    who = caller(request).name
    task = await state.store.create_task(agent.id, sealed, now(), submitted_by=who)
    state.dispatcher.work_for(agent.id)
    await audit(request, "task submitted", task.id, f"{spec.kind} on {agent.name}")
    logger.info("queued task {} for {} (key {})", task.id, agent.name, who)
    return json_response(task_view(task), status=201)


async def resolved_spec(state: ServerState, spec: TaskSpec, agent: AgentRecord) -> TaskSpec:
    """Fills in what the agent needs and only the server knows: the package's digest, size and
    format, and the environment (the target's first one unless given; it must be one of its)."""
    if spec.send_file is not None and not state.blob(spec.send_file.sha256).exists():
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


async def list_tasks(request: web.Request) -> web.Response:
    state = request.app[STATE]
    limit = _int_query(request, "limit", 50, 1, 1000)
    tasks = await state.store.list_tasks(request.query.get("target"), limit)
    return web.json_response([task_view(t).model_dump(mode="json") for t in tasks])


async def show_task(request: web.Request) -> web.Response:
    task = await request.app[STATE].task_or_404(request.match_info["task_id"])
    return json_response(task_view(task))


async def task_events(request: web.Request) -> web.Response:
    """Lines after ``after``; with ``wait`` held until new lines arrive or the task ends."""
    state = request.app[STATE]
    task_id = request.match_info["task_id"]
    after = _int_query(request, "after", 0, 0, 2**62)
    limit = _int_query(request, "limit", 1000, 1, 10000)
    wait = _float_query(request, "wait", 0.0, 0.0, MAX_FOLLOW_WAIT)
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
    state = request.app[STATE]
    task = await state.task_or_404(request.match_info["task_id"])
    agent = await state.store.agent_by_name(task.target)
    if agent is not None:
        require_target(request, agent)
    updated = await state.store.request_cancel(task.id, now())
    assert updated is not None
    await audit(request, "task cancelled", task.id, task.target)
    state.dispatcher.work_for(task.agent_id)
    state.dispatcher.tasks.ring(task.id)
    logger.info("cancel requested for task {} ({})", task.id, updated.state)
    return json_response(task_view(updated))


async def create_token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ttl = _float_query(request, "ttl", DEFAULT_TOKEN_TTL, 60.0, 30 * 24 * 3600.0)
    secret = await state.store.create_registration_token(now() + ttl, now(), caller(request).name)
    token = make_token(state.thumbprint, secret)
    hide_secret(token)
    token_id = token_id_of(secret)
    await audit(request, "token created", token_id, f"expires in {ttl:g} s")
    return json_response(TokenCreated(token=token, expires_at=now() + ttl, id=token_id), 201)


async def list_tokens(request: web.Request) -> web.Response:
    tokens = await request.app[STATE].store.list_registration_tokens(now())
    views = [TokenView(id=t.id, created_at=t.created_at, expires_at=t.expires_at,
                       created_by=t.created_by) for t in tokens]  # fmt: skip
    return web.json_response([v.model_dump(mode="json") for v in views])


async def revoke_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    if not await request.app[STATE].store.revoke_registration_token(token_id):
        raise ProblemError(404, "no such token", f"no unused token {token_id}")
    await audit(request, "token revoked", token_id)
    return web.json_response({"revoked": token_id})


async def list_keys(request: web.Request) -> web.Response:
    keys = await request.app[STATE].store.list_api_keys()
    return web.json_response([key_view(k).model_dump(mode="json") for k in keys])


async def create_key(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_model(request, ApiKeyCreate)
    try:
        secret = await state.store.create_api_key(
            body.name, body.scope, list(body.environments), caller(request).name
        )
    except StoreError as exc:
        raise ProblemError(409, "key name taken", str(exc)) from exc
    hide_secret(secret)
    await audit(request, "key created", body.name, _scope_text(body.scope, body.environments))
    created = await state.store.api_key(secret, now())
    assert created is not None
    view = ApiKeyCreated(**key_view(created).model_dump(), key=secret)
    return json_response(view, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await request.app[STATE].store.revoke_api_key(name):
        raise ProblemError(404, "no such key", f"no API key named {name}")
    await audit(request, "key revoked", name)
    return web.json_response({"revoked": name})


async def list_audit(request: web.Request) -> web.Response:
    since = _float_query(request, "since", 0.0, 0.0, 2**40)
    limit = _int_query(request, "limit", 1000, 1, 100_000)
    entries = await request.app[STATE].store.audit(since, request.query.get("key"), limit)
    views = [AuditEntryView(at=e.at, key=e.key, action=e.action, subject=e.subject,
                            detail=e.detail) for e in entries]  # fmt: skip
    return web.json_response([v.model_dump(mode="json") for v in views])


def key_view(key: ApiKeyRecord) -> ApiKeyView:
    return ApiKeyView(
        name=key.name,
        scope=key.scope,
        environments=key.environments,
        created_at=key.created_at,
        last_used=key.last_used,
        created_by=key.created_by,
    )


def _scope_text(scope: str, environments: list[str]) -> str:
    return f"{scope} in {', '.join(environments)}" if environments else scope


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    return int(_float_query(request, name, default, low, high))


def _float_query(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ProblemError(400, "malformed request", f"{name} must be a number") from exc
    if not low <= value <= high:
        raise ProblemError(400, "malformed request", f"{name} must be between {low:g} and {high:g}")
    return value
