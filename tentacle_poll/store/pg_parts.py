"""The PostgreSQL store's smaller parts: credentials and audit, packages, deployments, output.

Mixed into PostgresStore, which provides ``_one``, ``_all``, ``_run`` and ``_transaction``;
the SQL mirrors the SQLite parts (store/credentials.py, packages.py, deployments.py, output.py)
with the same rules: keys and tokens stored only as hashes, each output line stored once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import asyncpg

from tentacle_poll.exceptions import StoreError
from tentacle_poll.protocol.models import Event, PackageView
from tentacle_poll.store.base import DeploymentEntry, DeploymentSummary, TaskRecord
from tentacle_poll.store.blocks import TEXT_ERRORS, contiguous_end, uncovered_parts
from tentacle_poll.store.credentials import (
    KEY_COLUMNS,
    LAST_USED_RESOLUTION,
    ApiKeyRecord,
    AuditEntry,
    TokenRecord,
    hashed,
    token_id_of,
)
from tentacle_poll.store.deployments import NEWEST_DEPLOYMENTS, summaries
from tentacle_poll.store.packages import COLUMNS as PACKAGE_COLUMNS
from tentacle_poll.store.rows import ENTRY_COLUMNS, TASK_COLUMNS, entry_from_row, task_from_row

Row = Any  # an asyncpg Record: indexable like a tuple


class _Base(Protocol):
    async def _one(self, sql: str, *args: object) -> Row | None: ...
    async def _all(self, sql: str, *args: object) -> list[Row]: ...
    async def _run(self, sql: str, *args: object) -> str: ...
    async def _value(self, sql: str, *args: object) -> Any: ...
    def _transaction(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]: ...


class PgCredentials(_Base):
    async def create_api_key(
        self,
        name: str,
        scope: str = "admin",
        environments: list[str] | None = None,
        created_by: str = "",
        now: float | None = None,
    ) -> str:
        key = "API-" + secrets.token_hex(16).upper()
        try:
            await self._run(
                f"INSERT INTO api_keys (key_hash, {KEY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                hashed(key), name, scope, json.dumps(environments or []), now or time.time(),
                None, created_by,
            )  # fmt: skip
        except asyncpg.UniqueViolationError:
            raise StoreError(
                f"an API key named {name} exists; revoke it or choose another name"
            ) from None
        return key

    async def api_key(self, key: str, now: float) -> ApiKeyRecord | None:
        row = await self._one(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", hashed(key)
        )
        if row is None:
            return None
        found = _key(row)
        if found.last_used is None or now - found.last_used > LAST_USED_RESOLUTION:
            await self._run(
                "UPDATE api_keys SET last_used = $1 WHERE key_hash = $2", now, hashed(key)
            )
        return found

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return [
            _key(r) for r in await self._all(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY name")
        ]

    async def revoke_api_key(self, name: str) -> bool:
        return await self._run("DELETE FROM api_keys WHERE name = $1", name) != "DELETE 0"

    async def create_registration_token(
        self, expires_at: float, now: float = 0.0, created_by: str = ""
    ) -> str:
        secret = secrets.token_urlsafe(24)
        await self._run(
            "INSERT INTO registration_tokens (token_hash, expires_at, id, created_at, created_by) "
            "VALUES ($1,$2,$3,$4,$5)",
            hashed(secret), expires_at, token_id_of(secret), now, created_by,
        )  # fmt: skip
        return secret

    async def consume_registration_token(self, secret: str, now: float) -> str | None:
        done = await self._run(
            "DELETE FROM registration_tokens WHERE token_hash = $1 AND expires_at > $2",
            hashed(secret), now,
        )  # fmt: skip
        return token_id_of(secret) if done == "DELETE 1" else None

    async def list_registration_tokens(self, now: float) -> list[TokenRecord]:
        rows = await self._all(
            "SELECT id, created_at, expires_at, created_by FROM registration_tokens "
            "WHERE expires_at > $1 ORDER BY created_at",
            now,
        )
        return [TokenRecord(r[0], r[1], r[2], r[3]) for r in rows]

    async def revoke_registration_token(self, token_id: str) -> bool:
        return await self._run("DELETE FROM registration_tokens WHERE id = $1", token_id) != (
            "DELETE 0"
        )

    async def record(self, entry: AuditEntry) -> None:
        await self._run(
            "INSERT INTO audit (at, key, action, subject, detail) VALUES ($1,$2,$3,$4,$5)",
            entry.at, entry.key, entry.action, entry.subject, entry.detail,
        )  # fmt: skip

    async def audit(self, since: float, key: str | None, limit: int) -> list[AuditEntry]:
        rows = await self._all(
            "SELECT at, key, action, subject, detail FROM audit WHERE at >= $1 "
            "AND ($2::text IS NULL OR key = $2) ORDER BY at DESC, id DESC LIMIT $3",
            since, key, limit,
        )  # fmt: skip
        return [AuditEntry(*row) for row in rows]


def _key(row: Row) -> ApiKeyRecord:
    name, scope, environments, created, last_used, by = row
    return ApiKeyRecord(name, scope, json.loads(environments), created, last_used, by)


class PgPackages(_Base):
    async def add_package(self, package: PackageView) -> PackageView:
        """Idempotent for the same bytes; a version re-uploaded with other bytes is refused."""
        async with self._transaction() as db:
            await db.execute(
                f"INSERT INTO packages ({PACKAGE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6) "
                "ON CONFLICT DO NOTHING",
                package.package_id, package.version, package.sha256, package.size,
                package.format, package.uploaded_at,
            )  # fmt: skip
            row = await db.fetchrow(
                f"SELECT {PACKAGE_COLUMNS} FROM packages WHERE package_id = $1 AND version = $2",
                package.package_id, package.version,
            )  # fmt: skip
        existing = _package(row)
        if existing.sha256 != package.sha256:
            raise StoreError(
                f"{package.package_id} {package.version} already exists with other content "
                f"(sha256 {existing.sha256}); upload it as a new version"
            )
        return existing

    async def list_packages(self) -> list[PackageView]:
        rows = await self._all(
            f"SELECT {PACKAGE_COLUMNS} FROM packages ORDER BY package_id, uploaded_at"
        )
        return [_package(row) for row in rows]

    async def delete_package(self, package_id: str, version: str) -> PackageView | None:
        row = await self._one(
            f"DELETE FROM packages WHERE package_id = $1 AND version = $2 "
            f"RETURNING {PACKAGE_COLUMNS}",
            package_id, version,
        )  # fmt: skip
        return _package(row) if row else None

    async def get_package(self, package_id: str, version: str) -> PackageView | None:
        row = await self._one(
            f"SELECT {PACKAGE_COLUMNS} FROM packages WHERE package_id = $1 AND version = $2",
            package_id, version,
        )  # fmt: skip
        return _package(row) if row else None

    async def package_uses(self, sha256: str) -> int:
        return int(await self._value("SELECT COUNT(*) FROM packages WHERE sha256 = $1", sha256))


def _package(row: Row) -> PackageView:
    return PackageView.model_validate(dict(row))


class PgDeployments(_Base):
    async def create_deployment(self, description: str, stop_on_failure: bool, now: float) -> str:
        deployment_id = f"D-{int(now * 1000):x}-{secrets.token_hex(3)}"
        await self._run(
            "INSERT INTO deployments (id, description, stop_on_failure, created_at) "
            "VALUES ($1,$2,$3,$4)",
            deployment_id, description, stop_on_failure, now,
        )  # fmt: skip
        return deployment_id

    async def deployment(self, deployment_id: str) -> tuple[str, bool, float] | None:
        row = await self._one(
            "SELECT description, stop_on_failure, created_at FROM deployments WHERE id = $1",
            deployment_id,
        )
        return (row[0], row[1], row[2]) if row else None

    async def list_deployments(self, limit: int) -> list[DeploymentSummary]:
        return summaries(await self._all(NEWEST_DEPLOYMENTS.format(limit="$1"), limit))

    async def deployment_tasks(self, deployment_id: str) -> list[TaskRecord]:
        rows = await self._deployment_rows(TASK_COLUMNS, deployment_id)
        return [task_from_row(row) for row in rows]

    async def deployment_entries(self, deployment_id: str) -> list[DeploymentEntry]:
        rows = await self._deployment_rows(ENTRY_COLUMNS, deployment_id)
        return [entry_from_row(tuple(row)) for row in rows]

    async def _deployment_rows(self, columns: str, deployment_id: str) -> list[Row]:
        return await self._all(
            f"SELECT {columns} FROM tasks t JOIN agents a ON a.id = t.agent_id "
            "WHERE t.deployment_id = $1 ORDER BY a.name",
            deployment_id,
        )


# The stored blocks a batch from $2 to $3 may overlap (the last one starting at or before $2,
# and those starting inside it), and those after $4, the task's known end (batches that
# overtook a missing one), from which the new end is worked out.
NEARBY = """
SELECT seq, lines FROM output_blocks WHERE task_id = $1 AND (seq <= $3 OR seq > $4)
  AND seq >= COALESCE((SELECT MAX(seq) FROM output_blocks WHERE task_id = $1 AND seq <= $2), $2)
ORDER BY seq
"""
BLOCK_FIELDS = 6  # seq, lines, stream, ts, continues, text
STORE_BLOCKS = """
WITH stored AS (
  INSERT INTO output_blocks (task_id, seq, lines, stream, ts, continues, text)
  SELECT $1, * FROM unnest($2::bigint[], $3::int[], $4::text[], $5::float8[], $6::bool[],
                           $7::bytea[])
  ON CONFLICT DO NOTHING)
UPDATE tasks SET last_seq = GREATEST(last_seq, $8) WHERE id = $1 RETURNING last_seq
"""


class PgOutput(_Base):
    """Output blocks, text included, as rows: every node reads and writes every task's output.
    Appends to one task are serialised by its row's lock (``FOR UPDATE``), so a batch retried
    through another node while the first is still being stored is stored once. Five round
    trips: begin, lock, the nearby blocks, store and move the end, commit."""

    async def append_events(self, task_id: str, events: list[Event]) -> int:
        first = min(e.seq for e in events)
        last = max(e.last_seq for e in events)
        async with self._transaction() as db:
            query = "SELECT last_seq FROM tasks WHERE id = $1 FOR UPDATE"
            known = await db.fetchval(query, task_id)
            if known is None:
                return 0
            nearby = [(r[0], r[1]) for r in await db.fetch(NEARBY, task_id, first, last, known)]
            pieces = _new_pieces(events, nearby)
            blocks = sorted(nearby + [(p.seq, p.lines) for p in pieces])
            end = contiguous_end(((seq, n) for seq, n in blocks if seq > known), known)
            rows = [_block_row(piece) for piece in pieces]
            columns = [[row[k] for row in rows] for k in range(BLOCK_FIELDS)]
            stored = await db.fetchval(STORE_BLOCKS, task_id, *columns, end)
        return int(stored)

    async def events_after(self, task_id: str, after_seq: int, limit: int) -> list[Event]:
        """As the SQLite store: one event per line, none past the first gap."""
        known = await self._one("SELECT last_seq FROM tasks WHERE id = $1", task_id)
        if known is None:
            return []
        rows = await self._all(
            "SELECT seq, stream, ts, lines, continues, text FROM output_blocks "
            "WHERE task_id = $1 AND seq >= (SELECT COALESCE(MAX(seq), 0) FROM output_blocks "
            "WHERE task_id = $1 AND seq <= $2 + 1) AND seq + lines - 1 > $2 AND seq <= $3 "
            "ORDER BY seq LIMIT $4",
            task_id, after_seq, known[0], limit,
        )  # fmt: skip
        lines: list[Event] = []
        for seq, stream, ts, count, continues, text in rows:
            block = Event.model_construct(
                seq=seq, stream=stream, ts=ts, lines=count, continues=continues,
                text=bytes(text).decode(errors=TEXT_ERRORS),
            )  # fmt: skip
            lines += [e for e in block.split() if after_seq < e.seq <= known[0]]
        return lines[:limit]


def _new_pieces(events: list[Event], stored: list[tuple[int, int]]) -> list[Event]:
    """The parts of the batch's blocks that no stored block, nor an earlier one of the batch,
    covers (a retried batch may overlap, split or merge what is stored)."""
    covered, pieces = list(stored), []
    for event in sorted(events, key=lambda e: e.seq):
        for piece in uncovered_parts(event, sorted(covered)):
            covered.append((piece.seq, piece.lines))
            pieces.append(piece)
    return pieces


def _block_row(event: Event) -> tuple[object, ...]:
    text = event.text.encode(errors=TEXT_ERRORS)
    return (event.seq, event.lines, event.stream, event.ts, event.continues, text)


class PgBlobs(_Base):
    """The rows behind store/blobs.py's DatabaseBlobs."""

    async def blob_stored(self, sha256: str) -> bool:
        return await self._one("SELECT 1 FROM blobs WHERE sha256 = $1", sha256) is not None

    async def put_blob(self, sha256: str, size: int, chunks: AsyncIterator[bytes]) -> None:
        """All chunks in one transaction: another node sees all of them or none."""
        async with self._transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", sha256)
            if await db.fetchval("SELECT 1 FROM blobs WHERE sha256 = $1", sha256):
                return  # the same bytes, stored through another node meanwhile
            count = 0
            async for chunk in chunks:
                await db.execute(
                    "INSERT INTO blob_chunks VALUES ($1, $2, $3)", sha256, count, chunk
                )
                count += 1
            await db.execute("INSERT INTO blobs VALUES ($1, $2, $3)", sha256, size, count)

    async def blob_chunks(self, sha256: str) -> AsyncIterator[bytes]:
        count = await self._value("SELECT chunks FROM blobs WHERE sha256 = $1", sha256) or 0
        for n in range(count):
            data = await self._value(
                "SELECT data FROM blob_chunks WHERE sha256 = $1 AND n = $2", sha256, n
            )
            yield bytes(data)

    async def delete_blob(self, sha256: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM blobs WHERE sha256 = $1", sha256)
            await db.execute("DELETE FROM blob_chunks WHERE sha256 = $1", sha256)
