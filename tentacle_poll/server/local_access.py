"""The access commands' way to a server home's own database, when no API key is at hand (the
first key is made so). Same answers as the admin API; the audit trail records "local"."""

from __future__ import annotations

import time

from tentacle_poll.exceptions import ConfigurationError, StoreError
from tentacle_poll.protocol.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyView,
    AuditEntryView,
    TokenCreated,
    TokenView,
)
from tentacle_poll.protocol.tokens import make_token
from tentacle_poll.server.admin import key_view
from tentacle_poll.store import AuditEntry, Store
from tentacle_poll.store.credentials import token_id_of

WHO = "local (server home)"


class LocalAccess:
    def __init__(self, store: Store, thumbprint: str) -> None:
        self._store = store
        self._thumbprint = thumbprint

    async def keys(self) -> list[ApiKeyView]:
        return [key_view(k) for k in await self._store.list_api_keys()]

    async def create_key(self, key: ApiKeyCreate) -> ApiKeyCreated:
        try:
            secret = await self._store.create_api_key(
                key.name, key.scope, list(key.environments), WHO
            )
        except StoreError as exc:
            raise ConfigurationError(str(exc)) from exc
        await self._record("key created", key.name, key.scope)
        created = await self._store.api_key(secret, time.time())
        assert created is not None
        return ApiKeyCreated(**key_view(created).model_dump(), key=secret)

    async def revoke_key(self, name: str) -> None:
        if not await self._store.revoke_api_key(name):
            raise ConfigurationError(f"no API key named {name}; `server api-key list` shows them")
        await self._record("key revoked", name)

    async def tokens(self) -> list[TokenView]:
        tokens = await self._store.list_registration_tokens(time.time())
        return [TokenView(id=t.id, created_at=t.created_at, expires_at=t.expires_at,
                          created_by=t.created_by) for t in tokens]  # fmt: skip

    async def create_token(self, ttl_seconds: float) -> TokenCreated:
        now = time.time()
        secret = await self._store.create_registration_token(now + ttl_seconds, now, WHO)
        await self._record("token created", token_id_of(secret), f"expires in {ttl_seconds:g} s")
        token = make_token(self._thumbprint, secret)
        return TokenCreated(token=token, expires_at=now + ttl_seconds, id=token_id_of(secret))

    async def revoke_token(self, token_id: str) -> None:
        if not await self._store.revoke_registration_token(token_id):
            raise ConfigurationError(f"no unused token {token_id}; `server token list` shows them")
        await self._record("token revoked", token_id)

    async def audit(self, since: float, key: str | None, limit: int) -> list[AuditEntryView]:
        entries = await self._store.audit(since, key, limit)
        return [AuditEntryView(at=e.at, key=e.key, action=e.action, subject=e.subject,
                               detail=e.detail) for e in entries]  # fmt: skip

    async def _record(self, action: str, subject: str, detail: str = "") -> None:
        await self._store.record(AuditEntry(time.time(), WHO, action, subject, detail))
