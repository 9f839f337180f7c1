"""Deployment commands, through the admin API: deploy, rollback, health — to one target
(`--target`) or fanned out to every target of an environment with any of the given roles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tentacle_poll.cli.context import admin_client
from tentacle_poll.cli.progress import follow_deployment, follow_one
from tentacle_poll.cli.tasks import (
    EXIT_CODES,
    EXIT_STOPPED_WAITING,
    add_deadline_arguments,
    package_name,
    positive_int,
    print_event,
    print_task,
    variables_from,
)
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.protocol.models import (
    DeploySpec,
    FanOut,
    FetchFileSpec,
    HealthSpec,
    RollbackSpec,
    SendFileSpec,
    SubmitTask,
    TaskSpec,
)

if TYPE_CHECKING:  # the admin client loads aiohttp: only admin commands import it
    from tentacle_poll.server.admin_client import AdminClient


def add_commands(commands: Any, add_common: Any, add_admin: Any) -> None:
    deploy = commands.add_parser("deploy", help="deploy a package version")
    deploy.add_argument("--package", required=True, type=package_name)
    deploy.add_argument("--version", required=True, type=package_name)
    deploy.add_argument(
        "--retain", type=positive_int, default=3, help="releases to keep on each target (1-100)"
    )
    rollback = commands.add_parser("rollback", help="switch back to an earlier release")
    rollback.add_argument("--package", type=package_name)
    rollback.add_argument(
        "--version", type=package_name, help="default: the release before the current one"
    )
    rollback.add_argument(
        "--deployment", help="roll back every target of this deployment (D-...) instead"
    )
    health = commands.add_parser("health", help="check targets: version, OS, disk, certificate")
    _add_file_commands(commands, add_common, add_admin)
    for parser, handler in ((deploy, run_deploy), (rollback, run_rollback), (health, run_health)):
        _add_targeting(parser)
        parser.set_defaults(command=handler)
        add_common(parser)
        add_admin(parser)


def _add_targeting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="one target by name")
    parser.add_argument("--environment", help="every target of this environment...")
    parser.add_argument("--role", action="append", default=[], help="...with any of these roles")
    parser.add_argument("--tenant", action="append", default=[])
    parser.add_argument("--tenant-tag", action="append", default=[])
    parser.add_argument(
        "--stop-on-failure", action="store_true", help="cancel the rest on a failure"
    )
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds each target's task may run; also its deadline to start, unless --expires",
    )
    add_deadline_arguments(parser)


def _add_file_commands(commands: Any, add_common: Any, add_admin: Any) -> None:
    files = commands.add_parser("file", help="send a file to a target, or fetch one from it")
    sub = files.add_subparsers(title="file commands", metavar="COMMAND", required=True)
    send = sub.add_parser("send", help="put a local file at a path on the target")
    send.add_argument("file")
    send.add_argument("--target", required=True)
    send.add_argument("--to", required=True, help="the path on the target (inside its file roots)")
    send.add_argument("--overwrite", action="store_true")
    send.set_defaults(command=send_file)
    fetch = sub.add_parser("fetch", help="copy a file from the target to here")
    fetch.add_argument("--target", required=True)
    fetch.add_argument("--path", required=True, help="the path on the target")
    fetch.add_argument("--out", required=True, help="where to write it here")
    fetch.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    fetch.set_defaults(command=fetch_file)
    for parser in (send, fetch):
        add_common(parser)
        add_admin(parser)


async def send_file(args: argparse.Namespace) -> int:
    source = Path(args.file)
    if not source.is_file():
        raise ConfigurationError(f"no file {source} here to send (give a path to a file)")
    async with admin_client(args) as client:
        stored = await client.upload_file(source)
        spec = SendFileSpec(sha256=stored.sha256, size=stored.size, destination=args.to,
                            overwrite=args.overwrite)  # fmt: skip
        task = await client.submit(SubmitTask(target=args.target, kind="send_file", send_file=spec))
        final = await client.follow(task.id, print_event)
    print_task(final)
    return EXIT_CODES.get(final.state, 1)


async def fetch_file(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_writable(out, args.overwrite)  # before the target does any work
    async with admin_client(args) as client:
        spec = FetchFileSpec(path=args.path)
        task = await client.submit(
            SubmitTask(target=args.target, kind="fetch_file", fetch_file=spec)
        )
        lines: list[str] = []
        final = await client.follow(task.id, lambda event: lines.append(event.text))
        if final.state != "succeeded":
            print_task(final)
            return EXIT_CODES.get(final.state, 1)
        digest = lines[-1].rsplit("sha256 ", 1)[1].rstrip(")")  # FileJob's last line names it
        size = await client.download_file(digest, out)
    print(f"wrote {out} ({size} bytes, sha256 {digest})")
    return 0


def _check_writable(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise ConfigurationError(f"--out {out} is a folder; give the file's path")
    if out.exists() and not overwrite:
        raise ConfigurationError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise ConfigurationError(f"--out {out}: there is no folder {out.parent} here")


async def run_deploy(args: argparse.Namespace) -> int:
    deploy = DeploySpec(package_id=args.package, version=args.version, retain_releases=args.retain)
    return await _run(args, {"kind": "deploy", "deploy": deploy})


async def run_rollback(args: argparse.Namespace) -> int:
    if args.deployment:
        return await _roll_back_deployment(args)
    if not args.package:
        raise ConfigurationError("give --package NAME (or --deployment D-... to undo one)")
    rollback = RollbackSpec(package_id=args.package, version=args.version)
    return await _run(args, {"kind": "rollback", "rollback": rollback})


async def _roll_back_deployment(args: argparse.Namespace) -> int:
    """Each target of the deployment back to the release it had before, followed."""
    if args.target or args.environment or args.package:
        raise ConfigurationError("--deployment names the targets and package; leave out the rest")
    async with admin_client(args) as client:
        view = await client.roll_back_deployment(args.deployment)
        print(f"deployment {view.id}: {view.description}, {len(view.targets)} targets")
        return await follow_deployment(client, view, args.wait)


async def run_health(args: argparse.Namespace) -> int:
    return await _run(args, {"kind": "health", "health": HealthSpec()})


async def _run(args: argparse.Namespace, payload: dict[str, object]) -> int:
    variables = variables_from(args.env, args.secret)
    task = TaskSpec.model_validate(
        {**payload, "variables": variables, "timeout_seconds": args.timeout}
    )
    expires = args.expires or args.timeout
    async with admin_client(args) as client:
        if args.target:
            submit = {**task.model_dump(), "target": args.target, "expires_seconds": expires}
            submitted = await client.submit(SubmitTask.model_validate(submit))
            final = await follow_one(client, submitted, args.wait)
            if final is not None:
                print_task(final)
            if final is None:
                return EXIT_STOPPED_WAITING
            return EXIT_CODES.get(final.state, 1)
        if not args.environment:
            raise ConfigurationError("give --target NAME, or --environment ENV (with --role ROLE)")
        return await _fan_out(client, args, task, expires)


async def _fan_out(
    client: AdminClient, args: argparse.Namespace, task: TaskSpec, expires: float | None
) -> int:
    view = await client.fan_out(FanOut(
        environment=args.environment, roles=args.role, tenants=args.tenant,
        tenant_tags=args.tenant_tag, task=task, stop_on_first_failure=args.stop_on_failure,
        expires_seconds=expires,
    ))  # fmt: skip
    print(f"deployment {view.id}: {view.description}, {len(view.targets)} targets")
    for name in view.offline:
        print(f"  {name} is offline: its task waits until it connects or its deadline passes")
    return await follow_deployment(client, view, args.wait)
