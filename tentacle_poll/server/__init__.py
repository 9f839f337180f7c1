"""The server: comms listener (mutual TLS), admin API, task queue and leases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tentacle_poll.server.app import Server


def __getattr__(name: str) -> Any:
    # Lazy: the admin client lives in this package, and a process that only uses it (the
    # command line, the agent's demo) should not load the aiohttp web server.
    if name == "Server":
        from tentacle_poll.server.app import Server

        return Server
    raise AttributeError(name)


__all__ = ["Server"]
