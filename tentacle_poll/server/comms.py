"""Handlers of the comms listener (mutual TLS): register, poll, accept, events, result."""

from __future__ import annotations

import asyncio
import random
import ssl

from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificate
from loguru import logger

from tentacle_poll.exceptions import StoreError
from tentacle_poll.logs import about, hide_secret
from tentacle_poll.protocol import routes
from tentacle_poll.protocol.models import (
    AcceptResponse,
    CertificateRequest,
    CertificateResponse,
    Envelope,
    EventsRequest,
    EventsResponse,
    PollRequest,
    PollResponse,
    RegisterRequest,
    RegisterResponse,
    ResultRequest,
)
from tentacle_poll.protocol.tokens import token_secret
from tentacle_poll.refusals import peer_of
from tentacle_poll.server.access import record
from tentacle_poll.server.deployments import stop_rest_if_failed
from tentacle_poll.server.dispatch import HeldPoll, wait_for_bell
from tentacle_poll.server.problems import Handler, ProblemError
from tentacle_poll.server.state import (
    STATE,
    ServerState,
    json_response,
    now,
    read_model,
    task_fields,
    task_view,
)
from tentacle_poll.server.task_rules import check_events, check_result
from tentacle_poll.server.vault import SealedValueError
from tentacle_poll.store import AgentRecord, ApiKeyRecord, NewAgent, TaskRecord
from tentacle_poll.tls import thumbprint_of_der


def add_comms_routes(app: web.Application) -> None:
    app.router.add_post(routes.REGISTER, register)
    app.router.add_post(routes.POLL, poll)
    app.router.add_post(routes.TASK_ACCEPT, accept)
    app.router.add_post(routes.TASK_EVENTS, events)
    app.router.add_post(routes.TASK_RESULT, result)
    app.router.add_post(routes.CERTIFICATE, rotate_certificate)
    app.on_response_prepare.append(_one_request_per_stranger)


async def _one_request_per_stranger(request: web.Request, response: web.StreamResponse) -> None:
    """A connection without a client certificate is closed after its answer (strangers.py)."""
    if peer_thumbprint(request) is None:
        response.force_close()
        response.headers["Connection"] = "close"  # the headers were made before this hook


async def register(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_model(request, RegisterRequest)  # first: a bad body uses up no token
    who, key = await _registration_credential(request, state)
    outside = set(body.environments) - set(key.environments) if key and key.environments else set()
    if key is not None and outside:
        detail = f"the key {key.name} may register targets in {', '.join(key.environments)} only"
        raise ProblemError(403, "environment not allowed", detail)
    thumbprint = _thumbprint_of_submitted(body.certificate_pem)
    replaced = await state.store.agent_by_name(body.name)
    new = NewAgent(
        name=body.name,
        thumbprint=thumbprint,
        certificate_pem=body.certificate_pem,
        environments=body.environments,
        roles=body.roles,
        tenants=body.tenants,
        tenant_tags=body.tenant_tags,
        agent_version=body.agent_version,
    )
    try:
        agent = await state.store.save_agent(new, body.replace, now())
    except StoreError as exc:
        raise ProblemError(409, "name or certificate already registered", str(exc)) from exc
    state.trust.add(body.certificate_pem.encode())
    if replaced is not None and replaced.thumbprint != thumbprint:
        # --replace: the old certificate is cut off now, before a task can be leased to it.
        state.cut_off(replaced.thumbprint, replaced.previous_thumbprint)
        await state.trust.remove(replaced.certificate_pem.encode())
    state.registrations_changed()
    await record(state, who, "target registered", agent.name, agent.thumbprint)
    about("target_registered", target=agent.name).info(
        "registered target {} ({}) with {}", agent.name, agent.thumbprint, who
    )
    answer = RegisterResponse(
        agent_id=agent.id,
        name=agent.name,
        thumbprint=thumbprint,
        server_thumbprint=state.thumbprint,
    )
    return json_response(answer)


async def poll(request: web.Request) -> web.Response:
    state = request.app[STATE]
    agent = await authorised_agent(request)
    body = await read_model(request, PollRequest)
    await state.seen(agent, body.agent_version, list(body.trusted_server_thumbprints), now())
    with state.dispatcher.polling(agent.id, body.free_slots + len(body.running)) as held:
        answer = await _hold_until_work(request, state, agent, body, held)
    # Held, it counted as alive; answered, it is seen now, not when the poll came in (a poll
    # held 30 s that brings a task would otherwise leave the agent looking long silent).
    state.heard_from(agent, now())
    return json_response(answer)


async def rotate_certificate(request: web.Request) -> web.Response:
    """A registered agent replaces its certificate; the old one works on for the overlap."""
    state = request.app[STATE]
    agent = await authorised_agent(request)
    body = await read_model(request, CertificateRequest)
    thumbprint = _thumbprint_of_submitted(body.certificate_pem)
    if thumbprint == agent.thumbprint:
        raise ProblemError(409, "same certificate", "send a new certificate to rotate to")
    overlap_until = now() + state.settings.certificate_overlap_seconds
    try:
        await state.store.rotate_certificate(
            agent.id, body.certificate_pem, thumbprint, overlap_until
        )
    except StoreError as exc:
        raise ProblemError(409, "certificate already registered", str(exc)) from exc
    state.trust.add(body.certificate_pem.encode())
    state.registrations_changed()
    await record(state, f"target {agent.name}", "certificate rotated", agent.name, thumbprint)
    about("target_certificate_rotated", target=agent.name).info(
        "target {} rotated its certificate to {}", agent.name, thumbprint
    )
    answer = CertificateResponse(
        thumbprint=thumbprint,
        previous_thumbprint=agent.thumbprint,
        previous_valid_until=overlap_until,
    )
    return json_response(answer)


async def accept(request: web.Request) -> web.Response:
    state = request.app[STATE]
    agent = await authorised_agent(request)
    now_talking(request, agent.id)
    task_id = request.match_info["task_id"]
    task = await state.store.accept_task(task_id, agent.id, now())
    if task is None:
        detail = f"task {task_id} is no longer leased to this agent; do not run it"
        raise ProblemError(409, "lease lost", detail)
    state.dispatcher.task_changed(task_id)
    return json_response(AcceptResponse(task_id=task.id, state=task.state))


async def events(request: web.Request) -> web.Response:
    state = request.app[STATE]
    task = await own_task(request)
    body = await read_model(request, EventsRequest)
    now_talking(request, task.agent_id)
    if not check_events(task, list(body.events)):
        return json_response(EventsResponse(acked_seq=task.last_seq))
    with state.metrics.store_timer("append_events"):
        acked = await state.store.append_events(task.id, list(body.events))
    fresh = (len(e.text.encode()) for e in body.events if e.seq > task.last_seq)
    state.metrics.output_bytes.inc(sum(fresh))
    state.dispatcher.task_changed(task.id)
    return json_response(EventsResponse(acked_seq=acked, cancel=task.cancel_requested))


async def result(request: web.Request) -> web.Response:
    state = request.app[STATE]
    task = await own_task(request)
    body = await read_model(request, ResultRequest)
    now_talking(request, task.agent_id)
    if not check_result(task, body):
        return json_response(task_view(task))  # a repeat: acknowledged, nothing changes
    if body.requeue:
        return json_response(task_view(await _requeue(state, task, body.reason)))
    with state.metrics.store_timer("finish_task"):
        finished = await state.store.finish_task(task.id, body, now())
    state.dispatcher.task_changed(task.id)
    state.dispatcher.result_received(task.agent_id)
    if finished.started_at is not None and finished.finished_at is not None:
        duration = finished.finished_at - finished.started_at
        state.metrics.task_duration.labels(finished.state.value).observe(duration)
    await stop_rest_if_failed(state, finished)
    reason = f": {body.reason}" if body.reason else ""
    about("task_ended", **task_fields(task)).info(
        "task {} on {} ended {}{}", task.id, task.target, body.state, reason
    )
    return json_response(task_view(finished))


async def _requeue(state: ServerState, task: TaskRecord, reason: str) -> TaskRecord:
    """The agent gives the task back unstarted: it waits in the queue again (or expires)."""
    again = await state.store.requeue_task(task.id, now())
    state.dispatcher.task_changed(task.id)
    state.dispatcher.result_received(task.agent_id)
    logger.info("task {} on {} given back unstarted ({}): {}", task.id, task.target, reason,
                "queued again" if again.state == "queued" else again.state)  # fmt: skip
    return again


def peer_thumbprint(request: web.Request) -> str | None:
    """The thumbprint of this connection's client certificate, if it sent one; worked out once
    per request (a poll needs it three times: authorisation, its hold, its answer)."""
    if PEER_THUMBPRINT not in request:
        der = _peer_certificate(request)
        request[PEER_THUMBPRINT] = thumbprint_of_der(der) if der else ""
    return request[PEER_THUMBPRINT] or None


def _peer_certificate(request: web.Request) -> bytes | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    return (
        ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) else None
    )


PEER_THUMBPRINT = web.RequestKey("peer_thumbprint", str)  # "": no client certificate
AGENT_ID = web.RequestKey("agent_id", str)  # a request that counts its agent as talking


def _certificate_withdrawn() -> ProblemError:
    return ProblemError(
        403,
        "certificate not registered",
        "this certificate was replaced or its target deleted while the poll was held",
    )


async def authorised_agent(request: web.Request) -> AgentRecord:
    """The registered agent behind this connection's client certificate, or 403."""
    state = request.app[STATE]
    thumbprint = peer_thumbprint(request)
    agent = await state.agent_for(thumbprint, now()) if thumbprint else None
    if agent is None:
        presented = f"certificate {thumbprint}" if thumbprint else "no client certificate"
        state.refusals.refused(
            "request:unregistered",
            f"comms port: refused {request.method} {request.path} from "
            f"{peer_of(request.transport)}: {presented} is not registered",
        )
        raise ProblemError(
            403,
            "certificate not registered",
            "register this agent first (`tentacle-poll register`)",
        )
    state.heard_from(agent, now())
    return agent


def now_talking(request: web.Request, agent_id: str) -> None:
    """From here until it is answered, the request counts its agent as talking: called once
    the body is in, so an agent frozen half-way through sending one is not."""
    request[AGENT_ID] = agent_id
    request.app[STATE].dispatcher.talking_to(agent_id)


@web.middleware
async def talking(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Ends what ``now_talking`` began (sweeper.py marks lost only agents that are silent
    and not talking), however the handler ends."""
    try:
        return await handler(request)
    finally:
        if AGENT_ID in request:
            request.app[STATE].dispatcher.done_talking(request[AGENT_ID])


async def _hold_until_work(
    request: web.Request, state: ServerState, agent: AgentRecord, body: PollRequest, held: HeldPoll
) -> PollResponse:
    hold = state.settings.hold_seconds
    if body.hold_seconds is not None:
        hold = min(hold, body.hold_seconds)
    deadline = asyncio.get_running_loop().time() + hold
    results_before = state.dispatcher.results_received(agent.id)
    thumbprint = peer_thumbprint(request)
    assert thumbprint is not None  # authorised_agent found the agent by it
    while not state.dispatcher.stopping:
        bell = state.dispatcher.agents.current(agent.id)
        if _client_gone(request):
            raise ProblemError(499, "client went away")
        if await state.agent_for(thumbprint, now()) is None:  # replaced or deleted meanwhile
            raise _certificate_withdrawn()
        if held.superseded:  # newer polls of this agent: answered empty, nothing leased
            return _answer(state, [], [])
        if state.nodes_untold(agent.id):  # a node joined or left: the agent hears it now
            return _answer(state, [], [], agent.id)
        leased, cancels = await _work_for(state, agent.id, body)
        remaining = deadline - asyncio.get_running_loop().time()
        # A poll with no free slot is answered once a result frees one: the agent then polls
        # again with it on the same connection, instead of abandoning this poll (and with it
        # the connection: a new TLS handshake every time all its slots were busy).
        results_now = state.dispatcher.results_received(agent.id)
        slot_freed = not body.free_slots and results_now != results_before
        if leased or cancels or slot_freed or remaining <= 0:
            return _answer(state, await _envelopes(state, leased), cancels, agent.id)
        await wait_for_bell(bell, remaining)
    raise _server_stopping()


def _answer(
    state: ServerState, envelopes: list[Envelope], cancels: list[str], agent_id: str = ""
) -> PollResponse:
    return PollResponse(
        envelopes=envelopes,
        cancels=cancels,
        hold_seconds=state.settings.hold_seconds,
        server_thumbprints=state.server_thumbprints(),
        nodes=state.tell_nodes(agent_id) if agent_id else state.node_urls(),
    )


async def _work_for(
    state: ServerState, agent_id: str, body: PollRequest
) -> tuple[list[TaskRecord], list[str]]:
    """Tasks to lease and cancels to deliver; skips the store for an agent known to have none."""
    if state.dispatcher.has_no_work(agent_id):
        return [], []
    mark = state.dispatcher.wake_mark(agent_id)
    with state.metrics.store_timer("lease_tasks"):
        leased = await state.store.lease_tasks(
            agent_id, body.free_slots, now(), state.settings.lease_seconds
        )
    cancels = await state.store.cancels_for(agent_id, list(body.running)) if body.running else []
    if body.free_slots > len(leased) and not cancels:
        state.dispatcher.no_work_for(agent_id, mark)  # until a submit, cancel or expiry says so
    return leased, cancels


async def _envelopes(state: ServerState, tasks: list[TaskRecord]) -> list[Envelope]:
    """The leased tasks as the agent gets them: the only place sensitive values are opened. A
    task whose values cannot be opened fails here, with the reason, and is not sent."""
    envelopes = []
    for task in tasks:
        state.metrics.dispatch_latency.observe(max(0.0, now() - task.created_at))
        try:
            envelopes.append(Envelope(task_id=task.id, spec=state.vault.open_spec(task.spec_json)))
        except SealedValueError as exc:
            failed = ResultRequest(state="failed", last_seq=0, reason=f"not sent: {exc}")
            await state.store.finish_task(task.id, failed, now())
            state.dispatcher.task_changed(task.id)
            about("task_failed", **task_fields(task)).error(
                "task {} on {} failed: {}", task.id, task.target, exc
            )
    return envelopes


def _server_stopping() -> ProblemError:
    error = ProblemError(503, "server stopping", "poll again after Retry-After seconds")
    # Spread the reconnect of every agent over a few seconds.
    error.headers["Retry-After"] = str(random.randint(1, 5))
    return error


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def own_task(request: web.Request) -> TaskRecord:
    agent = await authorised_agent(request)
    task = await request.app[STATE].store.get_task(request.match_info["task_id"])
    if task is None or task.agent_id != agent.id:
        raise ProblemError(404, "no such task", "this agent holds no task with that id")
    return task


async def _registration_credential(
    request: web.Request, state: ServerState
) -> tuple[str, ApiKeyRecord | None]:
    """(who registers, their key) for a valid API key (deploy or admin scope) or token."""
    api_key = request.headers.get(routes.API_KEY_HEADER)
    token = request.headers.get(routes.REGISTRATION_TOKEN_HEADER)
    hide_secret(api_key)
    hide_secret(token)
    key = await state.store.api_key(api_key, now()) if api_key else None
    if key is not None and key.scope == "read":
        detail = f"the key {key.name} has the read scope; registering needs deploy or admin"
        raise ProblemError(403, "key not allowed", detail)
    if key is not None:
        return key.name, key
    token_id = (
        await state.store.consume_registration_token(token_secret(token), now()) if token else None
    )
    if token_id is not None:
        return f"token {token_id}", None
    what = "an API key" if api_key else "a registration token" if token else "no credential"
    state.refusals.refused(
        "register:credential",
        f"comms port: refused a registration from {peer_of(request.transport)}: "
        f"{what} that is not valid (unknown, revoked, expired or already used)",
    )
    raise ProblemError(
        401,
        "registration refused",
        "the API key or registration token was not accepted (tokens work once and expire); "
        "create one with `tentacle-poll server api-key create` or `server token create`",
    )


def _thumbprint_of_submitted(pem: str) -> str:
    try:
        certificate = load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise ProblemError(
            400, "malformed request", "certificate_pem is not a certificate"
        ) from exc
    return thumbprint_of_der(certificate.public_bytes(Encoding.DER))
