"""What operators ask of the store: a write probe for readiness, counts for metrics, pages of
the fleet, and retention (old finished tasks, their output and emptied deployments go).

``SqliteOperations`` is mixed into SqliteStore, ``PgOperations`` into PostgresStore; the SQL
is the same but for placeholders. Pruning goes in small batches, each its own short
transaction, so dispatch never waits behind it.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

from tentacle_poll.protocol.models import FINAL_STATES
from tentacle_poll.store.base import AgentQuery, AgentRecord, Prunable
from tentacle_poll.store.output import OutputLog
from tentacle_poll.store.rows import AGENT_COLUMNS, ROTATION_COLUMNS, agent_from_row

FINAL = ", ".join(f"'{state.value}'" for state in sorted(FINAL_STATES))
# {cutoff}: the placeholder of the store's driver (? or $1).
ENDED_BEFORE = f"t.state IN ({FINAL}) AND COALESCE(t.finished_at, t.created_at) < {{cutoff}}"
AGENTS = f"SELECT {AGENT_COLUMNS}, {ROTATION_COLUMNS} FROM agents"
TASK_COUNTS = "SELECT state, COUNT(*) FROM tasks GROUP BY state"
OLDEST_QUEUED = "SELECT MIN(created_at) FROM tasks WHERE state = 'queued'"
PRUNABLE_TASKS = "SELECT COUNT(*) FROM tasks t WHERE " + ENDED_BEFORE
# Old deployments that are empty, or will be once their ended tasks are pruned.
PRUNABLE_DEPLOYMENTS = (
    "SELECT COUNT(*) FROM deployments d WHERE d.created_at < {cutoff} AND NOT EXISTS "
    f"(SELECT 1 FROM tasks t WHERE t.deployment_id = d.id AND NOT ({ENDED_BEFORE}))"
)
ENDED_TASK_IDS = "SELECT t.id FROM tasks t WHERE " + ENDED_BEFORE + " LIMIT {batch}"
EMPTIED_DEPLOYMENT_IDS = (
    "SELECT d.id FROM deployments d WHERE d.created_at < {cutoff} "
    "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.deployment_id = d.id) LIMIT {batch}"
)


class SqliteOperations:
    """Mixed into SqliteStore; expects ``self._db``, ``self._output``, ``self._transaction``."""

    _db: sqlite3.Connection
    _output: OutputLog

    def _transaction(self) -> Any: ...  # provided by SqliteStore

    async def probe_write(self) -> None:
        """A real committed write (the schema version, rewritten unchanged): fails as a task
        post would when the disk is full or the database locked."""
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            self._db.execute(f"PRAGMA user_version = {int(version)}")

    async def task_counts(self) -> dict[str, int]:
        return {str(state): int(count) for state, count in self._db.execute(TASK_COUNTS)}

    async def agents_page(self, query: AgentQuery) -> list[AgentRecord]:
        where, params = ["name > ?"], [query.after]
        for column, label in query.labels():
            where.append(f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)")
            params.append(label)
        if query.search:
            where.append("instr(name, ?) > 0")  # not LIKE: a name's % and _ are no wildcards
            params.append(query.search)
        rows = self._db.execute(
            f"{AGENTS} WHERE {' AND '.join(where)} ORDER BY name LIMIT ?", (*params, query.limit)
        )
        return [agent_from_row(row) for row in rows.fetchall()]

    async def oldest_queued_at(self) -> float | None:
        value = self._db.execute(OLDEST_QUEUED).fetchone()[0]
        return None if value is None else float(value)

    async def prunable(self, cutoff: float) -> Prunable:
        sql = {"cutoff": "?1"}
        tasks = self._db.execute(PRUNABLE_TASKS.format(**sql), (cutoff,)).fetchone()[0]
        deployments = self._db.execute(PRUNABLE_DEPLOYMENTS.format(**sql), (cutoff,)).fetchone()
        return Prunable(tasks=int(tasks), deployments=int(deployments[0]))

    async def prune(self, cutoff: float, batch: int) -> int:
        """Removes up to ``batch`` tasks that ended before ``cutoff`` (and their output), or,
        with none left, up to ``batch`` emptied deployments; returns how many went."""
        sql = {"cutoff": "?1", "batch": "?2"}
        with self._transaction():
            rows = self._db.execute(ENDED_TASK_IDS.format(**sql), (cutoff, batch)).fetchall()
            ids = [row[0] for row in rows]
            self._db.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i in ids])
        if ids:
            await self._output.delete(ids)  # another database: no cascade reaches it
            return len(ids)
        with self._transaction():
            emptied = EMPTIED_DEPLOYMENT_IDS.format(**sql)
            query = f"DELETE FROM deployments WHERE id IN ({emptied})"
            return int(self._db.execute(query, (cutoff, batch)).rowcount)


class _PgBase(Protocol):
    async def _all(self, sql: str, *args: object) -> list[Any]: ...
    async def _value(self, sql: str, *args: object) -> Any: ...
    async def _run(self, sql: str, *args: object) -> str: ...


class PgOperations(_PgBase):
    """Mixed into PostgresStore (``_all``, ``_value``, ``_run``); output blocks go with their
    task by the foreign key's cascade."""

    async def probe_write(self) -> None:
        await self._run("UPDATE schema_version SET version = version")

    async def task_counts(self) -> dict[str, int]:
        return {str(row[0]): int(row[1]) for row in await self._all(TASK_COUNTS)}

    async def agents_page(self, query: AgentQuery) -> list[AgentRecord]:
        where, params = ["name > $1"], [query.after]
        for column, label in query.labels():
            params.append(label)
            where.append(f"{column}::jsonb ? ${len(params)}")
        if query.search:
            params.append(query.search)
            where.append(f"strpos(name, ${len(params)}) > 0")
        sql = f"{AGENTS} WHERE {' AND '.join(where)} ORDER BY name LIMIT ${len(params) + 1}"
        return [agent_from_row(row) for row in await self._all(sql, *params, query.limit)]

    async def oldest_queued_at(self) -> float | None:
        value = await self._value(OLDEST_QUEUED)
        return None if value is None else float(value)

    async def prunable(self, cutoff: float) -> Prunable:
        sql = {"cutoff": "$1"}
        tasks = await self._value(PRUNABLE_TASKS.format(**sql), cutoff)
        deployments = await self._value(PRUNABLE_DEPLOYMENTS.format(**sql), cutoff)
        return Prunable(tasks=int(tasks), deployments=int(deployments))

    async def prune(self, cutoff: float, batch: int) -> int:
        sql = {"cutoff": "$1", "batch": "$2"}
        ended = ENDED_TASK_IDS.format(**sql)
        status = await self._run(f"DELETE FROM tasks WHERE id IN ({ended})", cutoff, batch)
        if (removed := int(status.split()[-1])) > 0:
            return removed
        emptied = EMPTIED_DEPLOYMENT_IDS.format(**sql)
        status = await self._run(f"DELETE FROM deployments WHERE id IN ({emptied})", cutoff, batch)
        return int(status.split()[-1])
