"""The agent's home folder: identity, configuration and task workspaces."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tentacle_poll.config import AGENT_FILE, AgentSettings, load_settings
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.tls.files import CERT_FILE


@dataclass(frozen=True)
class AgentHome:
    folder: Path

    @property
    def identity_folder(self) -> Path:
        return self.folder / "identity"

    @property
    def config_file(self) -> Path:
        return self.folder / AGENT_FILE

    @property
    def work_folder(self) -> Path:
        return self.folder / "work"

    @property
    def spool_folder(self) -> Path:
        return self.folder / "spool"

    @property
    def journal_file(self) -> Path:
        return self.folder / "journal.jsonl"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held while a daemon runs: two agents on one journal could start a task twice."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigurationError(
                    f"another agent is already running with the home {self.folder}"
                ) from None
            lock.write(f"{os.getpid()}\n")  # who to signal: `deregister` stops it
            lock.flush()
            yield

    @property
    def lock_file(self) -> Path:
        return self.folder / "agent.lock"

    def running_daemon(self) -> int | None:
        """The pid of the daemon running on this home, or None when none runs."""
        try:
            with open(self.lock_file) as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return int(lock.read().strip() or 0) or None
        except (OSError, ValueError):
            return None
        return None

    def has_identity(self) -> bool:
        return (self.identity_folder / CERT_FILE).exists()

    def settings(self, **overrides: object) -> AgentSettings:
        return load_settings(AgentSettings, self.config_file, **overrides)

    def settings_ready_to_run(self, **overrides: object) -> AgentSettings:
        """Settings of a registered agent, or a ConfigurationError naming the command to run."""
        if not self.has_identity():
            raise ConfigurationError(
                f"this agent has no certificate in {self.folder}; run "
                f"`tentacle-poll new-certificate --home {self.folder}` first, then `register`"
            )
        settings = self.settings(**overrides)
        if not settings.servers and settings.listen is None:
            raise ConfigurationError(
                "this agent is not registered with any server; run `tentacle-poll register "
                "--server https://HOST:10943 --server-thumbprint THUMBPRINT --api-key KEY "
                "--name NAME --environment ENV --role ROLE` first (polling mode), or `tentacle-"
                "poll listen --server-thumbprint THUMBPRINT` (listening mode)"
            )
        return settings
