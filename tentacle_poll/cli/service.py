"""Service commands: service install, uninstall, status, start, stop (systemd)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from tentacle_poll.config import (
    AGENT_FILE,
    SERVER_FILE,
    AgentSettings,
    ServerSettings,
    default_agent_home,
    default_server_home,
    load_settings,
)
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.service import systemd
from tentacle_poll.service.units import (
    DEFAULT_USER,
    LOW_PORT,
    Role,
    ServiceSpec,
    default_unit_name,
    render_unit,
    unit_name,
)

CONTROLS = ("status", "start", "stop")
SERVER_STOP_SECONDS = 30
STOP_MARGIN_SECONDS = 15  # past the agent's drain and cancel grace: time to post the results


def add_commands(commands: Any, add_common: Any) -> None:
    service = commands.add_parser(
        "service", help="install and run the agent or server as a systemd service"
    )
    sub = service.add_subparsers(title="service commands", metavar="COMMAND", required=True)
    parsers = [_install_parser(sub)]
    uninstall = sub.add_parser(
        "uninstall", help="stop, disable and remove the unit (the home stays)"
    )
    uninstall.set_defaults(command=uninstall_service)
    parsers.append(uninstall)
    for action in CONTROLS:
        control = sub.add_parser(action, help=f"systemctl {action} for the unit")
        control.set_defaults(command=control_service, action=action)
        parsers.append(control)
    for parser in parsers:
        _add_service_options(parser)
        add_common(parser)


def _install_parser(sub: Any) -> argparse.ArgumentParser:
    install: argparse.ArgumentParser = sub.add_parser(
        "install", help="write a hardened unit, enable and start it"
    )
    install.add_argument(
        "--user", default=DEFAULT_USER, help=f"run as this user (default {DEFAULT_USER})"
    )
    install.add_argument(
        "--create-user", action="store_true", help="create --user as a system user if missing"
    )
    install.add_argument("--dry-run", action="store_true", help="print the unit; change nothing")
    install.add_argument("--no-start", action="store_true", help="enable but do not start it now")
    install.set_defaults(command=install_service)
    return install


def _add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", action="store_true", help="the server's unit (default: the agent's)"
    )
    parser.add_argument(
        "--name", help="unit name (default tentacle-poll-agent or tentacle-poll-server)"
    )
    parser.add_argument("--server-home", help="server home folder (with --server)")
    parser.add_argument(
        "--unit-dir",
        type=Path,
        default=systemd.UNIT_FOLDER,
        help="where units go (default %(default)s)",
    )


async def install_service(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if args.dry_run:
        sys.stdout.write(render_unit(spec))
        return 0
    if not args.server and not load_settings(AgentSettings, spec.home / AGENT_FILE).servers:
        raise ConfigurationError(
            f"the agent home {spec.home} is not registered with a server yet: run "
            f"`tentacle-poll --home {spec.home} register ...` first, then install the service"
        )
    systemd.install(
        spec, args.unit_dir, start=not args.no_start, create_user=args.create_user, say=print
    )
    return 0


async def uninstall_service(args: argparse.Namespace) -> int:
    systemd.uninstall(_name(args), args.unit_dir, say=print)
    return 0


async def control_service(args: argparse.Namespace) -> int:
    return systemd.control(args.action, _name(args))


def _role(args: argparse.Namespace) -> Role:
    return "server" if args.server else "agent"


def _name(args: argparse.Namespace) -> str:
    return unit_name(args.name) if args.name else default_unit_name(_role(args))


def _spec(args: argparse.Namespace) -> ServiceSpec:
    home = _home(args)
    if args.server:
        server = load_settings(ServerSettings, home / SERVER_FILE)
        stop_seconds = SERVER_STOP_SECONDS
        low_ports = min(server.comms_port, server.admin_port) < LOW_PORT
    else:
        agent = load_settings(AgentSettings, home / AGENT_FILE)
        stop_seconds = (
            math.ceil(agent.drain_seconds + agent.cancel_grace_seconds) + STOP_MARGIN_SECONDS
        )
        low_ports = False
    return ServiceSpec(
        role=_role(args),
        name=_name(args),
        home=home,
        user=args.user,
        python=Path(sys.executable),
        python_paths=_python_paths(),
        stop_timeout_seconds=stop_seconds,
        low_ports=low_ports,
    )


def _python_paths() -> tuple[Path, ...]:
    """The virtualenv, the installation it was made from, and the real interpreter's."""
    real = Path(sys.executable).resolve().parent.parent
    return tuple(dict.fromkeys([Path(sys.prefix), Path(sys.base_prefix), real]))


def _home(args: argparse.Namespace) -> Path:
    """Absolute: the unit runs with another working folder and user than this command."""
    if args.server:
        given = args.server_home
        return (Path(given).expanduser() if given else default_server_home()).absolute()
    return (Path(args.home).expanduser() if args.home else default_agent_home()).absolute()
