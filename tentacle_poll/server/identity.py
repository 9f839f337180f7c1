"""The server's home folder: its identity (key + certificate) and its database."""

from __future__ import annotations

import shutil
from pathlib import Path

from loguru import logger

from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.store import SqliteStore, Store
from tentacle_poll.tls import generate_identity, load_identity, save_identity
from tentacle_poll.tls.files import CERT_FILE

DATABASE_FILE = "server.db"


class ServerHome:
    """``identity/`` is the certificate in use; ``identity.next/`` one prepared for rotation
    (announced to agents until activated); ``identity.previous/`` the one it replaced."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.identity_folder = folder / "identity"
        self.next_folder = folder / "identity.next"
        self.previous_folder = folder / "identity.previous"

    def ensure_identity(self) -> tuple[Path, str]:
        """(identity folder, thumbprint); the first call makes the key and certificate."""
        if not (self.identity_folder / CERT_FILE).exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            save_identity(self.identity_folder, generate_identity("tentacle-poll-server"))
            logger.info("created the server certificate in {}", self.identity_folder)
        return self.identity_folder, load_identity(self.identity_folder).thumbprint

    def next_thumbprint(self) -> str | None:
        if not (self.next_folder / CERT_FILE).exists():
            return None
        return load_identity(self.next_folder).thumbprint

    def prepare_rotation(self) -> str:
        """Makes the next certificate (once) and returns its thumbprint."""
        if not (self.next_folder / CERT_FILE).exists():
            save_identity(self.next_folder, generate_identity("tentacle-poll-server"))
        return load_identity(self.next_folder).thumbprint

    def cancel_rotation(self) -> None:
        shutil.rmtree(self.next_folder, ignore_errors=True)

    def activate_rotation(self) -> str:
        """The prepared certificate becomes the one in use; returns its thumbprint."""
        if not (self.next_folder / CERT_FILE).exists():
            raise ConfigurationError("no rotation is prepared; prepare one first")
        shutil.rmtree(self.previous_folder, ignore_errors=True)
        self.identity_folder.rename(self.previous_folder)
        self.next_folder.rename(self.identity_folder)
        return load_identity(self.identity_folder).thumbprint

    def open_store(self) -> Store:
        self.folder.mkdir(parents=True, exist_ok=True)
        return SqliteStore(self.folder / DATABASE_FILE)
