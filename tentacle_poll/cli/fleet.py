"""Fleet and task listings: `targets` (filters, pages, --json), `targets delete`, `task list`,
`deployments`."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from tentacle_poll.cli.context import admin_client
from tentacle_poll.config import DEFAULT_LISTENING_PORT, given_thumbprint
from tentacle_poll.exceptions import ConfigurationError, RequestRejected
from tentacle_poll.protocol.models import (
    AddListeningTarget,
    ListeningUrl,
    TargetView,
    TaskState,
)

if TYPE_CHECKING:
    from tentacle_poll.server.admin_client import AdminClient

LISTENING_URL: TypeAdapter[str] = TypeAdapter(ListeningUrl)
SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TARGET_ROW = "{:<20} {:<16} {:<16} {:<14} {:<9} {:<19} {:<8} {:<10} {}"


def add_commands(commands: Any, task_commands: Any, add_common: Any, add_admin: Any) -> None:
    """`targets` (and `targets delete`) at the top, `task list` among the task commands."""
    listing = task_commands.add_parser("list", help="list recent tasks")
    _add_task_list_filters(listing)
    deployments = commands.add_parser("deployments", help="list recent deployments")
    deployments.add_argument("--limit", type=int, default=20, help="at most this many (1-1000)")
    deployments.add_argument("--json", action="store_true", help="a JSON array, every field")
    deployments.set_defaults(command=list_deployments)
    for parser in [*_add_target_commands(commands), listing, deployments]:
        add_common(parser)
        add_admin(parser)


def _add_target_commands(commands: Any) -> list[argparse.ArgumentParser]:
    targets = commands.add_parser("targets", help="list registered targets (or delete some)")
    targets.add_argument("--environment", help="only targets in this environment")
    targets.add_argument("--role", help="only targets with this role")
    targets.add_argument("--tenant", help="only targets of this tenant")
    connection = targets.add_mutually_exclusive_group()
    connection.add_argument("--connected", action="store_true", help="only connected targets")
    connection.add_argument("--disconnected", action="store_true", help="only the others")
    targets.add_argument("--json", action="store_true", help="a JSON array, every field")
    targets.set_defaults(command=list_targets)
    sub = targets.add_subparsers(title="targets commands", metavar="COMMAND")
    delete = sub.add_parser("delete", help="remove targets: their certificates are refused")
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.set_defaults(command=delete_targets)
    return [targets, delete, _add_listening_target_command(sub)]


def _add_listening_target_command(sub: Any) -> argparse.ArgumentParser:
    add: argparse.ArgumentParser = sub.add_parser(
        "add", help="add a listening target: the server connects to it (docs/listening.md)"
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--listening", required=True, metavar="URL",
                     help="where the agent listens, https://HOST:10933")  # fmt: skip
    add.add_argument("--thumbprint", required=True, help="the agent's (its show-thumbprint)")
    add.add_argument("--environment", action="append", required=True, help="repeat for several")
    add.add_argument("--role", action="append", required=True, help="repeat for several")
    add.add_argument("--tenant", action="append", default=[])
    add.add_argument("--tenant-tag", action="append", default=[])
    add.add_argument("--replace", action="store_true", help="take over a name in use")
    add.set_defaults(command=add_listening_target)
    return add


def _add_task_list_filters(listing: argparse.ArgumentParser) -> None:
    listing.add_argument("--target")
    listing.add_argument(
        "--state", action="append", type=task_states, default=[],
        help="only tasks in these states (comma-separated or repeated)",
    )  # fmt: skip
    listing.add_argument("--since", type=since_time, help="created since: 30m, 2h, 7d or a date")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="a JSON array, every field")
    listing.set_defaults(command=list_tasks)


def task_states(text: str) -> list[str]:
    known = [state.value for state in TaskState]
    states = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in states if s not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown state {', '.join(unknown)}; use {', '.join(known)}"
        )
    return states


def since_time(text: str) -> float:
    """``30m``, ``2h``, ``7d`` ago, or a date and time (``2026-12-01``, ``2026-12-01T08:00``,
    local time unless it names its zone)."""
    if match := SINCE.fullmatch(text.strip()):
        return time.time() - float(match.group(1)) * SECONDS[match.group(2)]
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use 30m, 2h, 7d or a date such as 2026-12-01T08:00"
        ) from None


async def list_targets(args: argparse.Namespace) -> int:
    filters = {
        name: value
        for name, value in [("environment", args.environment), ("role", args.role),
                            ("tenant", args.tenant), ("connected", _connected(args))]
        if value is not None
    }  # fmt: skip
    async with admin_client(args) as client:
        if args.json:
            targets = [t async for page in client.target_pages(filters) for t in page]
            print(json.dumps([t.model_dump(mode="json") for t in targets], indent=2))
            return 0
        await _print_target_table(client, filters)
    return 0


async def _print_target_table(client: AdminClient, filters: dict[str, str]) -> None:
    """Each page printed as it comes; the header only once the server has answered (not above
    an error saying it could not be reached)."""
    header: str | None = TARGET_ROW.format("NAME", "ENVIRONMENTS", "ROLES", "TENANTS",
        "CONNECTED", "LAST SEEN", "VERSION", "EXPIRES", "THUMBPRINT")  # fmt: skip
    async for page in client.target_pages(filters):
        if header is not None:
            print(header)
            header = None
        for target in page:
            print(_target_row(target))
            if target.listening_url:
                print(f"  {_listening_line(target)}")


def _connected(args: argparse.Namespace) -> str | None:
    return "true" if args.connected else "false" if args.disconnected else None


def _target_row(t: TargetView) -> str:
    return TARGET_ROW.format(
        t.name, ",".join(t.environments), ",".join(t.roles), ",".join(t.tenants) or "-",
        "yes" if t.connected else "no", local_time(t.last_seen), t.agent_version or "-",
        local_time(t.certificate_expires_at)[:10], t.thumbprint,
    )  # fmt: skip


async def add_listening_target(args: argparse.Namespace) -> int:
    body = AddListeningTarget(
        name=args.name, listening_url=listening_url(args.listening),
        thumbprint=given_thumbprint(args.thumbprint, "--thumbprint"),
        environments=args.environment, roles=args.role, tenants=args.tenant,
        tenant_tags=args.tenant_tag, replace=args.replace,
    )  # fmt: skip
    async with admin_client(args) as client:
        target = await client.add_listening_target(body)
    where, certificate = target.listening_url, target.thumbprint
    print(f"added {target.name}: the server connects to {where} and trusts the certificate "
          f"{certificate} there; `tentacle-poll targets` shows how it goes")  # fmt: skip
    return 0


def listening_url(text: str) -> str:
    """``https://HOST:PORT`` of a listening agent (the port defaults to 10933), checked as the
    API checks it."""
    scheme, has_scheme, rest = text.strip().rstrip("/").partition("://")
    if not has_scheme or scheme.lower() != "https":
        raise ConfigurationError(
            f"--listening {text!r}: give the agent's address as https://HOST:"
            f"{DEFAULT_LISTENING_PORT} (the port it listens on, `tentacle-poll listen` there)"
        )
    if not re.search(r":\d{1,5}$", rest):
        rest = f"{rest}:{DEFAULT_LISTENING_PORT}"
    try:
        return LISTENING_URL.validate_python(f"https://{rest}")
    except ValidationError:
        raise ConfigurationError(
            f"--listening {text!r} is not https://HOST:PORT (no path; a port of 1-65535; an "
            f"IPv6 address in brackets: https://[::1]:{DEFAULT_LISTENING_PORT})"
        ) from None


def _listening_line(t: TargetView) -> str:
    """A listening target's second line: where, and how the last connection went."""
    last = t.last_connection
    if last is None:
        how = "not tried yet"
    elif last.ok:
        how = f"last connection worked at {local_time(last.at)}"
    else:
        how = f"unreachable at {local_time(last.at)}: {last.detail}"
    return f"listening at {t.listening_url}; {how}"


async def delete_targets(args: argparse.Namespace) -> int:
    """Deletes them all at once: the server removes their certificates with shared rebuilds."""
    async with admin_client(args) as client:
        deletions = [client.delete_target(name) for name in args.names]
        outcomes = await asyncio.gather(*deletions, return_exceptions=True)
    failed = 0
    for name, outcome in zip(args.names, outcomes, strict=True):
        if isinstance(outcome, RequestRejected):
            print(f"error: {name}: {outcome}", file=sys.stderr)
            failed += 1
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            print(f"deleted {name}")
    return 1 if failed else 0


async def list_tasks(args: argparse.Namespace) -> int:
    filters = {"state": ",".join(s for group in args.state for s in group)} if args.state else {}
    if args.since is not None:
        filters["since"] = f"{args.since:.3f}"
    async with admin_client(args) as client:
        tasks = await client.tasks(args.target, args.limit, **filters)
    if args.json:
        print(json.dumps([task.model_dump(mode="json") for task in tasks], indent=2))
        return 0
    for task in tasks:
        print(f"{task.id:<22} {task.target:<20} {task.state:<10} {local_time(task.created_at)}")
    return 0


async def list_deployments(args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        listed = await client.deployments(args.limit)
    if args.json:
        print(json.dumps([d.model_dump(mode="json") for d in listed], indent=2))
        return 0
    for d in listed:
        counts = ", ".join(f"{count} {state}" for state, count in sorted(d.counts.items()))
        print(f"{d.id:<24} {d.state:<10} {local_time(d.created_at)}  {d.description} [{counts}]")
    return 0


def local_time(stamp: float | None) -> str:
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "never"
