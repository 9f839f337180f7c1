"""Agent commands: run (the default), new-certificate, register, show-thumbprint, show-config."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from loguru import logger

from tentacle_poll.agent.connections.leaving import delete_home, deregister, stop_daemon
from tentacle_poll.agent.connections.registration import Registration, register
from tentacle_poll.agent.daemon import Agent
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.agent.reload import reload_settings
from tentacle_poll.cli.context import log_file_of, setup_logging_from
from tentacle_poll.config import ENV_PREFIX, AgentSettings, default_agent_home
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.service.systemd import units_running
from tentacle_poll.tls import (
    certificate_expiry,
    expiry_warning,
    generate_identity,
    load_identity,
    save_identity,
)
from tentacle_poll.workers.cgroups import CgroupRoot, describe

EXIT_NOW = 3
# sysexits' EX_CONFIG: every server refuses this agent (its target was deleted); the service
# unit does not restart on it (RestartPreventExitStatus=78).
EXIT_UNREGISTERED = 78


def add_commands(commands: Any, add_common: Any) -> None:
    run = commands.add_parser("run", help="run the agent daemon (the default command)")
    run.add_argument("--concurrency", type=int, help="how many tasks may run at once")
    run.set_defaults(command=run_agent)
    new_cert = commands.add_parser("new-certificate", help="make this agent's key and certificate")
    new_cert.add_argument("--force", action="store_true", help="replace an existing certificate")
    new_cert.set_defaults(command=new_certificate)
    _add_register(commands)
    show = commands.add_parser("show-thumbprint", help="print this agent's certificate thumbprint")
    show.set_defaults(command=show_thumbprint)
    config = commands.add_parser("show-config", help="print this agent's settings")
    config.set_defaults(command=show_config)
    leave = commands.add_parser(
        "deregister", help="stop this agent, remove its target from its servers, delete its home"
    )
    leave.add_argument("--keep-home", action="store_true", help="keep the home folder")
    leave.add_argument(
        "--local-only",
        action="store_true",
        help="ask no server (its target is deleted there already, or the server is gone for "
        "good): only stop this agent and delete its home",
    )
    leave.set_defaults(command=deregister_agent)
    for parser in (run, new_cert, show, config, leave):
        add_common(parser)


def _add_register(commands: Any) -> None:
    reg = commands.add_parser("register", help="register this agent with a server")
    reg.add_argument(
        "--server", required=True, help="comms address, e.g. https://deploy.example:10943"
    )
    reg.add_argument("--server-thumbprint", help="the server's thumbprint (server show-thumbprint)")
    reg.add_argument("--api-key", help=f"an API key (better: ${ENV_PREFIX}API_KEY)")
    reg.add_argument("--token", help="a one-time registration token (carries the thumbprint)")
    reg.add_argument(
        "--trust-on-first-use", action="store_true", help="pin whatever the server presents"
    )
    reg.add_argument("--server-name", help="TLS server name (SNI) when it differs from the host")
    reg.add_argument("--name", help="this target's name (default: the host name)")
    reg.add_argument("--environment", action="append", required=True, help="repeat for several")
    reg.add_argument("--role", action="append", required=True, help="repeat for several")
    reg.add_argument("--tenant", action="append", default=[])
    reg.add_argument("--tenant-tag", action="append", default=[])
    reg.add_argument(
        "--replace",
        action="store_true",
        help="take over a name registered with another certificate",
    )
    reg.set_defaults(command=register_agent)
    reg.add_argument("--home", default=argparse.SUPPRESS)


def agent_home(args: argparse.Namespace) -> AgentHome:
    folder = Path(args.home).expanduser() if args.home else default_agent_home()
    return AgentHome(folder.resolve())


async def run_agent(args: argparse.Namespace) -> int:
    home = agent_home(args)
    settings = home.settings_ready_to_run(concurrency=getattr(args, "concurrency", None))
    setup_logging_from(args, settings)
    expires = certificate_expiry(load_identity(home.identity_folder).cert_pem)
    warning = expiry_warning(expires, "this agent's certificate")
    if warning:
        logger.warning("{} (`tentacle-poll rotate-certificate`)", warning)
    agent = Agent(home, settings)
    install_stop_signals(agent.escalate)
    install_reload_signal(agent, args)
    await agent.run()
    return EXIT_UNREGISTERED if agent.unregistered_by else 0


def install_reload_signal(agent: Agent, args: argparse.Namespace) -> None:
    """SIGHUP re-reads the settings (agent/reload.py); a --log-level flag keeps winning."""

    def apply_logging(settings: AgentSettings) -> None:
        # Said where the log was, so whoever watches it learns where it went.
        logger.info("SIGHUP: logging to {} from now on", log_file_of(args, settings) or "stderr")
        setup_logging_from(args, settings)

    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, reload_settings, agent, apply_logging
    )


def install_stop_signals(escalate: Any) -> None:
    """Each SIGTERM/SIGINT takes one more step: drain, cancel running tasks, exit now."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        level = escalate()
        name = "interrupted (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
        if level == 1:
            logger.warning("{}: stopping; running tasks may finish (again: cancel them)", name)
        elif level == 2:
            logger.warning("{}: cancelling running tasks (again: exit at once)", name)
        elif level >= EXIT_NOW:
            logger.warning("{}: exiting now", name)
            os._exit(130)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def new_certificate(args: argparse.Namespace) -> int:
    home = agent_home(args)
    if home.has_identity() and not args.force:
        raise ConfigurationError(
            f"this agent already has a certificate in {home.identity_folder} "
            f"(thumbprint {load_identity(home.identity_folder).thumbprint}); "
            "pass --force to replace it, then register again"
        )
    identity = generate_identity(os.uname().nodename)
    save_identity(home.identity_folder, identity)
    print(f"certificate created in {home.identity_folder}\nthumbprint {identity.thumbprint}")
    return 0


def ensure_identity(home: AgentHome) -> str:
    """This agent's thumbprint, making its key and certificate first if it has none."""
    if not home.has_identity():
        save_identity(home.identity_folder, generate_identity(os.uname().nodename))
    return load_identity(home.identity_folder).thumbprint


async def register_agent(args: argparse.Namespace) -> int:
    home = agent_home(args)
    if not home.has_identity():
        raise ConfigurationError(
            "this agent has no certificate yet; run `tentacle-poll new-certificate` first"
        )
    details = Registration(
        server_url=args.server,
        name=args.name or os.uname().nodename,
        environments=args.environment,
        roles=args.role,
        tenants=args.tenant,
        tenant_tags=args.tenant_tag,
        server_thumbprint=args.server_thumbprint,
        api_key=args.api_key or os.environ.get(f"{ENV_PREFIX}API_KEY") if not args.token else None,
        token=args.token,
        trust_on_first_use=args.trust_on_first_use,
        replace=args.replace,
        server_name=args.server_name,
    )
    answer = await register(home, details)
    print(f"registered as {answer.name} with server {answer.server_thumbprint}")
    print(f"start the agent with: tentacle-poll --home {home.folder}")
    return 0


async def show_thumbprint(args: argparse.Namespace) -> int:
    identity = load_identity(agent_home(args).identity_folder)
    print(identity.thumbprint)
    return 0


async def show_config(args: argparse.Namespace) -> int:
    home = agent_home(args)
    settings = home.settings()
    print(f"home: {home.folder}")
    if home.has_identity():
        identity = load_identity(home.identity_folder)
        print(f"thumbprint: {identity.thumbprint}")
        print(f"certificate expires: {certificate_expiry(identity.cert_pem):%Y-%m-%d}")
    print(f"tasks run in: {describe(CgroupRoot.find(home.folder, make=False))}")
    print(json.dumps(settings.model_dump(mode="json"), indent=2))  # secrets show as ********
    return 0


async def _leave_servers(home: AgentHome, settings: AgentSettings, local_only: bool) -> list[str]:
    if local_only:
        return ["asked no server: if its target is still there, delete it there "
                "(`tentacle-poll targets delete NAME`)"]  # fmt: skip
    return await deregister(home, settings)


async def deregister_agent(args: argparse.Namespace) -> int:
    home = agent_home(args)
    settings = home.settings()
    stopped = await stop_daemon(home, settings)
    if stopped is not None:
        print(f"stopped the agent (pid {stopped}) after it delivered what it had")
    for line in await _leave_servers(home, settings, args.local_only):
        print(line)
    if args.keep_home:
        print(f"kept {home.folder}" + ("" if args.local_only else
              ": its identity is no longer registered anywhere"))  # fmt: skip
    else:
        delete_home(home)
        print(f"deleted {home.folder}")
    for unit in units_running(home.folder):
        print(f"the service {unit} ran this agent: remove it with "
              f"`tentacle-poll service uninstall --name {unit}`")  # fmt: skip
    return 0
