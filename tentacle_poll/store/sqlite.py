"""The embedded SQLite store.

Calls run on the event loop's thread: with WAL and ``synchronous=NORMAL`` each statement takes
tens of microseconds, cheaper than a hop to a thread pool. A PostgreSQL store for several server
nodes would implement the same ``Store`` interface with a natively async driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

from tentacle_poll.exceptions import StoreError
from tentacle_poll.protocol.models import Event, ResultRequest, TaskState
from tentacle_poll.store.base import (
    TARGET_GONE,
    AgentRecord,
    NewAgent,
    NewTask,
    TaskQuery,
    TaskRecord,
)
from tentacle_poll.store.credentials import SqliteCredentials
from tentacle_poll.store.deployments import SqliteDeployments
from tentacle_poll.store.operations import SqliteOperations
from tentacle_poll.store.output import BLOCK_COLUMNS, OutputLog
from tentacle_poll.store.packages import SqlitePackages
from tentacle_poll.store.redaction import without_sensitive_values
from tentacle_poll.store.rows import (
    AGENT_COLUMNS,
    ROTATION_COLUMNS,
    TASK_COLUMNS,
    agent_from_row,
    new_task_id,
    task_from_row,
)
from tentacle_poll.store.schema import (
    LATEST,
    OLDER_OUTPUT_TABLES,
    PRAGMAS,
    attach_output,
    older_output_tables,
    output_paths,
    version_of,
)
from tentacle_poll.store.schema import migrate as migrate_schema
from tentacle_poll.store.space import SpaceAwareConnection
from tentacle_poll.store.versions import SchemaState, check

ACTIVE = ("leased", "running")
MAX_SEQ = 2**63 - 1
TOUCH_BATCH = 250
MOVE_BATCH = 256  # lines of an older store moved to the output files per write
EXPIRED_REASON = "its target did not take it before its deadline (offline?); never delivered"
# Queued tasks an agent may lease now, oldest first: not past their deadline, and none with an
# earlier task of the same serial (deploys of one package) that is not final yet.
LEASABLE = """
SELECT id FROM tasks AS t WHERE t.agent_id = ?1 AND t.state = 'queued'
  AND (t.expires_at IS NULL OR t.expires_at > ?2)
  AND (t.serial IS NULL OR NOT EXISTS (
    SELECT 1 FROM tasks AS e WHERE e.agent_id = t.agent_id AND e.serial = t.serial
      AND e.state IN ('queued', 'leased', 'running')
      AND (e.created_at < t.created_at OR (e.created_at = t.created_at AND e.id < t.id))))
ORDER BY t.created_at LIMIT ?3
"""


def _event_of_older_row(row: tuple[str, int, str, str, float, int]) -> Event:
    _, seq, stream, text, ts, lines = row
    return Event(seq=seq, stream=stream, text=text, ts=ts, lines=lines)


def _chunks(events: Iterator[Event], size: int) -> Iterator[list[Event]]:
    while chunk := list(itertools.islice(events, size)):
        yield chunk


class SqliteStore(SqliteCredentials, SqlitePackages, SqliteDeployments, SqliteOperations):
    def __init__(self, path: Path, migrate: bool = False) -> None:
        """Opens the database; one of an earlier schema version only with ``migrate``
        (SchemaTooOld otherwise), one of a later version never (SchemaTooNew)."""
        try:
            self._db = sqlite3.connect(path, isolation_level=None, factory=SpaceAwareConnection)
            self._db.executescript(PRAGMAS)
            found = version_of(self._db)
            migrating = check(SchemaState(found, LATEST, str(path)), migrate)
            # (from, to) when migrations ran now; from 0 for a database made now
            self.schema_change = (found, LATEST) if migrating else None
            if migrating:
                migrate_schema(self._db)
            attach_output(self._db, path)
            self._output = OutputLog(*output_paths(path))
            if migrating:
                self._move_older_output()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from exc

    def _move_older_output(self) -> None:
        """Moves the lines an older version kept in SQLite to the output files, task by task."""
        for table in older_output_tables(self._db):
            rows = self._db.execute(f"{OLDER_OUTPUT_TABLES[table]} ORDER BY task_id, seq")
            for task_id, group in itertools.groupby(rows, key=lambda row: str(row[0])):
                for chunk in _chunks(map(_event_of_older_row, group), MOVE_BATCH):
                    self._output.append_now(task_id, chunk)
            self._db.execute(f"DROP TABLE {table}")

    async def close(self) -> None:
        self._output.close()
        self._db.close()

    # --- agents --------------------------------------------------------------------------

    async def save_agent(self, agent: NewAgent, replace: bool, now: float) -> AgentRecord:
        """Insert, or update a target of the same name (its tasks and history are kept)."""
        existing = await self.agent_by_name(agent.name)
        if existing and existing.thumbprint != agent.thumbprint and not replace:
            raise StoreError(
                f"a target named {agent.name} is already registered with another certificate; "
                "register (or `targets add`) with --replace to take the name over"
            )
        other = await self.agent_by_thumbprint(agent.thumbprint)
        if other and other.name != agent.name:
            raise StoreError(f"this certificate is already registered as target {other.name}")
        values = (
            agent.thumbprint,
            agent.certificate_pem,
            json.dumps(agent.environments),
            json.dumps(agent.roles),
            json.dumps(agent.tenants),
            json.dumps(agent.tenant_tags),
            agent.agent_version,
        )
        if existing:
            self._db.execute(
                "UPDATE agents SET thumbprint = ?, certificate_pem = ?, environments = ?, "
                "roles = ?, tenants = ?, tenant_tags = ?, agent_version = ?, listening_url = ? "
                "WHERE id = ?",
                (*values, agent.listening_url, existing.id),
            )
        else:
            self._db.execute(
                f"INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (agent.name, *values, uuid.uuid4().hex, now, None, agent.listening_url),
            )
        found = await self.agent_by_name(agent.name)
        assert found is not None
        return found

    async def agent_by_thumbprint(
        self, thumbprint: str, now: float | None = None
    ) -> AgentRecord | None:
        """The agent with this certificate, or with it as the previous one still in overlap."""
        found = self._one_agent("thumbprint = ?", thumbprint)
        if found is None and now is not None:
            found = self._one_agent(
                "previous_thumbprint = ? AND previous_valid_until > ?", thumbprint, now
            )
        return found

    async def agent_by_name(self, name: str) -> AgentRecord | None:
        return self._one_agent("name = ?", name)

    async def list_agents(self) -> list[AgentRecord]:
        rows = self._db.execute(
            f"SELECT {AGENT_COLUMNS}, {ROTATION_COLUMNS} FROM agents ORDER BY name"
        ).fetchall()
        return [agent_from_row(row) for row in rows]

    async def delete_agent(self, name: str) -> AgentRecord | None:
        agent = await self.agent_by_name(name)
        if agent is not None:
            rows = self._db.execute("SELECT id FROM tasks WHERE agent_id = ?", (agent.id,))
            task_ids = [row[0] for row in rows]
            self._db.execute("DELETE FROM agents WHERE id = ?", (agent.id,))
            await self._output.delete(task_ids)  # another database: no cascade reaches it
        return agent

    async def touch_agent(
        self, agent_id: str, agent_version: str, now: float, trusted: list[str] | None = None
    ) -> None:
        self._db.execute(
            "UPDATE agents SET last_seen = ?, agent_version = ?, "
            "trusted_server_thumbprints = COALESCE(?, trusted_server_thumbprints) WHERE id = ?",
            (now, agent_version, json.dumps(trusted) if trusted is not None else None, agent_id),
        )

    async def touch_agents(self, seen: list[tuple[str, float, str]]) -> None:
        """(agent id, last seen, agent version) for many agents, TOUCH_BATCH to a transaction
        with the event loop free in between: 2,000 in one go held every poll answer for
        12-14 ms (measured at 10,000 agents), TOUCH_BATCH for about 2."""
        rows = [(at, version, agent_id) for agent_id, at, version in seen]
        for start in range(0, len(rows), TOUCH_BATCH):
            if start:
                await asyncio.sleep(0)
            with self._transaction():
                self._db.executemany(
                    "UPDATE agents SET last_seen = ?, agent_version = ? WHERE id = ?",
                    rows[start : start + TOUCH_BATCH],
                )

    async def rotate_certificate(
        self, agent_id: str, pem: str, thumbprint: str, overlap_until: float
    ) -> AgentRecord:
        """The new certificate becomes current; the old one stays valid until overlap_until."""
        other = await self.agent_by_thumbprint(thumbprint)
        if other is not None and other.id != agent_id:
            raise StoreError(f"this certificate is already registered as target {other.name}")
        self._db.execute(
            "UPDATE agents SET previous_thumbprint = thumbprint, "
            "previous_certificate_pem = certificate_pem, previous_valid_until = ?, "
            "thumbprint = ?, certificate_pem = ? WHERE id = ? AND thumbprint != ?",
            (overlap_until, thumbprint, pem, agent_id, thumbprint),
        )
        found = self._one_agent("id = ?", agent_id)
        assert found is not None
        return found

    async def expire_previous_certificates(self, now: float) -> list[str]:
        """Ends overlap windows that are over; returns the certificates no longer trusted."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT previous_certificate_pem FROM agents WHERE previous_valid_until <= ?",
                (now,),
            ).fetchall()
            self._db.execute(
                "UPDATE agents SET previous_thumbprint = NULL, previous_certificate_pem = NULL, "
                "previous_valid_until = NULL WHERE previous_valid_until <= ?",
                (now,),
            )
            return [row[0] for row in rows]

    def _one_agent(self, where: str, *values: object) -> AgentRecord | None:
        row = self._db.execute(
            f"SELECT {AGENT_COLUMNS}, {ROTATION_COLUMNS} FROM agents WHERE {where}", values
        )
        found = row.fetchone()
        return agent_from_row(found) if found else None

    # --- tasks ---------------------------------------------------------------------------

    async def create_task(self, task: NewTask, now: float) -> TaskRecord:
        (task_id,) = await self.create_tasks([task], now)
        return self._task(task_id)

    async def create_tasks(self, tasks: list[NewTask], now: float) -> list[str]:
        ids = [new_task_id(now) for _ in tasks]
        with self._transaction(), _target_gone_named():
            self._db.executemany(
                "INSERT INTO tasks (id, agent_id, spec_json, state, created_at, deployment_id, "
                "submitted_by, serial, expires_at) VALUES (?,?,?,'queued',?,?,?,?,?)",
                [(task_id, task.agent_id, task.spec_json, now, task.deployment_id,
                  task.submitted_by, task.serial, task.expires_at)
                 for task_id, task in zip(ids, tasks, strict=True)],
            )  # fmt: skip
        return ids

    async def requeue_task(self, task_id: str, now: float) -> TaskRecord:
        with self._transaction():
            task = self._task(task_id)
            if task.state not in (TaskState.LEASED, TaskState.RUNNING):
                return task
            if task.expires_at is not None and task.expires_at < now:
                self._erase_sensitive(task_id)
                self._db.execute(
                    "UPDATE tasks SET state = 'expired', finished_at = ?, reason = ?, "
                    "leased_until = NULL, started_at = NULL WHERE id = ?",
                    (now, EXPIRED_REASON, task_id),
                )
            else:
                self._db.execute(
                    "UPDATE tasks SET state = 'queued', leased_until = NULL, started_at = NULL "
                    "WHERE id = ?",
                    (task_id,),
                )
            return self._task(task_id)

    async def expire_tasks(self, now: float) -> list[TaskRecord]:
        with self._transaction():
            ids = [
                row[0]
                for row in self._db.execute(
                    "SELECT id FROM tasks WHERE state = 'queued' AND expires_at < ?", (now,)
                )
            ]
            for task_id in ids:
                self._erase_sensitive(task_id)
            self._db.executemany(
                "UPDATE tasks SET state = 'expired', finished_at = ?, reason = ? WHERE id = ?",
                [(now, EXPIRED_REASON, task_id) for task_id in ids],
            )
            return [self._task(task_id) for task_id in ids]

    async def get_task(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks t JOIN agents a ON a.id = t.agent_id WHERE t.id = ?",
            (task_id,),
        ).fetchone()
        return task_from_row(row) if row else None

    async def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        marks = ",".join(f"?{5 + i}" for i in range(len(query.states)))
        rows = self._db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks t JOIN agents a ON a.id = t.agent_id "
            "WHERE (?1 IS NULL OR a.name = ?1) AND (?2 IS NULL OR t.created_at >= ?2) "
            f"AND (?3 = 0 OR t.state IN ({marks or 'NULL'})) ORDER BY t.created_at DESC LIMIT ?4",
            (query.target, query.since, len(query.states), query.limit, *query.states),
        )
        return [task_from_row(row) for row in rows.fetchall()]

    async def lease_tasks(
        self, agent_id: str, limit: int, now: float, lease_seconds: float
    ) -> list[TaskRecord]:
        if not self._has_waiting(agent_id):
            return []  # most polls: no write lock, no commit
        with self._transaction():
            self._expire_leases(agent_id, now)
            if limit <= 0:
                return []
            ids = [row[0] for row in self._db.execute(LEASABLE, (agent_id, now, limit))]
            self._db.executemany(
                "UPDATE tasks SET state = 'leased', leased_until = ? WHERE id = ?",
                [(now + lease_seconds, task_id) for task_id in ids],
            )
            return [self._task(task_id) for task_id in ids]

    def _has_waiting(self, agent_id: str) -> bool:
        """Anything queued or leased for the agent (an expired lease is queued again first)."""
        row = self._db.execute(
            "SELECT 1 FROM tasks WHERE agent_id = ? AND state IN ('queued', 'leased') LIMIT 1",
            (agent_id,),
        ).fetchone()
        return row is not None

    def _expire_leases(self, agent_id: str, now: float) -> None:
        """A lease nobody accepted in time goes back to the queue (or ends, if cancelled)."""
        ending = self._db.execute(
            "SELECT id FROM tasks WHERE agent_id = ? AND state = 'leased' AND leased_until < ? "
            "AND cancel_requested = 1",
            (agent_id, now),
        ).fetchall()
        for (task_id,) in ending:
            self._erase_sensitive(task_id)
        self._db.execute(
            "UPDATE tasks SET state = CASE cancel_requested WHEN 1 THEN 'cancelled' "
            "ELSE 'queued' END, leased_until = NULL, "
            "finished_at = CASE cancel_requested WHEN 1 THEN ? ELSE NULL END "
            "WHERE agent_id = ? AND state = 'leased' AND leased_until < ?",
            (now, agent_id, now),
        )

    async def accept_task(self, task_id: str, agent_id: str, now: float) -> TaskRecord | None:
        with self._transaction():
            task = await self.get_task(task_id)
            if task is None or task.agent_id != agent_id:
                return None
            if task.state == TaskState.RUNNING:
                return task  # a retried accept whose first answer was lost
            if task.state != TaskState.LEASED:
                return None
            if task.cancel_requested:
                self._end(task_id, TaskState.CANCELLED, "cancelled before it started", now)
                return None
            self._db.execute(
                "UPDATE tasks SET state = 'running', started_at = ?, leased_until = NULL "
                "WHERE id = ?",
                (now, task_id),
            )
            return self._task(task_id)

    async def request_cancel(self, task_id: str, now: float) -> TaskRecord | None:
        with self._transaction():
            task = await self.get_task(task_id)
            if task is None or task.state.is_final:
                return task
            if task.state == TaskState.QUEUED:
                self._end(task_id, TaskState.CANCELLED, "cancelled before it started", now)
            else:
                self._db.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
            return self._task(task_id)

    async def cancels_for(self, agent_id: str, task_ids: list[str]) -> list[str]:
        rows = self._db.execute(
            "SELECT id FROM tasks WHERE agent_id = ? AND cancel_requested = 1 AND state IN (?, ?)",
            (agent_id, *ACTIVE),
        )
        wanted = set(task_ids)
        return [row[0] for row in rows if row[0] in wanted]

    async def append_events(self, task_id: str, events: list[Event]) -> int:
        """Stores the events (a repeated one is ignored); returns the task's ``last_seq``: the
        highest line stored with no gap before it (batches may arrive out of order)."""
        stored_end = await self._output.append(task_id, events, self._last_seq(task_id) or 0)
        # fetchall, not fetchone: the statement must run to its end to release its write lock
        rows = self._db.execute(
            "UPDATE tasks SET last_seq = MAX(last_seq, ?) WHERE id = ? RETURNING last_seq",
            (stored_end, task_id),
        ).fetchall()
        return int(rows[0][0]) if rows else 0

    async def events_after(self, task_id: str, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` lines after ``after_seq``, one event per line (blocks are split), none
        past the first gap: a reader paging by seq must not skip a batch still on its way."""
        known = self._last_seq(task_id)
        last_seq = MAX_SEQ if known is None else known
        rows = self._db.execute(
            f"SELECT {BLOCK_COLUMNS} FROM output.blocks WHERE task_id = ?1 AND seq >= "
            "(SELECT COALESCE(MAX(seq), 0) FROM output.blocks "
            "WHERE task_id = ?1 AND seq <= ?2 + 1) AND seq + lines - 1 > ?2 "
            "ORDER BY seq LIMIT ?3",
            (task_id, after_seq, limit),
        )
        with contextlib.closing(self._output.read(task_id, rows)) as stored:
            lines = (line for e in stored for line in e.split() if after_seq < line.seq <= last_seq)
            return list(itertools.islice(lines, limit))

    async def finish_task(self, task_id: str, result: ResultRequest, now: float) -> TaskRecord:
        """Idempotent: the first final state wins, a repeated result changes nothing. "lost" is
        only the server's guess, so the agent's real result replaces it."""
        with self._transaction():
            task = self._task(task_id)
            if not task.state.is_final or task.state == TaskState.LOST:
                self._db.execute(
                    "UPDATE tasks SET state = ?, exit_code = ?, reason = ?, finished_at = ?, "
                    "leased_until = NULL WHERE id = ?",
                    (result.state, result.exit_code, result.reason, now, task_id),
                )
                self._erase_sensitive(task_id)
            return self._task(task_id)

    async def expire_leases(self, now: float) -> list[str]:
        """Expired leases back to the queue; returns the agents whose tasks were requeued."""
        with self._transaction():
            agents = self._db.execute(
                "SELECT DISTINCT agent_id FROM tasks WHERE state = 'leased' AND leased_until < ?",
                (now,),
            ).fetchall()
            for (agent_id,) in agents:
                self._expire_leases(agent_id, now)
            return [agent_id for (agent_id,) in agents]

    async def unfinished_specs(self) -> list[tuple[str, str]]:
        """(task id, spec) of every task not yet ended: the ones holding sealed values."""
        rows = self._db.execute(
            "SELECT id, spec_json FROM tasks WHERE state IN ('queued', 'leased', 'running')"
        )
        return [(str(task_id), str(spec)) for task_id, spec in rows.fetchall()]

    async def task_needs_blob(self, agent_id: str, sha256: str) -> bool:
        """Whether a task delivered to this agent and not yet ended names these bytes (its
        package, or the file it is to put in place). ``sha256`` is 64 hex digits, checked by
        the caller, so it cannot carry a LIKE wildcard."""
        row = self._db.execute(
            "SELECT 1 FROM tasks WHERE agent_id = ? AND state IN ('leased', 'running') "
            "AND spec_json LIKE ? LIMIT 1",
            (agent_id, f'%"sha256":"{sha256}"%'),
        ).fetchone()
        return row is not None

    async def replace_spec(self, task_id: str, spec_json: str) -> None:
        self._db.execute("UPDATE tasks SET spec_json = ? WHERE id = ?", (spec_json, task_id))

    async def silent_agents(self, seen_before: float) -> list[str]:
        """Agents with running tasks that have not been seen since ``seen_before``."""
        rows = self._db.execute(
            "SELECT DISTINCT a.id FROM agents a JOIN tasks t ON t.agent_id = a.id "
            "WHERE t.state = 'running' AND COALESCE(a.last_seen, 0) < ?",
            (seen_before,),
        )
        return [row[0] for row in rows.fetchall()]

    async def mark_lost(self, agent_ids: list[str], reason: str, now: float) -> list[str]:
        """Running tasks of these agents become "lost"; returns their ids."""
        with self._transaction():
            lost: list[str] = []
            for agent_id in agent_ids:
                rows = self._db.execute(
                    "SELECT id FROM tasks WHERE agent_id = ? AND state = 'running'", (agent_id,)
                )
                lost.extend(row[0] for row in rows.fetchall())
            for task_id in lost:
                self._end(task_id, TaskState.LOST, reason, now)
            return lost

    def _end(self, task_id: str, state: TaskState, reason: str, now: float) -> None:
        self._db.execute(
            "UPDATE tasks SET state = ?, reason = ?, finished_at = ?, leased_until = NULL "
            "WHERE id = ?",
            (state.value, reason, now, task_id),
        )
        self._erase_sensitive(task_id)

    def _erase_sensitive(self, task_id: str) -> None:
        """An ended task keeps no sensitive value: it will never be sent again."""
        row = self._db.execute("SELECT spec_json FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None:
            erased = without_sensitive_values(row[0])
            if erased != row[0]:
                self._db.execute("UPDATE tasks SET spec_json = ? WHERE id = ?", (erased, task_id))

    def _last_seq(self, task_id: str) -> int | None:
        row = self._db.execute("SELECT last_seq FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return int(row[0]) if row is not None else None

    def _task(self, task_id: str) -> TaskRecord:
        row = self._db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks t JOIN agents a ON a.id = t.agent_id WHERE t.id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no task {task_id}")
        return task_from_row(row)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


@contextlib.contextmanager
def _target_gone_named() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "FOREIGN KEY" in str(exc):  # a target deleted since it was chosen
            raise StoreError(TARGET_GONE) from exc
        raise


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
