"""The `Store` contract, run against both stores: SQLite in a folder, and PostgreSQL in a schema
of the machine's real database. What one store does, the other must do alike."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tentacle_poll.exceptions import StoreError
from tentacle_poll.protocol.models import Event, PackageView, ResultRequest, TaskState
from tentacle_poll.store import AuditEntry, DeploymentEntry, NewAgent, NewTask, Store
from tentacle_poll.store.base import AgentQuery, Prunable, TaskQuery
from tentacle_poll.store.blobs import DatabaseBlobs
from tentacle_poll.store.opening import open_store
from tentacle_poll.store.pg_schema import MIGRATIONS
from tentacle_poll.store.postgres import PostgresStore
from tentacle_poll.store.versions import SchemaTooNew, SchemaTooOld
from tentacle_poll.tls import generate_identity

from .conftest import postgresql_schema

NOW = 1_800_000_000.0
SECRET_SPEC = '{"kind":"script","variables":[{"name":"P","value":"hunter2","sensitive":true}]}'


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with contextlib.AsyncExitStack() as stack:
        url = ""
        if request.param == "postgresql":
            url = await stack.enter_async_context(postgresql_schema())
        opened, _, _ = await open_store(url, tmp_path, migrate=False)
        yield opened
        await opened.close()


def new_agent(name: str, thumbprint: str | None = None) -> NewAgent:
    pem = generate_identity(name).cert_pem.decode()
    return NewAgent(name, thumbprint or name.ljust(64, "0")[:64], pem, ["Test"], ["web"])


async def queued(store: Store, agent_id: str, at: float = NOW, **extra: object) -> str:
    spec = str(extra.pop("spec", '{"kind":"script"}'))
    task = await store.create_task(NewTask(agent_id, spec, **extra), at)  # type: ignore[arg-type]
    return task.id


@contextlib.asynccontextmanager
async def two_nodes(pg_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Two stores on one database, as two server nodes see it."""
    nodes = [await PostgresStore.open(pg_url), await PostgresStore.open(pg_url)]
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.close()


async def test_agents_are_saved_found_replaced_and_deleted(store: Store) -> None:
    web1 = await store.save_agent(new_agent("web1", "a" * 64), replace=False, now=NOW)
    assert (await store.agent_by_thumbprint("a" * 64)) == web1
    with pytest.raises(StoreError, match="already registered with another certificate"):
        await store.save_agent(new_agent("web1", "b" * 64), replace=False, now=NOW)
    with pytest.raises(StoreError, match="already registered as target web1"):
        await store.save_agent(new_agent("web2", "a" * 64), replace=False, now=NOW)
    replaced = await store.save_agent(new_agent("web1", "b" * 64), replace=True, now=NOW)
    assert replaced.id == web1.id and replaced.thumbprint == "b" * 64
    task_id = await queued(store, web1.id)
    await store.append_events(task_id, [Event(seq=1, stream="stdout", text="x", ts=NOW)])
    assert (await store.delete_agent("web1")) is not None
    assert await store.get_task(task_id) is None
    assert await store.events_after(task_id, 0, 10) == []
    assert await store.list_agents() == []


async def test_a_rotated_certificate_works_until_its_overlap_ends(store: Store) -> None:
    agent = await store.save_agent(new_agent("web1", "a" * 64), replace=False, now=NOW)
    await store.rotate_certificate(
        agent.id, generate_identity("new").cert_pem.decode(), "c" * 64, NOW + 60
    )
    assert (await store.agent_by_thumbprint("a" * 64, NOW + 30)) is not None
    assert (await store.agent_by_thumbprint("a" * 64, NOW + 61)) is None
    expired = await store.expire_previous_certificates(NOW + 61)
    assert expired == [agent.certificate_pem]
    assert await store.expire_previous_certificates(NOW + 62) == []


async def test_a_task_goes_queued_leased_running_and_ends_once(store: Store) -> None:
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    task_id = await queued(store, agent.id, spec=SECRET_SPEC)
    [leased] = await store.lease_tasks(agent.id, 4, NOW, 30)
    assert leased.id == task_id and leased.state == TaskState.LEASED
    assert await store.lease_tasks(agent.id, 4, NOW, 30) == []
    assert (await store.accept_task(task_id, agent.id, NOW)).state == TaskState.RUNNING
    assert (await store.accept_task(task_id, agent.id, NOW)).state == TaskState.RUNNING
    assert await store.accept_task(task_id, "someone-else", NOW) is None
    done = ResultRequest(state="succeeded", exit_code=0, last_seq=0)
    ended = await store.finish_task(task_id, done, NOW + 1)
    assert ended.state == TaskState.SUCCEEDED and "hunter2" not in ended.spec_json
    again = ResultRequest(state="failed", exit_code=1, last_seq=0)
    assert (await store.finish_task(task_id, again, NOW + 2)).state == TaskState.SUCCEEDED


async def test_an_unaccepted_lease_returns_to_the_queue_and_a_cancelled_one_ends(
    store: Store,
) -> None:
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    first, second = await queued(store, agent.id), await queued(store, agent.id)
    await store.lease_tasks(agent.id, 2, NOW, 30)
    await store.request_cancel(second, NOW)
    assert await store.cancels_for(agent.id, [first, second]) == [second]
    assert await store.expire_leases(NOW + 31) == [agent.id]
    assert (await store.get_task(first)).state == TaskState.QUEUED  # type: ignore[union-attr]
    assert (await store.get_task(second)).state == TaskState.CANCELLED  # type: ignore[union-attr]


async def test_tasks_of_one_serial_are_leased_one_at_a_time_in_order(store: Store) -> None:
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    ids = [await queued(store, agent.id, NOW + n, serial="package:app") for n in range(3)]
    other = await queued(store, agent.id)
    leased = await store.lease_tasks(agent.id, 10, NOW, 30)
    assert {t.id for t in leased} == {ids[0], other}
    await store.accept_task(ids[0], agent.id, NOW)
    await store.finish_task(ids[0], ResultRequest(state="succeeded", last_seq=0), NOW)
    assert [t.id for t in await store.lease_tasks(agent.id, 10, NOW, 30)] == [ids[1]]


async def test_deadlines_expire_queued_tasks_and_requeue_ends_a_late_one(store: Store) -> None:
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    late = await queued(store, agent.id, expires_at=NOW + 10, spec=SECRET_SPEC)
    given_back = await queued(store, agent.id, expires_at=NOW + 100)
    await store.lease_tasks(agent.id, 1, NOW, 30)  # the older one: ``late``
    assert [t.id for t in await store.expire_tasks(NOW + 20)] == []  # leased: not expired
    assert (await store.requeue_task(late, NOW + 20)).state == TaskState.EXPIRED
    assert "hunter2" not in (await store.get_task(late)).spec_json  # type: ignore[union-attr]
    assert [t.id for t in await store.expire_tasks(NOW + 200)] == [given_back]


async def test_silent_agents_running_tasks_are_lost_until_their_result_comes(store: Store) -> None:
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    task_id = await queued(store, agent.id)
    await store.lease_tasks(agent.id, 1, NOW, 30)
    await store.accept_task(task_id, agent.id, NOW)
    await store.touch_agents([(agent.id, NOW, "1.0")])
    assert await store.silent_agents(NOW + 1) == [agent.id]
    assert await store.mark_lost([agent.id], "agent lost", NOW + 1) == [task_id]
    real = ResultRequest(state="succeeded", exit_code=0, last_seq=0)
    assert (await store.finish_task(task_id, real, NOW + 2)).state == TaskState.SUCCEEDED


def _batches(draw: st.DrawFn, lines: int) -> list[list[Event]]:
    """The lines 1..lines as blocks, sent in batches that overlap, repeat and arrive shuffled."""
    batches = []
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.integers(1, lines))
        end = draw(st.integers(start, min(lines, start + 8)))
        cut = draw(st.integers(start, end))
        pieces = [(start, cut), (cut + 1, end)] if cut < end else [(start, end)]
        batches.append([_block(a, b) for a, b in pieces])
    batches.append([_block(1, lines)])  # the agent's last resend covers everything
    return draw(st.permutations(batches))


def _block(first: int, last: int) -> Event:
    text = "\n".join(f"line {n}" for n in range(first, last + 1))
    return Event(seq=first, stream="stdout", text=text, ts=NOW, lines=last - first + 1)


@st.composite
def output_batches(draw: st.DrawFn) -> list[list[Event]]:
    return _batches(draw, draw(st.integers(1, 20)))


@hypothesis_settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=output_batches())
async def test_each_line_is_stored_once_in_order_however_batches_overlap(
    store: Store, batches: list[list[Event]]
) -> None:
    agent = await store.agent_by_name("out") or await store.save_agent(
        new_agent("out"), replace=False, now=NOW
    )
    task_id = await queued(store, agent.id)
    for batch in batches:
        await store.append_events(task_id, batch)
    lines = max(e.last_seq for batch in batches for e in batch)
    stored = await store.events_after(task_id, 0, 1000)
    assert [e.text for e in stored] == [f"line {n}" for n in range(1, lines + 1)]
    assert (await store.get_task(task_id)).last_seq == lines  # type: ignore[union-attr]


async def test_keys_tokens_and_the_audit_trail(store: Store) -> None:
    key = await store.create_api_key("ops", scope="deploy", environments=["Prod"], now=NOW)
    found = await store.api_key(key, NOW)
    assert found is not None and found.scope == "deploy" and found.environments == ["Prod"]
    with pytest.raises(StoreError, match="exists"):
        await store.create_api_key("ops")
    assert await store.revoke_api_key("ops") and not await store.revoke_api_key("ops")
    assert await store.api_key(key, NOW) is None
    token = await store.create_registration_token(NOW + 60, NOW, "ops")
    assert len(await store.list_registration_tokens(NOW)) == 1
    assert await store.consume_registration_token(token, NOW) is not None
    assert await store.consume_registration_token(token, NOW) is None
    await store.record(AuditEntry(NOW, "ops", "target deleted", "web1"))
    assert [e.subject for e in await store.audit(NOW - 1, "ops", 10)] == ["web1"]
    assert await store.audit(NOW - 1, "nobody", 10) == []


async def test_packages_and_deployments(store: Store) -> None:
    package = PackageView(
        package_id="app", version="1.0", sha256="a" * 64, size=3, format="zip", uploaded_at=NOW
    )
    assert await store.add_package(package) == package
    assert await store.add_package(package) == package  # the same bytes again: fine
    with pytest.raises(StoreError, match="other content"):
        await store.add_package(package.model_copy(update={"sha256": "b" * 64}))
    assert await store.package_uses("a" * 64) == 1
    assert await store.delete_package("app", "1.0") == package
    assert await store.package_uses("a" * 64) == 0
    deployment = await store.create_deployment("release 7", True, NOW)
    assert await store.deployment(deployment) == ("release 7", True, NOW)
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    task_id = await queued(store, agent.id, deployment_id=deployment)
    assert [t.id for t in await store.deployment_tasks(deployment)] == [task_id]
    entry = DeploymentEntry("web1", task_id, agent.id, TaskState.QUEUED, "")
    assert await store.deployment_entries(deployment) == [entry]


async def test_a_deployment_is_queued_whole_or_not_at_all(store: Store) -> None:
    agents = [await store.save_agent(new_agent(f"web{i}"), False, NOW) for i in range(3)]
    deployment = await store.create_deployment("fan-out", False, NOW)
    tasks = [
        NewTask(a.id, f'{{"n":{i}}}', deployment, "ops", "s", NOW + 60)
        for i, a in enumerate(agents)
    ]
    ids = await store.create_tasks(tasks, NOW)
    stored = {t.id: t for t in await store.deployment_tasks(deployment)}
    assert set(stored) == set(ids) and len(set(ids)) == 3
    for task_id, agent in zip(ids, agents, strict=True):
        task = stored[task_id]
        assert (task.agent_id, task.state, task.submitted_by) == (agent.id, TaskState.QUEUED, "ops")
        assert (task.created_at, task.expires_at, task.deployment_id) == (NOW, NOW + 60, deployment)
    with pytest.raises(StoreError, match="deleted while its task was being queued"):
        await store.create_tasks([NewTask(agents[0].id, "{}"), NewTask("no-such-agent", "{}")], NOW)
    assert (
        len(await store.list_tasks(TaskQuery(limit=100))) == 3
    )  # the first one was not kept either


async def test_deployments_are_listed_newest_first_with_their_tasks_by_state(
    store: Store,
) -> None:
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    older = await store.create_deployment("deploy app 1.0 to Test", False, NOW - 10)
    await ended(store, agent.id, NOW - 10, deployment_id=older)
    await queued(store, agent.id, NOW - 10, deployment_id=older)
    newer = await store.create_deployment("bash script to Test", False, NOW)
    emptied = await store.create_deployment("pruned long ago", False, NOW - 20)
    listed = await store.list_deployments(10)
    assert [(d.id, d.counts) for d in listed] == [
        (newer, {}), (older, {"succeeded": 1, "queued": 1}), (emptied, {}),
    ]  # fmt: skip
    assert (listed[1].description, listed[1].created_at) == ("deploy app 1.0 to Test", NOW - 10)
    assert [d.id for d in await store.list_deployments(1)] == [newer]


async def ended(store: Store, agent_id: str, at: float, **extra: object) -> str:
    task_id = await queued(store, agent_id, at, **extra)
    await store.lease_tasks(agent_id, 10, at, 30)
    await store.accept_task(task_id, agent_id, at)
    await store.append_events(task_id, [Event(seq=1, stream="stdout", text="x", ts=at)])
    await store.finish_task(task_id, ResultRequest(state="succeeded", last_seq=1), at)
    return task_id


async def test_counts_filters_and_the_write_probe(store: Store) -> None:
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    other = await store.save_agent(new_agent("web2"), replace=False, now=NOW)
    old = await ended(store, agent.id, NOW - 100)
    waiting = await queued(store, other.id, NOW - 50)
    assert await store.task_counts() == {"succeeded": 1, "queued": 1}
    assert await store.oldest_queued_at() == NOW - 50
    assert [t.id for t in await store.list_tasks(TaskQuery(limit=10, states=("queued",)))] == [
        waiting
    ]
    assert [t.id for t in await store.list_tasks(TaskQuery(limit=10, since=NOW - 60))] == [waiting]
    assert [
        t.id for t in await store.list_tasks(TaskQuery("web1", 10, ("succeeded", "failed")))
    ] == [old]
    assert await store.list_tasks(TaskQuery("web1", 10, ("queued",))) == []
    await store.probe_write()  # a real write: no error on a healthy database


async def test_targets_are_paged_by_name_and_filtered_by_label(store: Store) -> None:
    for i in range(7):
        labels = NewAgent(
            f"web{i}", f"{i}".ljust(64, "0"), generate_identity("x").cert_pem.decode(),
            ["Production" if i % 2 else "Test"], ["web", "db"] if i < 3 else ["web"],
            [f"tenant{i % 3}"],
        )  # fmt: skip
        await store.save_agent(labels, replace=False, now=NOW)
    first = await store.agents_page(AgentQuery(limit=3))
    rest = await store.agents_page(AgentQuery(after=first[-1].name, limit=10))
    assert [a.name for a in first + rest] == [f"web{i}" for i in range(7)]
    production_db = await store.agents_page(AgentQuery(environment="Production", role="db"))
    assert [a.name for a in production_db] == ["web1"]
    assert [a.name for a in await store.agents_page(AgentQuery(tenant="tenant0"))] == [
        "web0", "web3", "web6",
    ]  # fmt: skip
    assert await store.agents_page(AgentQuery(role="Production")) == [], "labels are per column"
    assert await store.agents_page(AgentQuery(environment="Prod")) == [], "whole labels only"
    assert [a.name for a in await store.agents_page(AgentQuery(search="eb5"))] == ["web5"]
    assert await store.agents_page(AgentQuery(search="%")) == [], "no wildcards in a search"
    assert await store.agents_page(AgentQuery(search="web_")) == [], "no wildcards in a search"


async def test_retention_prunes_old_ended_tasks_and_their_deployments_in_batches(
    store: Store,
) -> None:
    agent = await store.save_agent(new_agent("web1"), replace=False, now=NOW)
    deployment = await store.create_deployment("old release", False, NOW - 1000)
    old = [await ended(store, agent.id, NOW - 1000, deployment_id=deployment) for _ in range(5)]
    recent = await ended(store, agent.id, NOW - 10)
    still_queued = await queued(store, agent.id, NOW - 1000)  # old, but not ended: kept
    cutoff = NOW - 500
    assert await store.prunable(cutoff) == Prunable(tasks=5, deployments=1)
    removed = [await store.prune(cutoff, 2) for _ in range(5)]
    assert removed == [2, 2, 1, 1, 0]  # tasks in batches, then the emptied deployment
    assert [await store.get_task(task_id) for task_id in old] == [None] * 5
    assert await store.events_after(old[0], 0, 10) == []
    assert await store.deployment(deployment) is None
    assert {t.id for t in await store.list_tasks(TaskQuery(limit=10))} == {recent, still_queued}
    assert len(await store.events_after(recent, 0, 10)) == 1


async def test_two_nodes_leasing_at_once_never_lease_a_task_twice(pg_url: str) -> None:
    """Two stores on one database, as two nodes: 40 concurrent leases of 200 tasks."""
    async with two_nodes(pg_url) as nodes:
        agent = await nodes[0].save_agent(new_agent("web1"), replace=False, now=NOW)
        ids = {await queued(nodes[0], agent.id) for _ in range(200)}
        leases = [
            nodes[n % 2].lease_tasks(agent.id, random.randint(1, 10), NOW, 30) for n in range(40)
        ]
        leased = [t.id for got in await asyncio.gather(*leases) for t in got]
        assert len(leased) == len(set(leased)) and set(leased) <= ids
        remaining = await nodes[1].lease_tasks(agent.id, 1000, NOW, 30)
        assert sorted(leased + [t.id for t in remaining]) == sorted(ids)


async def test_stored_bytes_reach_every_node_and_leave_with_a_delete(
    pg_url: str, tmp_path: Path
) -> None:
    async with two_nodes(pg_url) as nodes:
        blobs = [DatabaseBlobs(n, tmp_path / f"node{i}") for i, n in enumerate(nodes)]
        for blob in blobs:
            blob.folder.mkdir()
        data = random.randbytes(3 * 1024 * 1024 + 5)  # four chunks, the last one short
        upload = blobs[0].folder / ".upload"
        upload.write_bytes(data)
        await blobs[0].keep(upload, "f" * 64)
        served = await blobs[1].local("f" * 64)
        assert served is not None and served.read_bytes() == data
        await blobs[0].forget("f" * 64)
        assert await blobs[1].local("f" * 64) is None and not served.exists()


async def test_postgresql_schema_versions_are_migrated_only_when_asked(pg_url: str) -> None:
    db = await asyncpg.connect(pg_url)
    try:
        await db.execute(MIGRATIONS[0] + "UPDATE schema_version SET version = 1;")
        with pytest.raises(SchemaTooOld, match="server migrate"):
            await PostgresStore.open(pg_url)
        migrated = await PostgresStore.open(pg_url, migrate=True)
        assert migrated.schema_change == (1, len(MIGRATIONS))
        await migrated.close()
        await db.execute("UPDATE schema_version SET version = 99")
        with pytest.raises(SchemaTooNew, match="newer"):
            await PostgresStore.open(pg_url, migrate=True)
    finally:
        await db.close()


async def test_batches_retried_through_two_nodes_at_once_store_each_line_once(pg_url: str) -> None:
    """The same lines sent concurrently through two nodes (an agent retrying through another
    node while the first still stores its batch): each line stored once, the end right."""
    async with two_nodes(pg_url) as nodes:
        agent = await nodes[0].save_agent(new_agent("web1"), replace=False, now=NOW)
        task_id = await queued(nodes[0], agent.id)
        batches = [[_block(start, min(start + 9, 200))] for start in range(1, 201, 5)]
        sends = [nodes[n % 2].append_events(task_id, batch) for n, batch in enumerate(batches)]
        sends += [nodes[n % 2].append_events(task_id, b) for n, b in enumerate(reversed(batches))]
        await asyncio.gather(*sends)
        stored = await nodes[1].events_after(task_id, 0, 1000)
        assert [e.text for e in stored] == [f"line {n}" for n in range(1, 201)]
        assert (await nodes[0].get_task(task_id)).last_seq == 200  # type: ignore[union-attr]


async def test_nodes_silent_for_long_are_forgotten_and_live_ones_listed(pg_url: str) -> None:
    store = await PostgresStore.open(pg_url)
    try:
        await store.heartbeat("old", "https://old:10943", NOW - 90_000, NOW - 90_000)
        await store.heartbeat("new", "https://new:10943", NOW - 5, NOW)
        assert [n for n, _ in await store.live_nodes(NOW - 10)] == ["new"]
        await store.forget_nodes(NOW - 86_400)
        assert [n for n, _ in await store.live_nodes(0)] == ["new"]
    finally:
        await store.close()
