"""The SQLite schema and its versions (``PRAGMA user_version``).

Version 1 is every database made before versions were recorded (whatever columns it had);
version 2 the layout up to issue 18; version 3 adds ``agents.listening_url`` (listening mode).
``migrate`` brings any earlier one up to date.
"""

import sqlite3
from pathlib import Path

LATEST = 3

PRAGMAS = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
PRAGMA busy_timeout = 5000;
-- Overwritten and deleted content is zeroed, not left in free pages (erased secrets, tasks).
PRAGMA secure_delete = ON;
"""

TABLES = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS registration_tokens (
    token_hash TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    key TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);

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

# Columns added after a table's first version: (table, column, definition). Opening an older
# database adds them (SQLite has no ADD COLUMN IF NOT EXISTS).
ADDED_COLUMNS = [
    ("api_keys", "scope", "TEXT NOT NULL DEFAULT 'admin'"),
    ("api_keys", "environments", "TEXT NOT NULL DEFAULT '[]'"),
    ("api_keys", "last_used", "REAL"),
    ("api_keys", "created_by", "TEXT NOT NULL DEFAULT ''"),
    ("registration_tokens", "id", "TEXT NOT NULL DEFAULT ''"),
    ("registration_tokens", "created_at", "REAL NOT NULL DEFAULT 0"),
    ("registration_tokens", "created_by", "TEXT NOT NULL DEFAULT ''"),
    ("tasks", "submitted_by", "TEXT NOT NULL DEFAULT ''"),
    ("tasks", "serial", "TEXT"),
    ("tasks", "expires_at", "REAL"),
    ("agents", "listening_url", "TEXT"),
]


# Indexes on added columns: made once the columns exist.
ADDED_INDEXES = "CREATE INDEX IF NOT EXISTS tasks_by_deadline ON tasks (state, expires_at);"


def version_of(db: sqlite3.Connection) -> int:
    """0 for an empty database, 1 for one made before versions were recorded."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version:
        return version
    made = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone()
    return 1 if made else 0


def migrate(db: sqlite3.Connection) -> None:
    """Any earlier layout to LATEST (output kept in SQLite moves later, once files are open)."""
    db.executescript(TABLES)
    add_missing_columns(db)
    db.execute(f"PRAGMA user_version = {LATEST}")


def add_missing_columns(db: sqlite3.Connection) -> None:
    for table, column, definition in ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    db.executescript(ADDED_INDEXES)


# The index of task output (store/output.py keeps the text in files): a database of its own,
# written on a thread of its own, so that its writes never wait for the queue's.
OUTPUT_SCHEMA = """
PRAGMA output.journal_mode = WAL;

CREATE TABLE IF NOT EXISTS output.blocks (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    stream TEXT NOT NULL,
    ts REAL NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
"""

# Where older versions kept output lines, text included: moved to the files when opened.
OLDER_OUTPUT_TABLES = {
    "main.events": "SELECT task_id, seq, stream, text, ts, 1 FROM main.events",
    "output.events": "SELECT task_id, seq, stream, text, ts, lines FROM output.events",
}


def output_paths(database: Path) -> tuple[Path, Path]:
    """The output index database and the folder of output files, beside the main database."""
    stem = database.with_name(f"{database.stem}-output")
    return stem.with_suffix(database.suffix), stem


def attach_output(db: sqlite3.Connection, database: Path) -> None:
    """Attaches (creating if new) the output index database, with the columns added since."""
    db.execute("ATTACH DATABASE ? AS output", (str(output_paths(database)[0]),))
    db.executescript(OUTPUT_SCHEMA)
    present = {row[1] for row in db.execute("PRAGMA output.table_info(blocks)")}
    if "continues" not in present:  # a long line's pieces: marked since issue 15
        db.execute("ALTER TABLE output.blocks ADD COLUMN continues INTEGER NOT NULL DEFAULT 0")


def older_output_tables(db: sqlite3.Connection) -> list[str]:
    found = []
    for table in OLDER_OUTPUT_TABLES:
        schema, name = table.split(".")
        query = f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?"
        if db.execute(query, (name,)).fetchone() is not None:
            found.append(table)
    return found
