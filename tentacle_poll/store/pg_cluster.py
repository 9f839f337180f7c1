"""What nodes of one cluster share besides the data: heartbeats, wake-ups and common secrets.

Wake-ups travel by NOTIFY on channels named after the store's schema (several clusters, or
test runs, may share one database). A dedicated connection LISTENs; when it is lost it is made
again with backoff, and ``on_reconnect`` runs, since notifications sent meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

import asyncpg
from loguru import logger

from tentacle_poll.exceptions import StoreUnavailable
from tentacle_poll.store.pg_connection import described, translated
from tentacle_poll.store.pg_parts import _Base

CHECK_SECONDS = 0.2  # how often the LISTEN connection is looked at
RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)  # caps of the jittered waits between attempts


class PgCluster(_Base):
    url: str
    _listener: asyncpg.Connection | None = None
    _listening: asyncio.Task[None] | None = None
    _schema: str = ""

    async def channel(self, name: str) -> str:
        if not self._schema:
            self._schema = str(await self._value("SELECT current_schema()"))
        return f"tentacle_poll.{self._schema}.{name}"

    async def heartbeat(self, node_id: str, comms_url: str, started_at: float, now: float) -> None:
        await self._run(
            "INSERT INTO nodes (id, comms_url, started_at, heartbeat_at) VALUES ($1,$2,$3,$4) "
            "ON CONFLICT (id) DO UPDATE SET comms_url = $2, heartbeat_at = $4",
            node_id, comms_url, started_at, now,
        )  # fmt: skip

    async def live_nodes(self, since: float) -> list[tuple[str, str]]:
        """(node id, comms URL) of the nodes that sent a heartbeat since ``since``."""
        rows = await self._all(
            "SELECT id, comms_url FROM nodes WHERE heartbeat_at >= $1 ORDER BY started_at", since
        )
        return [(row[0], row[1]) for row in rows]

    async def leave(self, node_id: str) -> None:
        await self._run("DELETE FROM nodes WHERE id = $1", node_id)

    async def forget_nodes(self, silent_since: float) -> None:
        await self._run("DELETE FROM nodes WHERE heartbeat_at < $1", silent_since)

    async def cluster_secret(self, name: str, proposed: str) -> str:
        """The cluster's value of ``name``: ``proposed`` if none was stored before (the first
        node to start stores it), else the stored one."""
        await self._run(
            "INSERT INTO cluster_secrets (name, sealed) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            name, proposed,
        )  # fmt: skip
        return str(await self._value("SELECT sealed FROM cluster_secrets WHERE name = $1", name))

    async def get_cluster_secret(self, name: str) -> str | None:
        found = await self._value("SELECT sealed FROM cluster_secrets WHERE name = $1", name)
        return None if found is None else str(found)

    async def delete_cluster_secret(self, name: str) -> None:
        await self._run("DELETE FROM cluster_secrets WHERE name = $1", name)

    async def set_cluster_secret(self, name: str, sealed: str) -> None:
        await self._run(
            "INSERT INTO cluster_secrets (name, sealed) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET sealed = $2",
            name, sealed,
        )  # fmt: skip

    async def notify(self, channel: str, payload: str) -> None:
        await self._run("SELECT pg_notify($1, $2)", await self.channel(channel), payload)

    async def listen(
        self, handlers: dict[str, Callable[[str], None]], on_reconnect: Callable[[], None]
    ) -> None:
        """Calls ``handlers[channel](payload)`` for each notification, from now until closed."""
        channels = {await self.channel(name): handler for name, handler in handlers.items()}
        await self._connect_listener(channels)
        self._listening = asyncio.create_task(self._keep_listening(channels, on_reconnect))

    async def _connect_listener(self, channels: dict[str, Callable[[str], None]]) -> None:
        with translated(self.url):
            listener = await asyncpg.connect(self.url)
            for channel, handler in channels.items():
                await listener.add_listener(channel, _calling(handler))
        self._listener = listener

    async def _keep_listening(
        self, channels: dict[str, Callable[[str], None]], on_reconnect: Callable[[], None]
    ) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            if self._listener is not None and not self._listener.is_closed():
                attempt = 0
                continue
            try:
                await self._connect_listener(channels)
            except StoreUnavailable as exc:
                if attempt == 0:
                    logger.warning("lost the wake-up channel to {}: {}", described(self.url), exc)
                # full jitter: the nodes of a cluster do not reconnect in step after an outage
                cap = RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)]
                await asyncio.sleep(random.uniform(0, cap))
                attempt += 1
                continue
            logger.info("wake-up channel to {} restored", described(self.url))
            on_reconnect()

    async def stop_listening(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
            self._listener = None


def _calling(handler: Callable[[str], None]) -> Callable[[object, int, str, str], None]:
    def on_notification(connection: object, pid: int, channel: str, payload: str) -> None:
        handler(payload)

    return on_notification
