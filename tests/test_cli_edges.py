"""Command-line mistakes end with one clear line and a non-zero exit, never a traceback, and
before anything is done on a target: ids checked as the server checks them (never rewritten),
local files checked first, --out never overwritten silently, a closed pipe ends quietly."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tentacle_poll.server import Server
from tentacle_poll.store.base import TaskQuery

from .conftest import free_port
from .processes import CLI
from .test_cli import cli as run_cli
from .test_deadlines import cli


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["package", "upload", "p.zip", "--id", "x/../good2", "--version", "1"], "package id"),
        (["package", "upload", "p.zip", "--id", "a/b", "--version", "1"], "package id"),
        (["deploy", "--package", "zz/../good2", "--version", "1", "--target", "t"], "package id"),
        (["deploy", "--package", "web", "--version", "1", "--retain", "0", "--target", "t"],
         "at least 1"),
        (["deploy", "--package", "web", "--version", "1", "--retain", "-1", "--target", "t"],
         "at least 1"),
        (["health", "--target", "t", "--wait", "never"], "not a number"),
    ],
)  # fmt: skip
async def test_flags_the_server_would_refuse_are_refused_here_first(
    server: Server, api_key: str, args: list[str], says: str
) -> None:
    code, output = await cli(server, api_key, *args)
    assert code == 2 and says in output and "Traceback" not in output
    assert await server.state.store.list_tasks(TaskQuery(limit=10)) == []
    assert await server.state.store.list_packages() == []


async def test_local_files_are_checked_before_the_target_works(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    existing = tmp_path / "here.txt"
    existing.write_text("keep me")
    cases = [
        (["file", "send", str(tmp_path / "missing.txt"), "--target", "t", "--to", "/x"],
         "no file"),
        (["file", "fetch", "--target", "t", "--path", "/x", "--out", "/nonexistent-dir/x"],
         "there is no folder /nonexistent-dir"),
        (["file", "fetch", "--target", "t", "--path", "/x", "--out", str(existing)],
         "exists; pass --overwrite"),
        (["task", "run", "--target", "t", "--file", str(tmp_path / "nope.sh")], "cannot read"),
    ]  # fmt: skip
    for args, says in cases:
        code, output = await cli(server, api_key, *args)
        assert code == 1 and says in output and "Traceback" not in output, output
    assert existing.read_text() == "keep me"
    assert await server.state.store.list_tasks(TaskQuery(limit=10)) == []


async def test_a_closed_pipe_ends_quietly(server: Server, api_key: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as with `| head -0`
    env = {**os.environ, "TENTACLE_POLL_API_KEY": api_key,
           "TENTACLE_POLL_ADMIN_URL": f"http://127.0.0.1:{server.admin_port}"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *CLI, "targets", env=env, stdout=write_end, stderr=asyncio.subprocess.PIPE
    )
    os.close(write_end)
    async with asyncio.timeout(30):
        _, errors = await process.communicate()
    assert process.returncode == 141
    assert errors.decode() == ""


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:10944", "needs http:// or https://"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://:10944", "names no host"),
        ("http://127.0.0.1 :10944", "holds a space or a line break"),
    ],
)
def test_a_malformed_admin_address_is_named_not_taken_for_a_server_down(
    url: str, says: str
) -> None:
    result = run_cli("targets", "--admin-url", url, "--api-key", "API-X", check=False)
    assert result.returncode == 1 and says in result.stderr, result.stderr
    assert "is the server running" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_targets_prints_no_header_above_a_server_it_cannot_reach() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("targets", "--admin-url", url, "--api-key", "API-X", check=False)
    assert result.returncode == 69 and "cannot reach the admin API" in result.stderr
    assert result.stdout == ""
