"""The PostgreSQL schema, as ordered migrations: MIGRATIONS[n] brings version n to n + 1.

Applied in one transaction under an advisory lock, so two nodes started with --migrate at once
migrate once; the version is a row of ``schema_version``. Times are seconds since the epoch
(DOUBLE PRECISION), like the SQLite store's, so both stores share their row mapping.
"""

from __future__ import annotations

MIGRATION_LOCK = 0x7E47AC1E  # pg_advisory_xact_lock key held while migrating

VERSION_1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (0);

CREATE TABLE api_keys (
    key_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    scope TEXT NOT NULL DEFAULT 'admin',
    environments TEXT NOT NULL DEFAULT '[]',
    last_used DOUBLE PRECISION,
    created_by TEXT NOT NULL DEFAULT ''
);

CREATE TABLE registration_tokens (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL DEFAULT ''
);

CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    key TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_time ON audit (at);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    thumbprint TEXT NOT NULL UNIQUE,
    certificate_pem TEXT NOT NULL,
    environments TEXT NOT NULL,
    roles TEXT NOT NULL,
    tenants TEXT NOT NULL,
    tenant_tags TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION,
    previous_thumbprint TEXT,
    previous_certificate_pem TEXT,
    previous_valid_until DOUBLE PRECISION,
    trusted_server_thumbprints TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    stop_on_failure BOOLEAN NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    spec_json TEXT NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    created_at DOUBLE PRECISION NOT NULL,
    leased_until DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    last_seq BIGINT NOT NULL DEFAULT 0,
    deployment_id TEXT,
    submitted_by TEXT NOT NULL DEFAULT '',
    serial TEXT,
    expires_at DOUBLE PRECISION
);
CREATE INDEX tasks_by_deployment ON tasks (deployment_id);
CREATE INDEX tasks_by_agent_state ON tasks (agent_id, state, created_at);
CREATE INDEX tasks_by_deadline ON tasks (state, expires_at);
CREATE INDEX tasks_by_created ON tasks (created_at);

CREATE TABLE packages (
    package_id TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    format TEXT NOT NULL,
    uploaded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (package_id, version)
);
CREATE INDEX packages_by_sha ON packages (sha256);

-- Output text in the database: every node serves every task's output (no node's disk holds it).
CREATE TABLE output_blocks (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    lines INTEGER NOT NULL,
    stream TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    continues BOOLEAN NOT NULL DEFAULT FALSE,
    text BYTEA NOT NULL,
    PRIMARY KEY (task_id, seq)
);

-- Stored bytes (packages, transferred files) by SHA-256, in chunks: every node can serve them.
CREATE TABLE blob_chunks (
    sha256 TEXT NOT NULL,
    n INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (sha256, n)
);
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    chunks INTEGER NOT NULL
);
"""

VERSION_2 = """
-- The cluster: its nodes' heartbeats, and what every node must present alike.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    comms_url TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE cluster_secrets (
    name TEXT PRIMARY KEY,
    sealed TEXT NOT NULL
);
"""

VERSION_3 = """
-- Listening mode: where the server connects to a target (NULL: the target polls).
ALTER TABLE agents ADD COLUMN listening_url TEXT;
"""

MIGRATIONS = [VERSION_1, VERSION_2, VERSION_3]
LATEST = len(MIGRATIONS)
