"""Schema versions from the command line: an older database is migrated only when asked, a newer
one is refused, each with one line that says what to do."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg

from tentacle_poll.cli.server import loopback_server_arguments
from tentacle_poll.config import SERVER_FILE
from tentacle_poll.store.pg_schema import LATEST as PG_LATEST
from tentacle_poll.store.pg_schema import MIGRATIONS
from tentacle_poll.store.schema import LATEST

from .conftest import free_port
from .processes import Daemon, start_server_process
from .test_cli import cli


def older_sqlite_home(home: Path) -> Path:
    """A server home whose database an earlier release made (no version, fewer columns)."""
    home.mkdir(mode=0o700)
    with sqlite3.connect(home / "server.db") as db:
        db.execute("CREATE TABLE api_keys (key_hash TEXT PRIMARY KEY, name TEXT, created_at REAL)")
        db.execute("INSERT INTO api_keys VALUES ('x', 'old', 1.0)")
    return home


def version_of(home: Path) -> int:
    with sqlite3.connect(home / "server.db") as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


async def run_cli(*args: str) -> tuple[int, str]:
    done = await asyncio.to_thread(cli, *args, check=False)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout + done.stderr


async def test_an_older_sqlite_database_is_migrated_only_when_asked(tmp_path: Path) -> None:
    home = older_sqlite_home(tmp_path / "server")
    code, said = await run_cli(*loopback_server_arguments(home, free_port(), free_port()))
    assert code != 0 and f"has schema version 1; this server needs {LATEST}" in said
    assert "tentacle-poll server migrate" in said and version_of(home) == 0  # untouched
    code, said = await run_cli("server", "migrate", "--server-home", str(home))
    assert code == 0 and f"migrated from schema version 1 to {LATEST}" in said
    assert version_of(home) == LATEST
    code, said = await run_cli("server", "migrate", "--server-home", str(home))
    assert code == 0 and "up to date" in said


async def test_server_run_migrate_starts_on_an_older_database(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    home = older_sqlite_home(tmp_path / "server")
    server = await start_server_process(home, free_port(), free_port(), "--migrate")
    processes.append(server)
    assert f"database migrated from schema version 1 to {LATEST}" in server.output
    assert version_of(home) == LATEST


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "server"
    home.mkdir(mode=0o700)
    with sqlite3.connect(home / "server.db") as db:
        db.execute("CREATE TABLE agents (id TEXT)")
        db.execute(f"PRAGMA user_version = {LATEST + 1}")
    for args in (["server", "migrate"], loopback_server_arguments(home, free_port(), free_port())):
        code, said = await run_cli(*args, "--server-home", str(home))
        assert code != 0 and f"newer than this server's {LATEST}" in said


async def test_a_postgresql_store_is_migrated_from_the_command_line(
    tmp_path: Path, pg_url: str
) -> None:
    home = tmp_path / "server"
    home.mkdir(mode=0o700)
    (home / SERVER_FILE).write_text(f'store_url = "{pg_url}"\n')
    db = await asyncpg.connect(pg_url)
    try:
        await db.execute(MIGRATIONS[0] + "UPDATE schema_version SET version = 1;")
        code, said = await run_cli(*loopback_server_arguments(home, free_port(), free_port()))
        assert code != 0 and f"schema version 1; this server needs {PG_LATEST}" in said
        assert "postgres@" not in said  # the database is named without its user or password
        code, said = await run_cli("server", "migrate", "--server-home", str(home))
        assert code == 0 and f"from schema version 1 to {PG_LATEST}" in said
        assert await db.fetchval("SELECT version FROM schema_version") == PG_LATEST
    finally:
        await db.close()


async def test_a_store_url_of_another_kind_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    home = tmp_path / "server"
    home.mkdir(mode=0o700)
    (home / SERVER_FILE).write_text('store_url = "mysql://deploy:pa55word@db/deploy"\n')
    code, said = await run_cli(*loopback_server_arguments(home, free_port(), free_port()))
    assert code != 0 and "store_url" in said and "postgresql://" in said
    assert "pa55word" not in said and not (home / "identity").exists()
