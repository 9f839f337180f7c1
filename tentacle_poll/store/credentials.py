"""API keys (with scopes), registration tokens and the audit trail, in SQLite.

Keys and tokens are stored only as SHA-256 hashes; their names and ids are what lists show.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, field

from tentacle_poll.exceptions import StoreError

LAST_USED_RESOLUTION = 60.0  # last_used is written at most once a minute per key


@dataclass(frozen=True)
class ApiKeyRecord:
    name: str
    scope: str  # "admin", "deploy" or "read"
    environments: list[str] = field(default_factory=list)  # a deploy key's limit; [] = any
    created_at: float = 0.0
    last_used: float | None = None
    created_by: str = ""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    created_at: float
    expires_at: float
    created_by: str


@dataclass(frozen=True)
class AuditEntry:
    at: float
    key: str  # who: an API key's name, "token <id>", "target <name>" or "local"
    action: str
    subject: str
    detail: str = ""


def hashed(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_id_of(secret: str) -> str:
    """A token's public id: the start of its hash (never the secret)."""
    return hashed(secret)[:12]


KEY_COLUMNS = "name, scope, environments, created_at, last_used, created_by"


class SqliteCredentials:
    """Mixed into SqliteStore; expects ``self._db``."""

    _db: sqlite3.Connection

    async def create_api_key(
        self,
        name: str,
        scope: str = "admin",
        environments: list[str] | None = None,
        created_by: str = "",
        now: float | None = None,
    ) -> str:
        if self._db.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
            raise StoreError(f"an API key named {name} exists; revoke it or choose another name")
        key = "API-" + secrets.token_hex(16).upper()
        self._db.execute(
            f"INSERT INTO api_keys (key_hash, {KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
            (
                hashed(key),
                name,
                scope,
                json.dumps(environments or []),
                now or time.time(),
                None,
                created_by,
            ),
        )
        return key

    async def api_key(self, key: str, now: float) -> ApiKeyRecord | None:
        """The key's record (and its last use noted), or None when unknown or revoked."""
        row = self._db.execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (hashed(key),)
        ).fetchone()
        if row is None:
            return None
        found = _key(row)
        if found.last_used is None or now - found.last_used > LAST_USED_RESOLUTION:
            self._db.execute(
                "UPDATE api_keys SET last_used = ? WHERE key_hash = ?", (now, hashed(key))
            )
        return found

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = self._db.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY name")
        return [_key(row) for row in rows.fetchall()]

    async def revoke_api_key(self, name: str) -> bool:
        return self._db.execute("DELETE FROM api_keys WHERE name = ?", (name,)).rowcount > 0

    async def create_registration_token(
        self, expires_at: float, now: float = 0.0, created_by: str = ""
    ) -> str:
        secret = secrets.token_urlsafe(24)
        self._db.execute(
            "INSERT INTO registration_tokens (token_hash, expires_at, id, created_at, created_by) "
            "VALUES (?,?,?,?,?)",
            (hashed(secret), expires_at, token_id_of(secret), now, created_by),
        )
        return secret

    async def consume_registration_token(self, secret: str, now: float) -> str | None:
        """The token's id when it was valid (it is used up now), else None."""
        cursor = self._db.execute(
            "DELETE FROM registration_tokens WHERE token_hash = ? AND expires_at > ?",
            (hashed(secret), now),
        )
        return token_id_of(secret) if cursor.rowcount == 1 else None

    async def list_registration_tokens(self, now: float) -> list[TokenRecord]:
        """Tokens not yet used nor expired."""
        rows = self._db.execute(
            "SELECT id, created_at, expires_at, created_by FROM registration_tokens "
            "WHERE expires_at > ? ORDER BY created_at",
            (now,),
        )
        return [TokenRecord(str(i), float(c), float(e), str(b)) for i, c, e, b in rows.fetchall()]

    async def revoke_registration_token(self, token_id: str) -> bool:
        cursor = self._db.execute("DELETE FROM registration_tokens WHERE id = ?", (token_id,))
        return cursor.rowcount > 0

    async def record(self, entry: AuditEntry) -> None:
        self._db.execute(
            "INSERT INTO audit (at, key, action, subject, detail) VALUES (?,?,?,?,?)",
            (entry.at, entry.key, entry.action, entry.subject, entry.detail),
        )

    async def audit(self, since: float, key: str | None, limit: int) -> list[AuditEntry]:
        query = "SELECT at, key, action, subject, detail FROM audit WHERE at >= ?"
        params: list[object] = [since]
        if key is not None:
            query += " AND key = ?"
            params.append(key)
        rows = self._db.execute(query + " ORDER BY at DESC, id DESC LIMIT ?", (*params, limit))
        return [AuditEntry(float(a), str(k), str(x), str(s), str(d)) for a, k, x, s, d in rows]


def _key(row: tuple[object, ...]) -> ApiKeyRecord:
    name, scope, environments, created, last_used, by = row
    return ApiKeyRecord(
        name=str(name),
        scope=str(scope),
        environments=json.loads(str(environments)),
        created_at=float(str(created)),
        last_used=float(str(last_used)) if last_used is not None else None,
        created_by=str(by),
    )
