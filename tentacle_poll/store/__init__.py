"""Persistence behind one small interface (`Store`); SQLite is the embedded default."""

from tentacle_poll.store.base import (
    AgentRecord,
    DeploymentEntry,
    NewAgent,
    NewTask,
    Store,
    TaskRecord,
)
from tentacle_poll.store.credentials import ApiKeyRecord, AuditEntry, TokenRecord
from tentacle_poll.store.sqlite import SqliteStore

__all__ = [
    "AgentRecord",
    "ApiKeyRecord",
    "AuditEntry",
    "DeploymentEntry",
    "NewAgent",
    "NewTask",
    "SqliteStore",
    "Store",
    "TaskRecord",
    "TokenRecord",
]
