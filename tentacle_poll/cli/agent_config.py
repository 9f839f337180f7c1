"""Agent configuration commands: proxy, poll-server, trust, listen, rotate-certificate,
diagnose."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pydantic import ValidationError

from tentacle_poll.agent.connections.nodes import (
    add_node,
    find_node,
    remove_node,
    set_listening,
    set_proxy,
    set_trust,
)
from tentacle_poll.agent.connections.rotation import rotate_certificate
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.cli.agent import agent_home, ensure_identity
from tentacle_poll.config import (
    DEFAULT_LISTENING_PORT,
    ENV_PREFIX,
    ListeningSettings,
    ProxySettings,
    ServerNode,
)
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.keepalive import listening_socket
from tentacle_poll.protocol.codec import describe_validation_error
from tentacle_poll.refusals import address_text


def add_commands(commands: Any, add_common: Any) -> None:
    proxy = commands.add_parser("proxy", help="how the agent reaches its servers")
    proxy.add_argument(
        "--mode",
        required=True,
        choices=["none", "system", "explicit"],
        help="none: direct; system: HTTPS_PROXY/NO_PROXY; explicit: the proxy below",
    )
    proxy.add_argument("--host")
    proxy.add_argument("--port", type=int)
    proxy.add_argument("--username")
    proxy.add_argument(
        "--password",
        help=f"stored in agent.toml (0600); better: ${ENV_PREFIX}PROXY_PASSWORD in the agent's "
        "environment, read at run time and never stored",
    )
    proxy.set_defaults(command=configure_proxy)
    nodes = commands.add_parser("poll-server", help="the server nodes this agent polls")
    sub = nodes.add_subparsers(title="poll-server commands", metavar="COMMAND", required=True)
    add = sub.add_parser("add", help="poll one more node of a server sharing one store (HA)")
    add.add_argument("--server", required=True, help="https://HOST:PORT of the node")
    add.add_argument("--server-thumbprint", required=True)
    add.add_argument("--server-name", help="TLS server name (SNI) when it differs from HOST")
    add.set_defaults(command=add_server)
    remove = sub.add_parser("remove", help="stop polling a node")
    remove.add_argument("--server", required=True)
    remove.set_defaults(command=remove_server)
    listing = sub.add_parser("list", help="the nodes this agent polls")
    listing.set_defaults(command=list_servers)
    trust = commands.add_parser("trust", help="change the server thumbprints a node is pinned to")
    trust.add_argument("--server", required=True)
    trust.add_argument("--add", action="append", default=[], metavar="THUMBPRINT")
    trust.add_argument("--remove", action="append", default=[], metavar="THUMBPRINT")
    trust.set_defaults(command=change_trust)
    listen = _add_listen(commands)
    rotate = commands.add_parser("rotate-certificate", help="replace this agent's certificate")
    rotate.set_defaults(command=rotate_agent_certificate)
    check = commands.add_parser("diagnose", help="check the way to each server, step by step")
    check.add_argument("--server", help="only this node")
    check.set_defaults(command=run_diagnostics)
    for parser in (proxy, add, remove, listing, trust, listen, rotate, check):
        add_common(parser)


def _add_listen(commands: Any) -> argparse.ArgumentParser:
    listen: argparse.ArgumentParser = commands.add_parser(
        "listen", help="listening mode: the server connects to this agent (docs/listening.md)"
    )
    listen.add_argument(
        "--server-thumbprint", action="append", default=[], metavar="THUMBPRINT",
        help="the server's (server show-thumbprint); repeat to trust several (a rotation)",
    )  # fmt: skip
    listen.add_argument(
        "--port", type=int, default=DEFAULT_LISTENING_PORT, help="the port (default 10933)"
    )
    listen.add_argument("--host", default="0.0.0.0", help="the address to listen on (default: all)")
    listen.add_argument("--off", action="store_true", help="stop listening (polling stays)")
    listen.set_defaults(command=configure_listening)
    return listen


async def configure_listening(args: argparse.Namespace) -> int:
    home = agent_home(args)
    if args.off:
        set_listening(home, None)
        print("not listening from the next start of the agent")
        return 0
    if not args.server_thumbprint:
        raise ConfigurationError(
            "--server-thumbprint is needed: the agent talks only to the server presenting it "
            "(`tentacle-poll server show-thumbprint` on the server)"
        )
    first, *others = args.server_thumbprint
    values = {"host": args.host, "port": args.port, "server_thumbprint": first,
              "also_trusted": others}  # fmt: skip
    try:
        listening = ListeningSettings.model_validate(values)
    except ValidationError as exc:
        raise ConfigurationError(f"listen: {describe_validation_error(exc)}") from None
    thumbprint = ensure_identity(home)
    if thumbprint in listening.thumbprints:
        raise ConfigurationError(
            f"--server-thumbprint {thumbprint} is this agent's own; give the server's "
            "(`tentacle-poll server show-thumbprint` on the server)"
        )
    set_listening(home, listening)
    print(f"listening on {listening.address} from the next start of the agent, "
          f"for the server {', '.join(listening.thumbprints)}")  # fmt: skip
    print(f"this agent's thumbprint: {thumbprint}")
    print(f"on the server: tentacle-poll targets add NAME --listening https://"
          f"{_reachable_address(listening)} --thumbprint {thumbprint} "
          "--environment ENV --role ROLE")  # fmt: skip
    return 0


def _reachable_address(listening: ListeningSettings) -> str:
    """Where the server may reach this agent, as far as it can tell: the address it listens on,
    or the host's name when it listens on every address."""
    host = os.uname().nodename if listening.on_every_address else listening.host
    return address_text((host, listening.port))


async def configure_proxy(args: argparse.Namespace) -> int:
    home = agent_home(args)
    password = args.password  # the environment's is read at run time, never stored
    values = {
        "mode": args.mode,
        "host": args.host,
        "port": args.port,
        "username": args.username,
        "password": password,
    }
    try:
        proxy = ProxySettings.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ConfigurationError(f"proxy settings: {describe_validation_error(exc)}") from None
    set_proxy(home, proxy)
    print(f"proxy: {_describe_proxy(proxy)}")
    if os.environ.get(f"{ENV_PREFIX}PROXY_PASSWORD") and not args.password:
        print(f"password: from ${ENV_PREFIX}PROXY_PASSWORD at run time (not stored)")
    return 0


async def add_server(args: argparse.Namespace) -> int:
    home = agent_home(args)
    node = ServerNode(
        url=args.server, thumbprint=args.server_thumbprint, server_name=args.server_name
    )
    add_node(home, node)
    print(f"polling {node.url} from the next start of the agent")
    return 0


async def remove_server(args: argparse.Namespace) -> int:
    remove_node(agent_home(args), args.server)
    print(f"no longer polling {args.server} from the next start of the agent")
    return 0


async def list_servers(args: argparse.Namespace) -> int:
    for node in agent_home(args).settings().servers:
        name = f" (server name {node.server_name})" if node.server_name else ""
        learnt = " (announced by its cluster)" if node.discovered else ""
        print(f"{node.url}{name}{learnt}: {', '.join(node.thumbprints)}")
    return 0


async def change_trust(args: argparse.Namespace) -> int:
    node = set_trust(agent_home(args), args.server, args.add, args.remove)
    print(f"{node.url} pinned to {', '.join(node.thumbprints)}")
    return 0


async def rotate_agent_certificate(args: argparse.Namespace) -> int:
    home = agent_home(args)
    identity = await rotate_certificate(home, home.settings_ready_to_run())
    print(f"new certificate {identity.thumbprint}; a running agent uses it from its next poll")
    return 0


async def run_diagnostics(args: argparse.Namespace) -> int:
    from tentacle_poll.agent.connections.diagnostics import diagnose  # only this command needs it

    home = agent_home(args)
    settings = home.settings_ready_to_run()
    nodes = [find_node(home, args.server)] if args.server else settings.servers
    all_ok = True
    if settings.listen is not None and not args.server:
        all_ok = _diagnose_listening(home, settings.listen)
    for node in nodes:
        print(f"{node.url} (proxy: {_describe_proxy(settings.proxy)})")
        for step in await diagnose(home, settings, node):
            print(f"  {'ok  ' if step.ok else 'FAIL'} {step.name}: {step.detail}")
            if step.advice:
                print(f"       what to do: {step.advice}")
            all_ok = all_ok and step.ok
    return 0 if all_ok else 1


def _diagnose_listening(home: AgentHome, listening: ListeningSettings) -> bool:
    """The agent's side of listening mode: its port. The rest is the server's to see
    (`tentacle-poll targets` there says how its last connection went)."""
    print(f"listening on {listening.address} for the server {', '.join(listening.thumbprints)}")
    pid = home.running_daemon()
    try:
        listening_socket(listening.host, listening.port).close()
        ok, detail = True, "free: the agent daemon is not running (start it: `tentacle-poll`)"
    except OSError as exc:
        ok = pid is not None
        detail = f"held by the running agent (pid {pid})" if ok else f"cannot be used: {exc}"
    print(f"  {'ok  ' if ok else 'FAIL'} port: {detail}")
    print("       the server's side: `tentacle-poll targets` there shows its last connection")
    return ok


def _describe_proxy(proxy: ProxySettings) -> str:
    if proxy.mode != "explicit":
        return proxy.mode
    user = f"{proxy.username}:********@" if proxy.username else ""
    return f"http://{user}{proxy.host}:{proxy.port}"
