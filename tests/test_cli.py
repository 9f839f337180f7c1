"""The command line as a user runs it: real processes, real signals, readable errors."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tentacle_poll.cli.server import loopback_server_arguments
from tentacle_poll.server import Server

from .conftest import RunningAgent, agent_in_mode, free_port
from .helpers import process_running
from .processes import CLI, Daemon, start_server_process


def cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
    return result


async def test_server_register_agent_and_task_from_the_command_line(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    server_home, agent_home = str(tmp_path / "server"), str(tmp_path / "agent")
    key = cli(
        "server", "api-key", "create", "--name", "ci", "--server-home", server_home
    ).stdout.strip()
    thumbprint = cli("server", "show-thumbprint", "--server-home", server_home).stdout.strip()
    comms, admin = free_port(), free_port()
    server = await start_server_process(Path(server_home), comms, admin)
    processes.append(server)
    cli("new-certificate", "--home", agent_home)
    cli(
        "register",
        "--home",
        agent_home,
        "--server",
        f"https://127.0.0.1:{comms}",
        "--server-thumbprint",
        thumbprint,
        "--name",
        "web1",
        "--environment",
        "Prod",
        "--role",
        "web",
        "--role",
        "db",
        env={"TENTACLE_POLL_API_KEY": key},
    )
    agent = await Daemon.start("--home", agent_home)
    processes.append(agent)
    await agent.wait_for("polling https://")
    admin_env = {
        "TENTACLE_POLL_API_KEY": key,
        "TENTACLE_POLL_ADMIN_URL": f"http://127.0.0.1:{admin}",
    }
    run = cli(
        "task",
        "run",
        "--target",
        "web1",
        "--script",
        "echo hello; exit 4",
        "--isolation",
        "full",
        env=admin_env,
        check=False,
    )
    assert run.returncode == 1
    assert run.stdout.splitlines()[0] == "hello"
    assert "failed, exit code 4" in run.stdout
    targets = cli("targets", env=admin_env).stdout
    assert "web1" in targets and "Prod" in targets and "web,db" in targets
    assert await agent.stop() == 0
    deleted = cli("targets", "delete", "web1", "nosuch", env=admin_env, check=False)
    assert deleted.returncode == 1 and deleted.stdout == "deleted web1\n"
    assert "nosuch" in deleted.stderr and "no such target" in deleted.stderr
    assert "Traceback" not in deleted.stderr
    assert "web1" not in cli("targets", env=admin_env).stdout
    assert await server.stop() == 0
    assert any("agent stopped" in line for line in agent.lines)


def test_agent_without_configuration_names_the_command_to_run(tmp_path: Path) -> None:
    result = cli("--home", str(tmp_path / "empty"), check=False)
    assert result.returncode == 1
    assert "new-certificate" in result.stderr
    assert "Traceback" not in result.stderr
    cli("new-certificate", "--home", str(tmp_path / "empty"))
    result = cli("--home", str(tmp_path / "empty"), check=False)
    assert result.returncode == 1 and "tentacle-poll register" in result.stderr


def test_bad_setting_gives_one_line_per_problem(tmp_path: Path) -> None:
    home = tmp_path / "agent"
    cli("new-certificate", "--home", str(home))
    (home / "agent.toml").write_text(
        'concurrency = 0\nservers = [{url = "ftp://x", thumbprint = "zz"}]\n'
    )
    result = cli("--home", str(home), check=False, env={"TENTACLE_POLL_DRAIN_SECONDS": "soon"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert any(p.startswith("concurrency:") for p in problems)
    assert any(p.startswith("servers.0.url:") for p in problems)
    assert any(p.startswith("servers.0.thumbprint:") for p in problems)
    assert any(p.startswith("drain_seconds:") for p in problems)


def test_group_readable_private_key_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "agent"
    cli("new-certificate", "--home", str(home))
    key = home / "identity" / "key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o640)
    result = cli("show-thumbprint", "--home", str(home), check=False)
    assert result.returncode == 1 and "chmod 600" in result.stderr


def test_admin_command_without_a_server_says_so(tmp_path: Path) -> None:
    env = {
        "TENTACLE_POLL_API_KEY": "API-X",
        "TENTACLE_POLL_ADMIN_URL": f"http://127.0.0.1:{free_port()}",
    }
    result = cli("targets", env=env, check=False)
    assert result.returncode == 69  # EX_UNAVAILABLE: not to be mistaken for a failed task
    assert "is the server running?" in result.stderr and "Traceback" not in result.stderr


def test_server_on_a_port_in_use_says_which_and_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["--server-home", str(tmp_path), "--comms-host", "127.0.0.1"]
        result = cli("server", "run", *args, "--comms-port", port, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port} for the comms port" in result.stderr
    assert "--comms-port" in result.stderr


async def test_demo_runs_the_sample_task_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    demo = await Daemon.start("demo", "--folder", str(tmp_path / "demo"))
    processes.append(demo)
    assert "succeeded with exit code 0" in await demo.wait_for("=== task")
    await demo.wait_for("Press Ctrl-C")
    assert "correct-horse-battery" not in "\n".join(demo.lines)
    assert any("********" in line for line in demo.lines)
    assert await demo.stop(signal.SIGINT) == 0
    assert demo.lines[-1] == "stopped."
    pids = [p for p in (tmp_path / "demo").rglob("*.pid")]
    assert pids == [] or not any(process_running(int(p.read_text())) for p in pids)


async def test_a_second_agent_on_the_same_home_is_refused(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    server_home, agent_home = str(tmp_path / "server"), str(tmp_path / "agent")
    key = cli("server", "api-key", "create", "--name", "ci", "--server-home", server_home).stdout
    thumbprint = cli("server", "show-thumbprint", "--server-home", server_home).stdout.strip()
    comms, admin = free_port(), free_port()
    processes.append(await start_server_process(Path(server_home), comms, admin))
    cli("new-certificate", "--home", agent_home)
    cli(
        "register", "--home", agent_home, "--server", f"https://127.0.0.1:{comms}",
        "--server-thumbprint", thumbprint, "--name", "web1", "--environment", "Prod",
        "--role", "web", env={"TENTACLE_POLL_API_KEY": key.strip()},
    )  # fmt: skip
    first = await Daemon.start("--home", agent_home)
    processes.append(first)
    await first.wait_for("polling https://")
    second = cli("--home", agent_home, check=False)
    assert second.returncode == 1
    assert "another agent is already running with the home" in second.stderr


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_package_deploy_health_and_files_from_the_command_line(
    server: Server, api_key: str, tmp_path: Path, mode: str
) -> None:
    """Every task kind but a script (test_end_to_end.py), in both modes."""
    agent = RunningAgent(await agent_in_mode(mode, server, api_key, tmp_path / "web1", "web1"))
    env = {
        "TENTACLE_POLL_API_KEY": api_key,
        "TENTACLE_POLL_ADMIN_URL": f"http://127.0.0.1:{server.admin_port}",
    }
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello")
    (site / "Deploy.sh").write_text('echo "deployed $TENTACLE_PACKAGE_VERSION"\n')
    archive = shutil.make_archive(str(tmp_path / "site-1.0"), "gztar", site)
    run = functools.partial(asyncio.to_thread, cli)
    uploaded = await run("package", "upload", archive, "--id", "site", "--version", "1.0", env=env)
    assert "site 1.0:" in uploaded.stdout
    deployed = await run("deploy", "--package", "site", "--version", "1.0", "--environment", "Test",
                         "--role", "web", env=env)  # fmt: skip
    assert "[web1] deployed 1.0" in deployed.stdout and "succeeded: 1 succeeded" in deployed.stdout
    health = await run("health", "--target", "web1", env=env)
    assert '"agent_version"' in health.stdout
    note = tmp_path / "note.txt"
    note.write_text("hi")
    target_path = str(agent.agent.home.folder / "files" / "note.txt")
    await run("file", "send", str(note), "--target", "web1", "--to", target_path, env=env)
    fetched = tmp_path / "back.txt"
    await run(
        "file", "fetch", "--target", "web1", "--path", target_path, "--out", str(fetched), env=env
    )
    assert fetched.read_text() == "hi"
    await agent.stop()


async def test_a_second_server_on_a_home_in_use_refuses_with_one_line(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    home = tmp_path / "server"
    processes.append(await start_server_process(home, free_port(), free_port()))
    args = loopback_server_arguments(home, free_port(), free_port())
    second = await asyncio.to_thread(cli, *args, check=False)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"another server is already running with the home {home}" in second.stderr
