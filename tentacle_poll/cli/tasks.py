"""Admin commands, through the admin API: targets, task run/show/follow/cancel/list, demo."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tentacle_poll.cli.context import admin_client
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.protocol.models import (
    PACKAGE_NAME_PATTERN,
    Event,
    ScriptSpec,
    SubmitTask,
    TaskView,
    Variable,
)

if TYPE_CHECKING:  # the admin client loads aiohttp: the agent daemon never needs it
    pass

# The command's exit code by the task's final state (docs/getting-started.md has the table;
# 69: the server could not be reached, 75: --wait ran out, 2: a usage mistake).
EXIT_CODES = {"succeeded": 0, "failed": 1, "timed_out": 124, "cancelled": 130, "lost": 1,
              "expired": 1}  # fmt: skip
N = TypeVar("N", int, float)
EXIT_STOPPED_WAITING = 75  # sysexits' EX_TEMPFAIL: --wait ran out; the task goes on


def add_deadline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expires",
        type=positive_seconds,
        help="seconds the task may wait for its target to take it; then it ends expired "
        "(default: an hour for deploys and rollbacks, 10 minutes for health checks, none else)",
    )
    parser.add_argument(
        "--wait",
        type=positive_seconds,
        help="seconds this command waits at most for the outcome (the task goes on after it)",
    )


def package_name(text: str) -> str:
    """A package id or version as the server accepts it: checked here, never rewritten (an id
    with "/" or ".." would otherwise be normalised away inside the URL)."""
    if not re.fullmatch(PACKAGE_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a package id or version: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (up to 100)"
        )
    return text


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def positive_seconds(text: str) -> float:
    value = _number(text, float, "a number of seconds")
    if not 0 < value <= 30 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 30 days in seconds")
    return value


def _number(text: str, convert: Callable[[str], N], what: str) -> N:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def add_commands(commands: Any, add_common: Any, add_admin: Any) -> Any:
    """Returns the `task` command's sub-commands (cli/fleet.py adds `task list`)."""
    task = commands.add_parser("task", help="run and inspect tasks")
    sub = task.add_subparsers(title="task commands", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="queue a script task for a target (and follow it)")
    _add_script_arguments(run)
    run.set_defaults(command=run_task)
    parsers = [run]
    for name, handler, text in [
        ("show", show_task, "show a task's state"),
        ("follow", follow_task, "print a task's output live until it ends"),
        ("cancel", cancel_task, "cancel a queued or running task"),
    ]:
        parser = sub.add_parser(name, help=text)
        parser.add_argument("task_id")
        parser.set_defaults(command=handler)
        parsers.append(parser)
    demo = commands.add_parser("demo", help="a local server and agent running a sample task")
    demo.add_argument("--folder", default=".demo", help="where the demo keeps its state")
    demo.set_defaults(command=run_demo_command)
    parsers.append(demo)
    for parser in [*parsers, *_add_package_commands(commands)]:
        add_common(parser)
        add_admin(parser)
    return sub


def _add_package_commands(commands: Any) -> list[argparse.ArgumentParser]:
    package = commands.add_parser("package", help="upload, list and delete packages")
    sub = package.add_subparsers(title="package commands", metavar="COMMAND", required=True)
    upload = sub.add_parser("upload", help="upload a zip or tar.gz as a package version")
    upload.add_argument("file")
    upload.add_argument("--id", required=True, dest="package_id", type=package_name)
    upload.add_argument("--version", required=True, type=package_name)
    upload.add_argument("--format", choices=["zip", "tar.gz"], help="default: from the file name")
    upload.set_defaults(command=upload_package)
    listing = sub.add_parser("list", help="list packages and versions")
    listing.set_defaults(command=list_packages)
    delete = sub.add_parser("delete", help="delete a package version")
    delete.add_argument("--id", required=True, dest="package_id", type=package_name)
    delete.add_argument("--version", required=True, type=package_name)
    delete.set_defaults(command=delete_package)
    return [upload, listing, delete]


async def upload_package(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise ConfigurationError(f"no file {path}")
    package_format = args.format or _format_of(path)
    async with admin_client(args) as client:
        package = await client.upload_package(args.package_id, args.version, path, package_format)
    print(f"{package.package_id} {package.version}: {package.size} bytes, sha256 {package.sha256}")
    return 0


async def list_packages(args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        packages = await client.packages()
    for p in packages:
        print(f"{p.package_id:<30} {p.version:<15} {p.format:<7} {p.size:>12} {p.sha256}")
    return 0


async def delete_package(args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        package = await client.delete_package(args.package_id, args.version)
    print(f"deleted {package.package_id} {package.version}")
    return 0


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    raise ConfigurationError(f"cannot tell the format of {path.name}; pass --format zip or tar.gz")


def _add_script_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--target", required=True, help="the target's name")
    body = run.add_mutually_exclusive_group(required=True)
    body.add_argument("--script", help="the script's text")
    body.add_argument("--file", help="a file holding the script")
    run.add_argument("--syntax", default="bash", choices=["bash", "sh", "python", "pwsh", "cmd"])
    run.add_argument("--arg", action="append", default=[], help="a script argument; repeat")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="like --env, masked in all output",
    )
    run.add_argument("--cwd", help="working folder on the target")
    run.add_argument("--timeout", type=float, help="seconds before the script is stopped")
    run.add_argument(
        "--isolation",
        choices=["none", "full"],
        default="none",
        help="full: nothing else using the mutex runs meanwhile",
    )
    run.add_argument("--mutex", default="RunningScript", help="the isolation mutex's name")
    run.add_argument("--isolation-timeout", type=float, help="seconds to wait for the mutex")
    run.add_argument("--no-follow", action="store_true", help="print the task id and return")
    add_deadline_arguments(run)


async def run_task(args: argparse.Namespace) -> int:
    body = read_local_file(Path(args.file)).decode() if args.file else args.script
    spec = SubmitTask(
        target=args.target,
        script=ScriptSpec(
            syntax=args.syntax, body=body, arguments=args.arg, working_directory=args.cwd
        ),
        variables=variables_from(args.env, args.secret),
        timeout_seconds=args.timeout,
        isolation=args.isolation,
        isolation_mutex=args.mutex,
        isolation_timeout_seconds=args.isolation_timeout,
        expires_seconds=args.expires,
    )
    async with admin_client(args) as client:
        task = await client.submit(spec)
        if args.no_follow:
            print(task.id)
            return 0
        print(f"task {task.id} queued for {task.target}", file=sys.stderr)
        from tentacle_poll.cli.progress import follow_one  # it imports this module

        final = await follow_one(client, task, args.wait)
        return _report(final) if final is not None else EXIT_STOPPED_WAITING


async def show_task(args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        print_task(await client.task(args.task_id))
    return 0


async def follow_task(args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        return _report(await client.follow(args.task_id, print_event))


async def cancel_task(args: argparse.Namespace) -> int:
    async with admin_client(args) as client:
        print_task(await client.cancel(args.task_id))
    return 0


async def run_demo_command(args: argparse.Namespace) -> int:
    from tentacle_poll.demo import run_demo  # lazy: keeps the agent's memory small

    return await run_demo(Path(args.folder))


def print_event(event: Event) -> None:
    """One event as the script printed it: a long line cut by the agent is joined again."""
    if event.stream == "system":
        print(f"[agent] {event.text}", flush=True)
    else:
        stream = sys.stderr if event.stream == "stderr" else sys.stdout
        print(event.text, file=stream, end="" if event.continues else "\n", flush=True)


def print_task(task: TaskView) -> None:
    code = "" if task.exit_code is None else f", exit code {task.exit_code}"
    reason = f": {task.reason}" if task.reason else ""
    extra = " (cancel requested)" if task.cancel_requested else ""
    by = f" [submitted with key {task.submitted_by}]" if task.submitted_by else ""
    print(f"task {task.id} on {task.target}: {task.state}{code}{reason}{extra}{by}")


def _report(task: TaskView) -> int:
    print_task(task)
    return EXIT_CODES.get(task.state, 1)


def read_local_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc


def variables_from(plain: list[str], secret: list[str]) -> list[Variable]:
    """--env and --secret NAME=VALUE pairs as task variables (secrets marked sensitive)."""
    return _variables(plain, False) + _variables(secret, True)


def _variables(pairs: list[str], sensitive: bool) -> list[Variable]:
    variables = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ConfigurationError(f"expected NAME=VALUE, got {name!r}")
        variables.append(Variable(name=name, value=value, sensitive=sensitive))
    return variables
