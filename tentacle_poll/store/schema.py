"""The SQLite schema; `CREATE ... IF NOT EXISTS` so opening an existing database is safe."""

import sqlite3
from pathlib import Path

SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
PRAGMA busy_timeout = 5000;

CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS registration_tokens (
    token_hash TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    thumbprint TEXT NOT NULL UNIQUE,
    certificate_pem TEXT NOT NULL,
    environments TEXT NOT NULL,
    roles TEXT NOT NULL,
    tenants TEXT NOT NULL,
    tenant_tags TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen REAL,
    previous_thumbprint TEXT,
    previous_certificate_pem TEXT,
    previous_valid_until REAL,
    trusted_server_thumbprints TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    spec_json TEXT NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    leased_until REAL,
    started_at REAL,
    finished_at REAL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    deployment_id TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_deployment ON tasks (deployment_id);
CREATE INDEX IF NOT EXISTS tasks_by_agent_state ON tasks (agent_id, state, created_at);

CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    stop_on_failure INTEGER NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS packages (
    package_id TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    PRIMARY KEY (package_id, version)
);
CREATE INDEX IF NOT EXISTS packages_by_sha ON packages (sha256);
"""

# Task output lives in a database file of its own, attached as "output": blocks of lines are
# large rows, which SQLite writes about 1.5x faster with 64 KiB pages (measured), while the
# queue's small rows want small pages. The page size must be set before the first table.
OUTPUT_SCHEMA = """
PRAGMA output.page_size = 65536;
PRAGMA output.journal_mode = WAL;

-- text last: reading the small columns of a row must not walk its overflow pages
CREATE TABLE IF NOT EXISTS output.events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    lines INTEGER NOT NULL DEFAULT 1,
    stream TEXT NOT NULL,
    ts REAL NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
"""


def output_path(database: Path) -> Path:
    return database.with_name(f"{database.stem}-output{database.suffix}")


def attach_output(db: sqlite3.Connection, database: Path) -> None:
    """Attaches (creating if new) the output database, and moves into it the lines that an
    older version kept in the main database."""
    db.execute("ATTACH DATABASE ? AS output", (str(output_path(database)),))
    db.executescript(OUTPUT_SCHEMA)
    old = db.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'events'").fetchone()
    if old is not None:
        db.executescript(
            "BEGIN IMMEDIATE;"
            "INSERT OR IGNORE INTO output.events (task_id, seq, stream, text, ts) "
            "SELECT task_id, seq, stream, text, ts FROM main.events;"
            "DROP TABLE main.events;"
            "COMMIT;"
        )
