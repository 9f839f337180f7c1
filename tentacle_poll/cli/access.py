"""Access commands: server api-key create|list|revoke, server token create|list|revoke, server
audit. Through the admin API when an API key is given (--api-key or $TENTACLE_POLL_API_KEY; it
needs the admin scope), else on the local server home's database (the first key comes so)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from tentacle_poll.cli.context import admin_client, open_server_home
from tentacle_poll.config import ENV_PREFIX
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.protocol.models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyView,
    AuditEntryView,
    TokenCreated,
    TokenView,
)


class Access(Protocol):
    async def keys(self) -> list[ApiKeyView]: ...
    async def create_key(self, key: ApiKeyCreate) -> ApiKeyCreated: ...
    async def revoke_key(self, name: str) -> None: ...
    async def tokens(self) -> list[TokenView]: ...
    async def create_token(self, ttl_seconds: float) -> TokenCreated: ...
    async def revoke_token(self, token_id: str) -> None: ...
    async def audit(self, since: float, key: str | None, limit: int) -> list[AuditEntryView]: ...


def add_access_commands(sub: Any, add_common: Any, add_admin: Any) -> None:
    key = sub.add_parser("api-key", help="API keys").add_subparsers(
        metavar="COMMAND", required=True
    )
    create = key.add_parser("create", help="create an API key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--scope", choices=["admin", "deploy", "read"], default="admin")
    create.add_argument(
        "--environment", action="append", default=[], help="limit a deploy key to these"
    )
    create.set_defaults(command=create_api_key)
    listing = key.add_parser("list", help="keys: name, scope, created, last used (never the key)")
    listing.set_defaults(command=list_api_keys)
    revoke = key.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("name")
    revoke.set_defaults(command=revoke_api_key)
    token = sub.add_parser("token", help="registration tokens").add_subparsers(
        metavar="COMMAND", required=True
    )
    create_token = token.add_parser("create", help="create a one-time registration token")
    create_token.add_argument("--ttl-hours", type=float, default=24.0)
    create_token.set_defaults(command=create_registration_token)
    tokens = token.add_parser("list", help="tokens not yet used nor expired")
    tokens.set_defaults(command=list_tokens)
    revoke_token = token.add_parser("revoke", help="revoke an unused token by its id")
    revoke_token.add_argument("token_id")
    revoke_token.set_defaults(command=revoke_registration_token)
    audit = sub.add_parser("audit", help="who changed what: tasks, deployments, keys, targets")
    audit.add_argument("--since", default="7d", help="e.g. 2h, 7d, or 2026-11-30T08:00")
    audit.add_argument("--key", help="only what this key (or 'token ID', 'target NAME') did")
    audit.add_argument("--limit", type=int, default=200)
    audit.set_defaults(command=show_audit)
    for parser in (create, listing, revoke, create_token, tokens, revoke_token, audit):
        add_common(parser)
        add_admin(parser)
        parser.add_argument("--server-home", help="use this server home's database directly")


@asynccontextmanager
async def access(args: argparse.Namespace) -> AsyncIterator[Access]:
    if (args.api_key or os.environ.get(f"{ENV_PREFIX}API_KEY")) and not args.server_home:
        async with admin_client(args) as client:
            yield client
        return
    from tentacle_poll.server.credentials import Credentials

    home = open_server_home(args)
    _, thumbprint = home.ensure_identity()
    store = await home.open_store()
    try:
        yield Credentials(store, thumbprint)
    finally:
        await store.close()


async def create_api_key(args: argparse.Namespace) -> int:
    request = ApiKeyCreate(name=args.name, scope=args.scope, environments=args.environment)
    async with access(args) as where:
        created = await where.create_key(request)
    print(created.key)
    return 0


async def list_api_keys(args: argparse.Namespace) -> int:
    async with access(args) as where:
        keys = await where.keys()
    for key in keys:
        limit = f" in {', '.join(key.environments)}" if key.environments else ""
        used = _when(key.last_used) if key.last_used else "never"
        by = f" by {key.created_by}" if key.created_by else ""
        print(f"{key.name}: {key.scope}{limit}; created {_when(key.created_at)}{by}; used {used}")
    return 0


async def revoke_api_key(args: argparse.Namespace) -> int:
    async with access(args) as where:
        await where.revoke_key(args.name)
    print(f"revoked the key {args.name}: it is refused from now on")
    return 0


async def create_registration_token(args: argparse.Namespace) -> int:
    if not 0 < args.ttl_hours <= 30 * 24:
        raise ConfigurationError("--ttl-hours must be more than 0 and at most 720 (30 days)")
    async with access(args) as where:
        created = await where.create_token(args.ttl_hours * 3600)
    print(created.token)
    return 0


async def list_tokens(args: argparse.Namespace) -> int:
    async with access(args) as where:
        tokens = await where.tokens()
    for token in tokens:
        by = f" by {token.created_by}" if token.created_by else ""
        print(
            f"{token.id}: created {_when(token.created_at)}{by}, expires {_when(token.expires_at)}"
        )
    return 0


async def revoke_registration_token(args: argparse.Namespace) -> int:
    async with access(args) as where:
        await where.revoke_token(args.token_id)
    print(f"revoked the token {args.token_id}")
    return 0


async def show_audit(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    async with access(args) as where:
        entries = await where.audit(since, args.key, args.limit)
    for entry in reversed(entries):  # oldest first, as a log reads
        detail = f" ({entry.detail})" if entry.detail else ""
        print(f"{_when(entry.at)}  {entry.key}: {entry.action} {entry.subject}{detail}")
    return 0


def parse_since(text: str) -> float:
    """``2h``, ``30m``, ``7d`` ago, or an ISO date/time (local time unless it says otherwise)."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if found:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
        return time.time() - float(found.group(1)) * unit
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigurationError(
            f"--since {text!r} is neither a duration (2h, 7d) nor a date (2026-11-30T08:00)"
        ) from None


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")
