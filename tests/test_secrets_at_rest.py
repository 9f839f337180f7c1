"""No secret at rest on the server: sensitive values sealed while queued, erased once ended,
and the server home private to its user (a real server process, real files)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.vault import KEY_FILE, Vault

from .conftest import (
    RunningAgent,
    free_port,
    register_agent,
    run_and_follow,
    script_task,
    secret,
)
from .processes import Daemon, start_server_process
from .test_cli import cli

VALUE = "hunter2-Qx81LmZ0"
# The script checks the value by its digest, so the value itself is nowhere but in the variable.
DIGEST = hashlib.sha256(VALUE.encode()).hexdigest()
CHECK = f'[ "$(printf %s "$DB_PASSWORD" | sha256sum | cut -c1-64)" = "{DIGEST}" ]'


def stored_specs(home: Path) -> list[str]:
    with sqlite3.connect(home / "server.db") as db:
        return [row[0] for row in db.execute("SELECT spec_json FROM tasks")]


def files_holding(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_a_sensitive_value_is_sealed_while_queued_and_erased_once_ended(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    queued = await admin.submit(
        script_task("web1", CHECK, variables=[secret("DB_PASSWORD", VALUE)])
    )
    home_folder = server.home.folder
    [spec] = stored_specs(home_folder)
    assert VALUE not in spec and "tp-sealed:v1:" in spec  # sealed while it waits
    agent = RunningAgent(home)
    try:
        final = await admin.follow(queued.id, lambda _: None)
    finally:
        await agent.stop()
    assert final.state == TaskState.SUCCEEDED  # the agent got the real value
    [spec] = stored_specs(home_folder)
    assert "tp-sealed" not in spec and '"DB_PASSWORD"' in spec  # the name stays, not the value
    assert files_holding(home_folder, VALUE.encode()) == []  # nor anywhere in the home
    # Erased, not left in free pages; only SQLite's write-ahead log may hold the old page (the
    # sealed ciphertext, never the value) until its next checkpoint reuses it.
    assert [p.name for p in files_holding(home_folder, b"tp-sealed")] in ([], ["server.db-wal"])


async def test_a_task_whose_sealed_value_cannot_be_opened_fails_with_the_reason(
    tmp_path: Path, api_key: str, server: Server, admin: AdminClient
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    task = script_task("web1", CHECK, variables=[secret("DB_PASSWORD", VALUE)])
    queued = await admin.submit(task)
    (server.home.folder / KEY_FILE).unlink()  # as if master.key were replaced by another
    server.state.vault = Vault.open(server.home.folder)
    agent = RunningAgent(home)
    try:
        final = await admin.follow(queued.id, lambda _: None)
    finally:
        await agent.stop()
    assert final.state == TaskState.FAILED
    assert "master key" in final.reason and "does not have" in final.reason


async def test_rotating_the_master_key_reseals_queued_values_and_they_still_open(
    tmp_path: Path,
) -> None:
    ports = free_port(), free_port()
    server_home = tmp_path / "server"
    daemon = await start_server_process(server_home, *ports)
    try:
        key = api_key_of(server_home)
        async with AdminClient(f"http://127.0.0.1:{ports[1]}", key) as admin:
            home = await _register(ports[0], server_home, key, tmp_path)
            queued = await admin.submit(
                script_task("web1", CHECK, variables=[secret("DB_PASSWORD", VALUE)])
            )
            old_key_ids = _key_ids(server_home)
            rotated = cli("server", "master-key", "rotate", "--server-home", str(server_home))
            assert "1 unfinished tasks re-sealed" in rotated.stdout
            new_key = [k for k in _key_ids(server_home) if k not in old_key_ids]
            assert (
                len(new_key) == 1 and f"tp-sealed:v1:{new_key[0]}:" in stored_specs(server_home)[0]
            )
            agent = RunningAgent(home)
            try:
                final, _ = await run_and_follow(admin, script_task("web1", "true"))
                first = await admin.follow(queued.id, lambda _: None)
            finally:
                await agent.stop()
            assert first.state == TaskState.SUCCEEDED and final.state == TaskState.SUCCEEDED
    finally:
        await daemon.stop()


def api_key_of(server_home: Path) -> str:
    return cli(
        "server", "api-key", "create", "--name", "t", "--server-home", str(server_home)
    ).stdout.strip()


def _key_ids(home: Path) -> list[str]:
    return (home / KEY_FILE).read_text().split()[::2]


async def _register(comms_port: int, server_home: Path, key: str, tmp_path: Path) -> object:
    from .conftest import register_at

    thumbprint = cli("server", "show-thumbprint", "--server-home", str(server_home)).stdout.strip()
    return await register_at(
        f"https://127.0.0.1:{comms_port}", thumbprint, key, tmp_path / "web1", "web1"
    )


def modes(folder: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(folder.stat().st_mode)}
    for path in folder.rglob("*"):
        found[str(path.relative_to(folder))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.mark.timeout(90)
async def test_the_server_home_is_private_to_the_server_user(tmp_path: Path) -> None:
    server_home = tmp_path / "server"
    server_home.mkdir(mode=0o755)
    (server_home / "left-by-an-older-version.txt").write_text("x")
    os.chmod(server_home / "left-by-an-older-version.txt", 0o644)
    ports = free_port(), free_port()
    daemon: Daemon = await start_server_process(server_home, *ports)
    try:
        key = api_key_of(server_home)
        home = await _register(ports[0], server_home, key, tmp_path)
        agent = RunningAgent(home)
        async with AdminClient(f"http://127.0.0.1:{ports[1]}", key) as admin:
            final, _ = await run_and_follow(admin, script_task("web1", "echo written"))
        await agent.stop()
        assert final.state == TaskState.SUCCEEDED
        found = modes(server_home)
    finally:
        await daemon.stop()
    assert {"server.db-wal", "server.db-shm", KEY_FILE, "identity/key.pem"} <= set(found)
    wrong = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (server_home / name).is_dir() else 0o600)
    }
    assert wrong == {}


@pytest.mark.parametrize("damage", [b"", b"not a key file at all", b"ab12 c2hvcnQ=\n"])
def test_a_damaged_master_key_file_stops_the_server_with_one_line_saying_what_to_do(
    tmp_path: Path, damage: bytes
) -> None:
    home = tmp_path / "server"
    home.mkdir(mode=0o700)
    (home / KEY_FILE).write_bytes(damage)
    ports = free_port(), free_port()
    result = cli(
        "server", "run", "--server-home", str(home), "--comms-host", "127.0.0.1",
        "--comms-port", str(ports[0]), "--admin-port", str(ports[1]), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"error: {home / KEY_FILE}" in result.stderr and "restore it" in result.stderr
    assert "Traceback" not in result.stderr
    assert (home / KEY_FILE).read_bytes() == damage  # never replaced: its keys may be needed
