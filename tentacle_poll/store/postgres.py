"""The PostgreSQL store: several server nodes share one database (docs/high-availability.md).

Every method is one statement or one transaction, so nodes never see each other's half-done
work. Leasing takes rows with ``FOR UPDATE SKIP LOCKED``: two nodes answering polls of the same
agent at once lease different tasks, never one twice; the serial rule (deploys of one package,
one at a time) holds because a task whose earlier sibling is locked, or not final, is skipped.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg

from tentacle_poll.exceptions import StoreError
from tentacle_poll.protocol.models import ResultRequest, TaskState
from tentacle_poll.store.base import (
    TARGET_GONE,
    AgentRecord,
    NewAgent,
    NewTask,
    TaskQuery,
    TaskRecord,
)
from tentacle_poll.store.operations import PgOperations
from tentacle_poll.store.pg_cluster import PgCluster
from tentacle_poll.store.pg_connection import described, open_pool, translated
from tentacle_poll.store.pg_parts import (
    PgBlobs,
    PgCredentials,
    PgDeployments,
    PgOutput,
    PgPackages,
    Row,
)
from tentacle_poll.store.pg_schema import LATEST, MIGRATION_LOCK, MIGRATIONS
from tentacle_poll.store.redaction import without_sensitive_values
from tentacle_poll.store.rows import (
    AGENT_COLUMNS,
    ROTATION_COLUMNS,
    TASK_COLUMNS,
    agent_from_row,
    new_task_id,
    task_from_row,
)
from tentacle_poll.store.sqlite import EXPIRED_REASON
from tentacle_poll.store.versions import SchemaState, check

TASK = f"SELECT {TASK_COLUMNS} FROM tasks t JOIN agents a ON a.id = t.agent_id"
AGENT = f"SELECT {AGENT_COLUMNS}, {ROTATION_COLUMNS} FROM agents"
LEASABLE = """
SELECT id FROM tasks AS t WHERE t.agent_id = $1 AND t.state = 'queued'
  AND (t.expires_at IS NULL OR t.expires_at > $2)
  AND (t.serial IS NULL OR NOT EXISTS (
    SELECT 1 FROM tasks AS e WHERE e.agent_id = t.agent_id AND e.serial = t.serial
      AND e.state IN ('queued', 'leased', 'running')
      AND (e.created_at < t.created_at OR (e.created_at = t.created_at AND e.id < t.id))))
ORDER BY t.created_at LIMIT $3 FOR UPDATE SKIP LOCKED
"""
# One round trip per poll: this agent's expired leases back to the queue (cancelled ones are
# left to the sweeper's expire_leases, which also erases their values), then the lease.
LEASE = f"""
WITH requeued AS (
  UPDATE tasks SET state = 'queued', leased_until = NULL
  WHERE agent_id = $1 AND state = 'leased' AND leased_until < $2 AND NOT cancel_requested),
picked AS ({LEASABLE}),
leased AS (
  UPDATE tasks SET state = 'leased', leased_until = $4 FROM picked WHERE tasks.id = picked.id
  RETURNING tasks.*)
SELECT {TASK_COLUMNS} FROM leased t JOIN agents a ON a.id = t.agent_id ORDER BY t.created_at
"""
# The usual accept and result, one round trip each; anything else takes the careful path.
ACCEPT = f"""
WITH started AS (
  UPDATE tasks SET state = 'running', started_at = $3, leased_until = NULL
  WHERE id = $1 AND agent_id = $2 AND state = 'leased' AND NOT cancel_requested RETURNING *)
SELECT {TASK_COLUMNS} FROM started t JOIN agents a ON a.id = t.agent_id
"""
FINISH = f"""
WITH ended AS (
  UPDATE tasks SET state = $2, exit_code = $3, reason = $4, finished_at = $5, leased_until = NULL
  WHERE id = $1 AND state IN ('queued', 'leased', 'running', 'lost') RETURNING *)
SELECT {TASK_COLUMNS} FROM ended t JOIN agents a ON a.id = t.agent_id
"""
CREATE_TASKS = """
INSERT INTO tasks (id, agent_id, spec_json, state, created_at, deployment_id, submitted_by,
  serial, expires_at)
SELECT id, agent_id, spec_json, 'queued', $8, deployment_id, submitted_by, serial, expires_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
  $7::float8[]) AS n(id, agent_id, spec_json, deployment_id, submitted_by, serial, expires_at)
"""
# A lease nobody accepted in time goes back to the queue (or ends, if cancelled).
END_LEASES = """
UPDATE tasks SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
  leased_until = NULL, finished_at = CASE WHEN cancel_requested THEN $1 ELSE NULL END
WHERE state = 'leased' AND leased_until < $1 AND ($2::text IS NULL OR agent_id = $2)
RETURNING id, agent_id, cancel_requested
"""


class PostgresStore(
    PgCredentials, PgPackages, PgDeployments, PgOutput, PgBlobs, PgCluster, PgOperations
):
    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.url = url
        self._pool = pool
        self.schema_change: tuple[int, int] | None = None  # (from, to) if migrated when opened

    @classmethod
    async def open(cls, url: str, migrate: bool = False) -> PostgresStore:
        store = cls(url, await open_pool(url))
        try:
            await store.migrate(only_if_asked=not migrate)
        except BaseException:
            await store.close()
            raise
        return store

    async def migrate(self, only_if_asked: bool = False) -> tuple[int, int]:
        """Applies what is missing, in order, under a lock; returns (from, to) versions."""
        async with self._transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            state = await self.schema_state(db)
            if not check(state, migrate=not only_if_asked):
                return state.found, state.found
            self.schema_change = (state.found, LATEST)
            for version in range(state.found, LATEST):
                await db.execute(MIGRATIONS[version])
                await db.execute("UPDATE schema_version SET version = $1", version + 1)
            return state.found, LATEST

    async def schema_state(self, db: asyncpg.Connection) -> SchemaState:
        found = 0
        if await db.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
            found = await db.fetchval("SELECT version FROM schema_version")
        return SchemaState(found, LATEST, described(self.url))

    async def close(self) -> None:
        await self.stop_listening()
        with contextlib.suppress(Exception):  # closing a pool whose database went away
            await self._pool.close()

    # --- the connection ------------------------------------------------------------------

    async def _one(self, sql: str, *args: object) -> Row | None:
        with translated(self.url):
            return await self._pool.fetchrow(sql, *args)

    async def _all(self, sql: str, *args: object) -> list[Row]:
        with translated(self.url):
            return list(await self._pool.fetch(sql, *args))

    async def _value(self, sql: str, *args: object) -> Any:
        with translated(self.url):
            return await self._pool.fetchval(sql, *args)

    async def _run(self, sql: str, *args: object) -> str:
        with translated(self.url):
            return str(await self._pool.execute(sql, *args))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        with translated(self.url):
            async with self._pool.acquire() as db, db.transaction():
                yield db

    # --- agents --------------------------------------------------------------------------

    async def save_agent(self, agent: NewAgent, replace: bool, now: float) -> AgentRecord:
        """Insert, or update a target of the same name (its tasks and history are kept)."""
        values = (
            agent.thumbprint, agent.certificate_pem, json.dumps(agent.environments),
            json.dumps(agent.roles), json.dumps(agent.tenants), json.dumps(agent.tenant_tags),
            agent.agent_version,
        )  # fmt: skip
        async with self._transaction() as db:
            existing = await _agent_on(db, "name = $1", agent.name)
            if existing and existing.thumbprint != agent.thumbprint and not replace:
                raise StoreError(
                    f"a target named {agent.name} is already registered with another "
                    "certificate; register (or `targets add`) with --replace to take the name over"
                )
            other = await _agent_on(db, "thumbprint = $1", agent.thumbprint)
            if other and other.name != agent.name:
                raise StoreError(f"this certificate is already registered as target {other.name}")
            if existing:
                await db.execute(
                    "UPDATE agents SET thumbprint = $1, certificate_pem = $2, environments = $3, "
                    "roles = $4, tenants = $5, tenant_tags = $6, agent_version = $7, "
                    "listening_url = $8 WHERE id = $9",
                    *values, agent.listening_url, existing.id,
                )  # fmt: skip
            else:
                await db.execute(
                    f"INSERT INTO agents ({AGENT_COLUMNS}) "
                    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
                    agent.name, *values, uuid.uuid4().hex, now, None, agent.listening_url,
                )  # fmt: skip
            found = await _agent_on(db, "name = $1", agent.name)
        assert found is not None
        return found

    async def agent_by_thumbprint(
        self, thumbprint: str, now: float | None = None
    ) -> AgentRecord | None:
        found = await self._agent("thumbprint = $1", thumbprint)
        if found is None and now is not None:
            found = await self._agent(
                "previous_thumbprint = $1 AND previous_valid_until > $2", thumbprint, now
            )
        return found

    async def agent_by_name(self, name: str) -> AgentRecord | None:
        return await self._agent("name = $1", name)

    async def list_agents(self) -> list[AgentRecord]:
        return [agent_from_row(row) for row in await self._all(f"{AGENT} ORDER BY name")]

    async def delete_agent(self, name: str) -> AgentRecord | None:
        async with self._transaction() as db:
            agent = await _agent_on(db, "name = $1", name)
            if agent is not None:  # its tasks and their output go with it (ON DELETE CASCADE)
                await db.execute("DELETE FROM agents WHERE id = $1", agent.id)
        return agent

    async def touch_agent(
        self, agent_id: str, agent_version: str, now: float, trusted: list[str] | None = None
    ) -> None:
        await self._run(
            "UPDATE agents SET last_seen = $1, agent_version = $2, "
            "trusted_server_thumbprints = COALESCE($3, trusted_server_thumbprints) WHERE id = $4",
            now, agent_version, json.dumps(trusted) if trusted is not None else None, agent_id,
        )  # fmt: skip

    async def touch_agents(self, seen: list[tuple[str, float, str]]) -> None:
        """Many agents in one statement: an array each of ids, times and versions."""
        if not seen:
            return
        ids, times, versions = zip(*seen, strict=True)
        await self._run(
            "UPDATE agents SET last_seen = GREATEST(COALESCE(last_seen, 0), s.at), "
            "agent_version = s.version FROM unnest($1::text[], $2::float8[], $3::text[]) "
            "AS s(id, at, version) WHERE agents.id = s.id",
            list(ids), list(times), list(versions),
        )  # fmt: skip

    async def rotate_certificate(
        self, agent_id: str, pem: str, thumbprint: str, overlap_until: float
    ) -> AgentRecord:
        async with self._transaction() as db:
            other = await _agent_on(db, "thumbprint = $1", thumbprint)
            if other is not None and other.id != agent_id:
                raise StoreError(f"this certificate is already registered as target {other.name}")
            await db.execute(
                "UPDATE agents SET previous_thumbprint = thumbprint, "
                "previous_certificate_pem = certificate_pem, previous_valid_until = $1, "
                "thumbprint = $2, certificate_pem = $3 WHERE id = $4 AND thumbprint != $2",
                overlap_until, thumbprint, pem, agent_id,
            )  # fmt: skip
            found = await _agent_on(db, "id = $1", agent_id)
        assert found is not None
        return found

    async def expire_previous_certificates(self, now: float) -> list[str]:
        rows = await self._all(
            "UPDATE agents AS a SET previous_thumbprint = NULL, previous_certificate_pem = NULL, "
            "previous_valid_until = NULL FROM (SELECT id, previous_certificate_pem AS pem "
            "FROM agents WHERE previous_valid_until <= $1 FOR UPDATE) AS old "
            "WHERE a.id = old.id RETURNING old.pem",
            now,
        )
        return [row[0] for row in rows]

    async def _agent(self, where: str, *values: object) -> AgentRecord | None:
        row = await self._one(f"{AGENT} WHERE {where}", *values)
        return agent_from_row(row) if row else None

    # --- tasks ---------------------------------------------------------------------------

    async def create_task(self, task: NewTask, now: float) -> TaskRecord:
        task_id = new_task_id(now)
        row = await self._one(
            "WITH made AS (INSERT INTO tasks (id, agent_id, spec_json, state, created_at, "
            "deployment_id, submitted_by, serial, expires_at) "
            "VALUES ($1,$2,$3,'queued',$4,$5,$6,$7,$8) RETURNING *) "
            f"SELECT {TASK_COLUMNS} FROM made t JOIN agents a ON a.id = t.agent_id",
            task_id, task.agent_id, task.spec_json, now, task.deployment_id,
            task.submitted_by, task.serial, task.expires_at,
        )  # fmt: skip
        assert row is not None  # the insert returns its row, or raises
        return task_from_row(row)

    async def create_tasks(self, tasks: list[NewTask], now: float) -> list[str]:
        """One statement, whatever the number: a column of values per field."""
        ids = [new_task_id(now) for _ in tasks]
        columns = [
            [t.agent_id for t in tasks], [t.spec_json for t in tasks],
            [t.deployment_id for t in tasks], [t.submitted_by for t in tasks],
            [t.serial for t in tasks], [t.expires_at for t in tasks],
        ]  # fmt: skip
        try:
            await self._run(CREATE_TASKS, ids, *columns, now)
        except asyncpg.ForeignKeyViolationError as exc:
            raise StoreError(TARGET_GONE) from exc
        return ids

    async def requeue_task(self, task_id: str, now: float) -> TaskRecord:
        async with self._transaction() as db:
            task = await _task_on(db, task_id, lock=True)
            if task.state not in (TaskState.LEASED, TaskState.RUNNING):
                return task
            if task.expires_at is not None and task.expires_at < now:
                await _end_on(db, task_id, TaskState.EXPIRED, EXPIRED_REASON, now)
                await db.execute("UPDATE tasks SET started_at = NULL WHERE id = $1", task_id)
            else:
                await db.execute(
                    "UPDATE tasks SET state = 'queued', leased_until = NULL, started_at = NULL "
                    "WHERE id = $1",
                    task_id,
                )
            return await _task_on(db, task_id)

    async def expire_tasks(self, now: float) -> list[TaskRecord]:
        async with self._transaction() as db:
            rows = await db.fetch(
                "SELECT id, spec_json FROM tasks WHERE state = 'queued' AND expires_at < $1 "
                "FOR UPDATE SKIP LOCKED",
                now,
            )
            for task_id, spec in rows:
                await db.execute(
                    "UPDATE tasks SET state = 'expired', finished_at = $1, reason = $2, "
                    "spec_json = $3 WHERE id = $4",
                    now, EXPIRED_REASON, without_sensitive_values(spec), task_id,
                )  # fmt: skip
            return [await _task_on(db, row[0]) for row in rows]

    async def get_task(self, task_id: str) -> TaskRecord | None:
        row = await self._one(f"{TASK} WHERE t.id = $1", task_id)
        return task_from_row(row) if row else None

    async def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        rows = await self._all(
            f"{TASK} WHERE ($1::text IS NULL OR a.name = $1) "
            "AND ($2::float8 IS NULL OR t.created_at >= $2) "
            "AND (cardinality($3::text[]) = 0 OR t.state = ANY($3)) "
            "ORDER BY t.created_at DESC LIMIT $4",
            query.target, query.since, list(query.states), query.limit,
        )  # fmt: skip
        return [task_from_row(row) for row in rows]

    async def lease_tasks(
        self, agent_id: str, limit: int, now: float, lease_seconds: float
    ) -> list[TaskRecord]:
        rows = await self._all(LEASE, agent_id, now, max(limit, 0), now + lease_seconds)
        return [task_from_row(row) for row in rows]

    async def accept_task(self, task_id: str, agent_id: str, now: float) -> TaskRecord | None:
        started = await self._one(ACCEPT, task_id, agent_id, now)
        if started is not None:
            return task_from_row(started)
        async with self._transaction() as db:
            row = await db.fetchrow(f"{TASK} WHERE t.id = $1 FOR UPDATE OF t", task_id)
            task = task_from_row(row) if row else None
            if task is None or task.agent_id != agent_id:
                return None
            if task.state == TaskState.RUNNING:
                return task  # a retried accept whose first answer was lost
            if task.state != TaskState.LEASED:
                return None
            if task.cancel_requested:
                await _end_on(db, task_id, TaskState.CANCELLED, "cancelled before it started", now)
                return None
            await db.execute(
                "UPDATE tasks SET state = 'running', started_at = $1, leased_until = NULL "
                "WHERE id = $2",
                now, task_id,
            )  # fmt: skip
            return await _task_on(db, task_id)

    async def request_cancel(self, task_id: str, now: float) -> TaskRecord | None:
        async with self._transaction() as db:
            row = await db.fetchrow(f"{TASK} WHERE t.id = $1 FOR UPDATE OF t", task_id)
            task = task_from_row(row) if row else None
            if task is None or task.state.is_final:
                return task
            if task.state == TaskState.QUEUED:
                await _end_on(db, task_id, TaskState.CANCELLED, "cancelled before it started", now)
            else:
                await db.execute("UPDATE tasks SET cancel_requested = TRUE WHERE id = $1", task_id)
            return await _task_on(db, task_id)

    async def cancels_for(self, agent_id: str, task_ids: list[str]) -> list[str]:
        rows = await self._all(
            "SELECT id FROM tasks WHERE agent_id = $1 AND cancel_requested "
            "AND state IN ('leased', 'running') AND id = ANY($2::text[])",
            agent_id, task_ids,
        )  # fmt: skip
        return [row[0] for row in rows]

    async def finish_task(self, task_id: str, result: ResultRequest, now: float) -> TaskRecord:
        """Idempotent: the first final state wins; "lost" is replaced by the real result."""
        row = await self._one(
            FINISH, task_id, str(result.state), result.exit_code, result.reason, now
        )
        if row is None:  # ended before (or no such task: StoreError)
            return await self._task(task_id)
        ended = task_from_row(row)
        erased = without_sensitive_values(ended.spec_json)
        if erased != ended.spec_json:
            await self._run("UPDATE tasks SET spec_json = $1 WHERE id = $2", erased, task_id)
            ended = replace(ended, spec_json=erased)
        return ended

    async def expire_leases(self, now: float) -> list[str]:
        async with self._transaction() as db:
            return sorted(await _end_leases_on(db, now, None))

    async def unfinished_specs(self) -> list[tuple[str, str]]:
        rows = await self._all(
            "SELECT id, spec_json FROM tasks WHERE state IN ('queued', 'leased', 'running')"
        )
        return [(row[0], row[1]) for row in rows]

    async def task_needs_blob(self, agent_id: str, sha256: str) -> bool:
        """As the SQLite store; ``sha256`` is 64 hex digits, checked by the caller."""
        row = await self._one(
            "SELECT 1 FROM tasks WHERE agent_id = $1 AND state IN ('leased', 'running') "
            "AND spec_json LIKE $2 LIMIT 1",
            agent_id, f'%"sha256":"{sha256}"%',
        )  # fmt: skip
        return row is not None

    async def replace_spec(self, task_id: str, spec_json: str) -> None:
        await self._run("UPDATE tasks SET spec_json = $1 WHERE id = $2", spec_json, task_id)

    async def silent_agents(self, seen_before: float) -> list[str]:
        rows = await self._all(
            "SELECT DISTINCT a.id FROM agents a JOIN tasks t ON t.agent_id = a.id "
            "WHERE t.state = 'running' AND COALESCE(a.last_seen, 0) < $1",
            seen_before,
        )
        return [row[0] for row in rows]

    async def mark_lost(self, agent_ids: list[str], reason: str, now: float) -> list[str]:
        async with self._transaction() as db:
            rows = await db.fetch(
                "SELECT id FROM tasks WHERE agent_id = ANY($1::text[]) AND state = 'running' "
                "FOR UPDATE SKIP LOCKED",
                agent_ids,
            )
            for (task_id,) in rows:
                await _end_on(db, task_id, TaskState.LOST, reason, now)
            return [row[0] for row in rows]

    async def _task(self, task_id: str) -> TaskRecord:
        row = await self._one(f"{TASK} WHERE t.id = $1", task_id)
        if row is None:
            raise StoreError(f"no task {task_id}")
        return task_from_row(row)


async def _agent_on(db: asyncpg.Connection, where: str, *values: Any) -> AgentRecord | None:
    row = await db.fetchrow(f"{AGENT} WHERE {where}", *values)
    return agent_from_row(row) if row else None


async def _task_on(db: asyncpg.Connection, task_id: str, lock: bool = False) -> TaskRecord:
    row = await db.fetchrow(f"{TASK} WHERE t.id = $1{' FOR UPDATE OF t' if lock else ''}", task_id)
    if row is None:
        raise StoreError(f"no task {task_id}")
    return task_from_row(row)


async def _end_on(
    db: asyncpg.Connection, task_id: str, state: TaskState, reason: str, now: float
) -> None:
    """The task ends in ``state``, keeping no sensitive value (it will never be sent again)."""
    spec = await db.fetchval("SELECT spec_json FROM tasks WHERE id = $1", task_id)
    await db.execute(
        "UPDATE tasks SET state = $1, reason = $2, finished_at = $3, leased_until = NULL, "
        "spec_json = $4 WHERE id = $5",
        state.value, reason, now, without_sensitive_values(spec), task_id,
    )  # fmt: skip


async def _end_leases_on(db: asyncpg.Connection, now: float, agent_id: str | None) -> set[str]:
    """Ends expired leases (of one agent, or all); returns the agents whose tasks moved."""
    rows = await db.fetch(END_LEASES, now, agent_id)
    for task_id, _, cancelled in rows:
        if cancelled:
            spec = await db.fetchval("SELECT spec_json FROM tasks WHERE id = $1", task_id)
            await db.execute(
                "UPDATE tasks SET spec_json = $1 WHERE id = $2",
                without_sensitive_values(spec), task_id,
            )  # fmt: skip
    return {row[1] for row in rows}
