"""Where commands find what they act on: the admin API (its client, from flags or the
environment) and the server home. Shared by the command modules, so none imports another."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tentacle_poll.config import (
    DEFAULT_ADMIN_PORT,
    ENV_PREFIX,
    LoggingSettings,
    admin_url,
    default_server_home,
)
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.logs import setup_logging

if TYPE_CHECKING:  # both load aiohttp or sqlite3: the agent daemon never needs them
    from tentacle_poll.server.admin_client import AdminClient
    from tentacle_poll.server.identity import ServerHome


def admin_client(args: argparse.Namespace) -> AdminClient:
    from tentacle_poll.server.admin_client import AdminClient

    url = admin_url(
        args.admin_url
        or os.environ.get(f"{ENV_PREFIX}ADMIN_URL")
        or f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}"
    )
    key = args.api_key or os.environ.get(f"{ENV_PREFIX}API_KEY")
    if not key:
        raise ConfigurationError(
            f"an API key is needed: set {ENV_PREFIX}API_KEY or pass --api-key "
            "(create one with `tentacle-poll server api-key create --name NAME`)"
        )
    client = AdminClient(url, key)
    client.on_reconnect = lambda text: print(f"note: {text}", file=sys.stderr, flush=True)
    return client


def open_server_home(args: argparse.Namespace) -> ServerHome:
    # Imported here: the store and its sqlite3 stay out of the agent daemon's memory.
    from tentacle_poll.server.identity import ServerHome

    return ServerHome(server_home(args))


def server_home(args: argparse.Namespace) -> Path:
    os.umask(0o077)  # everything a server command writes in its home is private to its user
    return Path(args.server_home).expanduser() if args.server_home else default_server_home()


def setup_logging_from(args: argparse.Namespace, settings: LoggingSettings) -> None:
    """The logging the settings ask for; flags given on the command line win."""
    setup_logging(
        args.log_level or settings.log_level,
        args.log_format or settings.log_format,
        log_file=log_file_of(args, settings),
        rotation_mb=settings.log_rotation_mb,
        retention_files=settings.log_retention_files,
    )


def log_file_of(args: argparse.Namespace, settings: LoggingSettings) -> Path | None:
    """The --log-file flag, else the log_file setting; None: stderr."""
    given = getattr(args, "log_file", None) or settings.log_file
    return Path(given).expanduser().absolute() if given else None
