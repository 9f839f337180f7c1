"""SIGHUP: the agent re-reads its settings and applies what can change while it runs (log
level, format and file, proxy, concurrency), logging each change; the rest needs a restart, and the
log says which changed settings are waiting for one. A file that no longer validates changes
nothing (the error is logged)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from loguru import logger

from tentacle_poll.agent.connections.listening import ListeningClient
from tentacle_poll.agent.connections.proxy import proxy_for
from tentacle_poll.config import AgentSettings
from tentacle_poll.exceptions import ConfigurationError

if TYPE_CHECKING:
    from tentacle_poll.agent.daemon import Agent

LIVE = (
    "log_level",
    "log_format",
    "log_file",
    "log_rotation_mb",
    "log_retention_files",
    "proxy",
    "concurrency",
)


def reload_settings(agent: Agent, apply_logging: Callable[[AgentSettings], None]) -> list[str]:
    """Returns the changes applied, in words ("concurrency 4 -> 8")."""
    try:
        new = agent.home.settings()
    except ConfigurationError as exc:
        logger.error("SIGHUP: settings not reloaded, the old ones stay: {}", exc)
        return []
    old = agent.settings
    changed = [name for name in LIVE if getattr(new, name) != getattr(old, name)]
    agent.settings = old.model_copy(update={name: getattr(new, name) for name in changed})
    _apply(agent, new, changed, apply_logging)
    words = [f"{name} {_shown(old, name)} -> {_shown(new, name)}" for name in changed]
    logger.info("SIGHUP: reloaded {}: {}", agent.home.config_file, "; ".join(words) or "no change")
    _warn_about_restart(old, new)
    return words


def _apply(
    agent: Agent,
    new: AgentSettings,
    changed: list[str],
    apply_logging: Callable[[AgentSettings], None],
) -> None:
    if any(name.startswith("log_") for name in changed):
        apply_logging(new)
    if "concurrency" in changed:
        agent.slots.capacity = new.concurrency
    if "proxy" in changed:
        for client in agent.clients.values():
            if not isinstance(client, ListeningClient):  # the server's connections: no proxy
                client.proxy = proxy_for(client.url, new.proxy)  # new connections go through it


def _warn_about_restart(old: AgentSettings, new: AgentSettings) -> None:
    waiting = [
        name
        for name in type(new).model_fields
        if name not in LIVE and getattr(new, name) != getattr(old, name)
    ]
    if waiting:
        logger.warning(
            "SIGHUP: {} changed; that takes effect at the next restart", ", ".join(waiting)
        )


def _shown(settings: AgentSettings, name: str) -> str:
    value = getattr(settings, name)
    if name == "proxy":
        return f"{value.mode}" + (f" {value.host}:{value.port}" if value.host else "")
    return str(value)
