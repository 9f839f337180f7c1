"""The server's periodic checks: expired leases back to the queue, queued tasks past their
deadline expired, silent agents' tasks lost.

A cut connection leaves no trace in a held poll; what shows it is an agent that stops polling.
An agent polls again within milliseconds of every answer, so one that has not been seen for
``agent_lost_seconds`` (default: one hold plus a margin) while not polling is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from loguru import logger

from tentacle_poll.exceptions import StorageFull, StoreUnavailable
from tentacle_poll.logs import about
from tentacle_poll.server.deployments import stop_rest_if_failed
from tentacle_poll.server.shortage import condition_of
from tentacle_poll.server.state import ServerState, task_fields
from tentacle_poll.store import AgentRecord
from tentacle_poll.tls import (
    certificate_expiry_fast,
    expiry_warning,
    load_identity,
    thumbprint_of_pem,
)


def sweep_interval(state: ServerState) -> float:
    return max(
        0.05, min(5.0, state.settings.agent_lost_seconds / 4, state.settings.lease_seconds / 2)
    )


async def sweep_forever(state: ServerState) -> None:
    what = "sweep (expire leases, record last-seen times)"
    await periodically(state, what, lambda: sweep_once(state), sweep_interval(state))


async def periodically(
    state: ServerState, what: str, work: Callable[[], Awaitable[object]], seconds: float
) -> None:
    """``work`` every ``seconds`` until the server stops; a full disk or a database away is
    reported (``what`` could not be done) and the next round tries again."""
    while not state.dispatcher.stopping:
        try:
            await work()
        except (OSError, StorageFull, StoreUnavailable) as exc:
            if condition_of(exc) is None:
                raise
            state.shortage.hit(what, exc)
        await asyncio.sleep(seconds)


def certificates_of(agents: list[AgentRecord]) -> list[bytes]:
    """Every agent's certificate, and the previous one of agents in a rotation overlap."""
    pems = []
    for agent in agents:
        if agent.certificate_pem:  # a listening target added by thumbprint has none yet
            pems.append(agent.certificate_pem.encode())
        if agent.previous_certificate_pem:
            pems.append(agent.previous_certificate_pem.encode())
    return pems


def warn_expiring_certificates(state: ServerState, agents: list[AgentRecord]) -> None:
    server_pem = load_identity(state.home.identity_folder).cert_pem
    warnings = [expiry_warning(certificate_expiry_fast(server_pem), "the server certificate")]
    for agent in [a for a in agents if a.certificate_pem]:
        expires = certificate_expiry_fast(agent.certificate_pem.encode())
        warnings.append(expiry_warning(expires, f"target {agent.name}'s certificate"))
    for warning in filter(None, warnings):
        logger.warning(warning)


async def end_overlaps(state: ServerState, now: float) -> None:
    """Rotated-out certificates whose overlap is over stop working: cut off, then untrusted."""
    expired = await state.store.expire_previous_certificates(now)
    if expired:
        state.cut_off(*(thumbprint_of_pem(pem.encode()) for pem in expired))
        await state.trust.remove(*(pem.encode() for pem in expired))


async def expire_tasks(state: ServerState, now: float) -> None:
    """Queued tasks past their deadline end ``expired``: a fan-out over offline targets ends."""
    for task in await state.store.expire_tasks(now):
        about("task_expired", **task_fields(task)).info(
            "task {} on {} expired: {}", task.id, task.target, task.reason
        )
        state.dispatcher.task_changed(task.id)
        state.dispatcher.work_for(task.agent_id)  # a later task of its serial may go now
        await stop_rest_if_failed(state, task)


async def sweep_once(state: ServerState) -> None:
    await state.flush_seen()
    now = time.time()
    for agent_id in await state.store.expire_leases(now):
        state.dispatcher.work_for(agent_id)
    await end_overlaps(state, now)
    await expire_tasks(state, now)
    silent_since = now - state.settings.agent_lost_seconds
    silent = [
        agent_id
        for agent_id in await state.store.silent_agents(silent_since)
        if not state.dispatcher.is_talking(agent_id)
    ]
    if not silent:
        return
    reason = f"agent lost: no poll for {state.settings.agent_lost_seconds:g} s"
    for task_id in await state.store.mark_lost(silent, reason, now):
        about("task_lost", task_id=task_id).warning("task {}: {}", task_id, reason)
        state.dispatcher.task_changed(task_id)
        lost = await state.store.get_task(task_id)
        if lost is not None:
            state.dispatcher.work_for(lost.agent_id)  # a later task of its serial may go now
            await stop_rest_if_failed(state, lost)
