"""Server commands: server run, show-thumbprint, api-key create, token create."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from tentacle_poll.cli.access import add_access_commands
from tentacle_poll.cli.context import (
    admin_client,
    open_server_home,
    server_home,
    setup_logging_from,
)
from tentacle_poll.config import SERVER_FILE, ServerSettings, load_settings

if TYPE_CHECKING:
    pass

DAY = 24 * 3600.0


def add_commands(commands: Any, add_common: Any, add_admin: Any) -> None:
    server = commands.add_parser("server", help="run and administer the server")
    sub = server.add_subparsers(title="server commands", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run the server")
    run.add_argument("--comms-host")
    run.add_argument("--comms-port", type=int, help="agents connect here (default 10943)")
    run.add_argument("--admin-host")
    run.add_argument("--admin-port", type=int, help="the admin API (default 10944)")
    run.add_argument("--hold-seconds", type=float, help="how long a poll is held (default 25)")
    run.add_argument(
        "--migrate", action="store_true", help="apply the database's schema migrations first"
    )
    run.set_defaults(command=run_server)
    thumb = sub.add_parser("show-thumbprint", help="print the server's certificate thumbprint")
    thumb.set_defaults(command=show_thumbprint)
    migrate = sub.add_parser(
        "migrate", help="bring the database's schema up to this version (back it up first)"
    )
    migrate.set_defaults(command=migrate_store)
    add_access_commands(sub, add_common, add_admin)
    for parser in (run, thumb, migrate):
        add_common(parser)
        parser.add_argument(
            "--server-home", help="server home folder (default ~/.tentacle_poll_server)"
        )
    master = sub.add_parser("master-key", help="the key that seals sensitive values at rest")
    master_sub = master.add_subparsers(metavar="COMMAND", required=True)
    rotate_key = master_sub.add_parser("rotate", help="make a new key and re-seal queued values")
    rotate_key.set_defaults(command=rotate_master_key)
    add_common(rotate_key)
    rotate_key.add_argument("--server-home", help="server home folder")
    prune = sub.add_parser("prune", help="remove tasks that ended long ago, now (admin API)")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    prune.add_argument(
        "--older-than", type=float, metavar="DAYS", help="instead of the server's retention_days"
    )
    prune.set_defaults(command=prune_old_tasks)
    add_common(prune)
    add_admin(prune)
    rotate = sub.add_parser("rotate-certificate", help="rotate the server certificate (admin API)")
    rotate.add_argument("action", choices=["show", "prepare", "activate", "cancel"])
    rotate.add_argument(
        "--force", action="store_true", help="activate even if targets are not ready"
    )
    rotate.set_defaults(command=rotate_server_certificate)
    add_common(rotate)
    add_admin(rotate)


def loopback_server_arguments(home: Path, comms_port: int, admin_port: int) -> list[str]:
    """``tentacle-poll`` arguments that run the server of ``home`` on loopback ports (the demo
    and the tests start servers this way)."""
    return [
        "server",
        "run",
        "--server-home",
        str(home),
        "--comms-host",
        "127.0.0.1",
        "--comms-port",
        str(comms_port),
        "--admin-port",
        str(admin_port),
    ]


async def run_server(args: argparse.Namespace) -> int:
    home = server_home(args)
    settings = load_settings(
        ServerSettings,
        home / SERVER_FILE,
        comms_host=args.comms_host,
        comms_port=args.comms_port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        hold_seconds=args.hold_seconds,
    )
    setup_logging_from(args, settings)
    from tentacle_poll.server.app import Server  # lazy: only this command runs a server

    _raise_open_files_limit()
    server = Server(settings, home, migrate=args.migrate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stopper(stop, signum))
    await server.serve(stop)
    return 0


async def migrate_store(args: argparse.Namespace) -> int:
    """Applies the migrations the store needs, holding the home's lock (no server may run on
    this home meanwhile; nodes of a cluster on other homes must be stopped: see the docs)."""
    home = open_server_home(args)
    with home.lock():
        store = await home.open_store(migrate=True)
        change = store.schema_change
        await store.close()
    if change is None or change[0] == change[1]:
        print("the database's schema is up to date; nothing to migrate")
    elif change[0] == 0:
        print(f"the database was empty: made at schema version {change[1]}")
    else:
        print(f"the database was migrated from schema version {change[0]} to {change[1]}")
    return 0


def _raise_open_files_limit() -> None:
    """One held connection per agent: allow as many files as the system lets this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logger.info("open files limit: {} (about one per connected agent)", hard)


def _stopper(stop: asyncio.Event, signum: int) -> Any:
    def on_signal() -> None:
        logger.warning("{}: stopping the server", signal.Signals(signum).name)
        stop.set()

    return on_signal


async def show_thumbprint(args: argparse.Namespace) -> int:
    _, thumbprint = open_server_home(args).ensure_identity()
    print(thumbprint)
    return 0


async def rotate_master_key(args: argparse.Namespace) -> int:
    from tentacle_poll.server.vault import KEY_FILE, Vault, add_key

    home = open_server_home(args)
    home.make_private()
    key_id = add_key(home.folder / KEY_FILE)
    vault = Vault.open(home.folder)
    store = await home.open_store()
    try:
        specs = await store.unfinished_specs()
        for task_id, spec_json in specs:
            await store.replace_spec(task_id, vault.reseal_spec(spec_json))
    finally:
        await store.close()
    print(f"master key {key_id} is now current; {len(specs)} unfinished tasks re-sealed with it")
    print(f"back up {home.folder / KEY_FILE} again: it holds the new key")
    return 0


async def rotate_server_certificate(args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        if args.action == "show":
            view = await client.server_certificate()
        else:
            view = await client.change_server_certificate(args.action, args.force)
    expires = dt.datetime.fromtimestamp(view.expires_at)
    print(f"current: {view.thumbprint} (expires {expires:%Y-%m-%d})")
    if view.next_thumbprint:
        print(f"next:    {view.next_thumbprint} (announced to agents; activate when all trust it)")
    return 0


async def prune_old_tasks(args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        view = await client.prune(args.dry_run, args.older_than)
    ended = dt.datetime.fromtimestamp(view.cutoff)
    verb = "removed" if view.removed else "would remove"
    print(
        f"{verb} {view.tasks} tasks (with their output) and {view.deployments} deployments "
        f"that ended before {ended:%Y-%m-%d %H:%M} ({view.older_than_days:g} days ago)"
    )
    return 0
