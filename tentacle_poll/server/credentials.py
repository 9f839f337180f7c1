"""Keys, registration tokens and the audit trail as operations, for the admin API's handlers and
for the command line working on a server home's own database (how the first key is made).

``who`` is recorded in the audit trail with every change: the calling key's name, or
"local (server home)". Refusals raise RequestRejected: the admin API answers it as a problem,
the command line prints it as one line.
"""

from __future__ import annotations

import time

from tentacle_poll.exceptions import RequestRejected, StoreError
from tentacle_poll.logs import hide_secret
from tentacle_poll.protocol.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyView,
    AuditEntryView,
    TokenCreated,
    TokenView,
)
from tentacle_poll.protocol.tokens import make_token
from tentacle_poll.store import ApiKeyRecord, AuditEntry, Store, TokenRecord
from tentacle_poll.store.credentials import token_id_of

LOCAL = "local (server home)"


class Credentials:
    def __init__(self, store: Store, server_thumbprint: str, who: str = LOCAL) -> None:
        self._store = store
        self._thumbprint = server_thumbprint
        self._who = who

    async def keys(self) -> list[ApiKeyView]:
        return [key_view(k) for k in await self._store.list_api_keys()]

    async def create_key(self, key: ApiKeyCreate) -> ApiKeyCreated:
        environments = list(key.environments)
        try:
            secret = await self._store.create_api_key(key.name, key.scope, environments, self._who)
        except StoreError as exc:
            raise RequestRejected(409, "key name taken", str(exc)) from exc
        hide_secret(secret)
        limit = f" in {', '.join(environments)}" if environments else ""
        await self.record("key created", key.name, key.scope + limit)
        created = await self._store.api_key(secret, time.time())
        assert created is not None
        return ApiKeyCreated(**key_view(created).model_dump(), key=secret)

    async def revoke_key(self, name: str) -> None:
        if not await self._store.revoke_api_key(name):
            raise RequestRejected(404, "no such key", f"no API key named {name}")
        await self.record("key revoked", name)

    async def tokens(self) -> list[TokenView]:
        return [token_view(t) for t in await self._store.list_registration_tokens(time.time())]

    async def create_token(self, ttl_seconds: float) -> TokenCreated:
        now = time.time()
        secret = await self._store.create_registration_token(now + ttl_seconds, now, self._who)
        token = make_token(self._thumbprint, secret)
        hide_secret(token)
        await self.record("token created", token_id_of(secret), f"expires in {ttl_seconds:g} s")
        return TokenCreated(token=token, expires_at=now + ttl_seconds, id=token_id_of(secret))

    async def revoke_token(self, token_id: str) -> None:
        if not await self._store.revoke_registration_token(token_id):
            raise RequestRejected(404, "no such token", f"no unused token {token_id}")
        await self.record("token revoked", token_id)

    async def audit(self, since: float, key: str | None, limit: int) -> list[AuditEntryView]:
        return [audit_view(e) for e in await self._store.audit(since, key, limit)]

    async def record(self, action: str, subject: str, detail: str = "") -> None:
        await self._store.record(AuditEntry(time.time(), self._who, action, subject, detail))


def key_view(key: ApiKeyRecord) -> ApiKeyView:
    return ApiKeyView.model_validate(key, from_attributes=True)


def token_view(token: TokenRecord) -> TokenView:
    return TokenView.model_validate(token, from_attributes=True)


def audit_view(entry: AuditEntry) -> AuditEntryView:
    return AuditEntryView.model_validate(entry, from_attributes=True)
