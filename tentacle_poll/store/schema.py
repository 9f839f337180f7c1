"""The SQLite schema; `CREATE ... IF NOT EXISTS` so opening an existing database is safe."""

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

CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    text TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
"""
