"""The server's home folder: its identity (key + certificate), master key and database.

Everything in it is private to the server's user: folders 0700, files 0600 (the process runs
with umask 077; SQLite gives its -wal and -shm files the database file's mode). A home made by
an earlier version, readable by others, is made private the first time it is opened.
"""

from __future__ import annotations

import fcntl
import shutil
import stat
from pathlib import Path
from typing import IO

from loguru import logger

from tentacle_poll.config import SERVER_FILE, ServerSettings, load_settings
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.store import Store
from tentacle_poll.store.opening import open_store
from tentacle_poll.tls import generate_identity, load_identity, save_identity
from tentacle_poll.tls.files import CERT_FILE


class ServerHome:
    """``identity/`` is the certificate in use; ``identity.next/`` one prepared for rotation
    (announced to agents until activated); ``identity.previous/`` the one it replaced."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.identity_folder = folder / "identity"
        self.next_folder = folder / "identity.next"
        self.previous_folder = folder / "identity.previous"

    def lock(self) -> IO[str]:
        """Held while a server runs on this home (close the file to release it): two servers on
        one home would share a store and a master key without knowing of each other."""
        self.make_private()
        handle = open(self.folder / "server.lock", "w")  # noqa: SIM115  (kept open: the lock)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigurationError(
                f"another server is already running with the home {self.folder}; stop it "
                "first, or give this one a home of its own (--server-home)"
            ) from None
        return handle

    def ensure_identity(self) -> tuple[Path, str]:
        """(identity folder, thumbprint); the first call makes the key and certificate."""
        self.make_private()
        if not (self.identity_folder / CERT_FILE).exists():
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

    async def open_store(self, migrate: bool = False) -> Store:
        """The store named by this home's settings (server.toml, then the environment)."""
        self.make_private()
        settings = load_settings(ServerSettings, self.folder / SERVER_FILE)
        return (await open_store(settings.store_url, self.folder, migrate))[0]

    def make_private(self) -> None:
        """The home exists, 0700; an older one open to others is made private throughout."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(self.folder.stat().st_mode) & 0o077:
            for path in [self.folder, *self.folder.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(0o700 if path.is_dir() else 0o600)
