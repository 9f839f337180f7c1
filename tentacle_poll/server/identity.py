"""The server's home folder: its identity (key + certificate) and its database."""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from tentacle_poll.store import SqliteStore, Store
from tentacle_poll.tls import generate_identity, load_identity, save_identity
from tentacle_poll.tls.files import CERT_FILE

DATABASE_FILE = "server.db"


class ServerHome:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.identity_folder = folder / "identity"

    def ensure_identity(self) -> tuple[Path, str]:
        """(identity folder, thumbprint); the first call makes the key and certificate."""
        if not (self.identity_folder / CERT_FILE).exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            save_identity(self.identity_folder, generate_identity("tentacle-poll-server"))
            logger.info("created the server certificate in {}", self.identity_folder)
        return self.identity_folder, load_identity(self.identity_folder).thumbprint

    def open_store(self) -> Store:
        self.folder.mkdir(parents=True, exist_ok=True)
        return SqliteStore(self.folder / DATABASE_FILE)
