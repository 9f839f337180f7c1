"""Deployments: one task per matching target, grouped so they can be shown and stopped together."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable
from typing import Any

from tentacle_poll.store.base import DeploymentEntry, DeploymentSummary, TaskRecord
from tentacle_poll.store.rows import ENTRY_COLUMNS, TASK_COLUMNS, entry_from_row, task_from_row

# The newest deployments ({limit}: the driver's placeholder), their tasks counted by state.
NEWEST_DEPLOYMENTS = (
    "SELECT d.id, d.description, d.created_at, t.state, COUNT(t.id) FROM (SELECT id, "
    "description, created_at FROM deployments ORDER BY created_at DESC, id DESC LIMIT {limit}) d "
    "LEFT JOIN tasks t ON t.deployment_id = d.id GROUP BY d.id, d.description, d.created_at, "
    "t.state ORDER BY d.created_at DESC, d.id DESC"
)


def summaries(rows: Iterable[Iterable[Any]]) -> list[DeploymentSummary]:
    """Folds (id, description, created_at, state, count) rows into one summary per id."""
    found: dict[str, DeploymentSummary] = {}
    for deployment_id, description, created_at, state, count in rows:
        summary = found.setdefault(
            deployment_id, DeploymentSummary(deployment_id, description, float(created_at), {})
        )
        if state is not None:  # a deployment whose tasks were all pruned has none
            summary.counts[str(state)] = int(count)
    return list(found.values())


class SqliteDeployments:
    """Mixed into SqliteStore; expects ``self._db``."""

    _db: sqlite3.Connection

    async def create_deployment(self, description: str, stop_on_failure: bool, now: float) -> str:
        deployment_id = f"D-{int(now * 1000):x}-{secrets.token_hex(3)}"
        self._db.execute(
            "INSERT INTO deployments (id, description, stop_on_failure, created_at) "
            "VALUES (?,?,?,?)",
            (deployment_id, description, int(stop_on_failure), now),
        )
        return deployment_id

    async def deployment(self, deployment_id: str) -> tuple[str, bool, float] | None:
        """(description, stop_on_failure, created_at), or None."""
        row = self._db.execute(
            "SELECT description, stop_on_failure, created_at FROM deployments WHERE id = ?",
            (deployment_id,),
        ).fetchone()
        return (str(row[0]), bool(row[1]), float(row[2])) if row else None

    async def list_deployments(self, limit: int) -> list[DeploymentSummary]:
        return summaries(self._db.execute(NEWEST_DEPLOYMENTS.format(limit="?"), (limit,)))

    async def deployment_tasks(self, deployment_id: str) -> list[TaskRecord]:
        return [task_from_row(row) for row in self._deployment_rows(TASK_COLUMNS, deployment_id)]

    async def deployment_entries(self, deployment_id: str) -> list[DeploymentEntry]:
        return [entry_from_row(row) for row in self._deployment_rows(ENTRY_COLUMNS, deployment_id)]

    def _deployment_rows(self, columns: str, deployment_id: str) -> list[tuple[object, ...]]:
        return self._db.execute(
            f"SELECT {columns} FROM tasks t JOIN agents a ON a.id = t.agent_id "
            "WHERE t.deployment_id = ? ORDER BY a.name",
            (deployment_id,),
        ).fetchall()
