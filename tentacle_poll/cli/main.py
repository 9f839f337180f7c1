"""The command line: parsing, logging set-up, and turning errors into messages and exit codes.

Commands live in the other modules of this package; each is a thin call into the
agent, the server or the admin client. Only this module prints errors and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import ValidationError

from tentacle_poll import __version__
from tentacle_poll.cli import agent, agent_config, deploy, fleet, server, service, tasks
from tentacle_poll.config import DEFAULT_ADMIN_PORT, ENV_PREFIX
from tentacle_poll.exceptions import ServerUnavailable, TentaclePollError
from tentacle_poll.logs import mask_secrets, setup_logging
from tentacle_poll.protocol.codec import describe_validation_error

LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141
EXIT_UNREACHABLE = 69  # sysexits' EX_UNAVAILABLE: the server (or admin API) could not be reached
Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Command = getattr(args, "command", agent.run_agent)
    try:
        setup_logging(args.log_level or "INFO", args.log_format or "text", log_file=args.log_file)
        code = asyncio.run(command(args))
        _ignore_late_stop_signals()
        return code
    except ServerUnavailable as exc:  # not the task's outcome: the server could not be reached
        print(f"error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TentaclePollError as exc:
        print(f"error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except ValidationError as exc:  # a value the wire models refuse, e.g. from a flag
        print(f"error: {mask_secrets(describe_validation_error(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return _pipe_closed()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        logger.remove()


def _ignore_late_stop_signals() -> None:
    """The command has ended and its loop closed, putting the default handlers back: a stop
    signal from now on (systemd's SIGTERM after an operator's Ctrl-C, say) would turn a clean
    exit into death by SIGTERM, or a KeyboardInterrupt. The process is ending by itself."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _pipe_closed() -> int:
    """``tentacle-poll task list | head -1``: the reader left; end quietly, as other Unix tools
    do (their status is 141, death by SIGPIPE), without Python's complaint at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE_CLOSED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tentacle-poll",
        description=(
            "A deployment agent (polling, or listening: docs/listening.md) and its server. "
            "With no command: run the agent."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tentacle-poll {__version__}")
    _add_common(parser)
    parser.set_defaults(home=None, log_format=None, log_level=None, log_file=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    agent.add_commands(commands, _add_common)
    agent_config.add_commands(commands, _add_common)
    server.add_commands(commands, _add_common, _add_admin)
    task_commands = tasks.add_commands(commands, _add_common, _add_admin)
    fleet.add_commands(commands, task_commands, _add_common, _add_admin)
    deploy.add_commands(commands, _add_common, _add_admin)
    service.add_commands(commands, _add_common)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a flag given before or after the command name counts, and a sub-command's
    # parser does not reset it to None.
    parser.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help=f"agent home folder (default ${ENV_PREFIX}HOME or ~/.tentacle_poll)",
    )
    parser.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS)
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
    parser.add_argument(
        "--log-file",
        type=Path,
        default=argparse.SUPPRESS,
        help="log to this file (rotated, see log_rotation_mb) instead of stderr",
    )


def _add_admin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-url",
        help=f"admin API address (default ${ENV_PREFIX}ADMIN_URL or http://127.0.0.1:{DEFAULT_ADMIN_PORT})",
    )
    parser.add_argument("--api-key", help=f"admin API key (better: ${ENV_PREFIX}API_KEY)")
