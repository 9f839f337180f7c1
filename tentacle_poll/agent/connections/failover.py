"""A task's connection to its server when the server is a cluster: the node that delivered the
task first, and when it cannot be reached, the other nodes of the same cluster in turn.

Every node answers for every task (they share one database, and accepting, streaming and
reporting are idempotent there), so a task whose node died mid-run streams its output and
reports its result through another node; nothing is sent twice and nothing is lost. A server
that is not a cluster has no peers: then this is its one client, retried with backoff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from pydantic import BaseModel

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.exceptions import ServerUnavailable
from tentacle_poll.proxies import ProxyRoute

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class ClusterClient:
    def __init__(self, home: CommsClient, peers: Callable[[CommsClient], list[CommsClient]]):
        self.home = home  # the node that delivered the task: the journal names it
        self._peers = peers
        self._current = home

    @property
    def url(self) -> str:
        return self.home.url

    @property
    def thumbprints(self) -> list[str]:
        return self.home.thumbprints

    @property
    def proxy(self) -> ProxyRoute | None:
        return self._current.proxy

    @property
    def last_date_header(self) -> str | None:
        return self._current.last_date_header

    async def post(
        self,
        path: str,
        body: BaseModel | bytes,
        answer_type: type[M],
        read_timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> M:
        return await self._on_current(
            lambda client: client.post(path, body, answer_type, read_timeout, headers)
        )

    async def download(self, path: str, destination: BinaryIO, offset: int) -> int:
        return await self._on_current(lambda client: client.download(path, destination, offset))

    async def upload(self, path: str, source: Path, answer_type: type[M]) -> M:
        return await self._on_current(lambda client: client.upload(path, source, answer_type))

    async def _on_current(self, call: Callable[[CommsClient], Awaitable[T]]) -> T:
        """``call`` on the current node; when it cannot be reached, the next node is current
        for the retry (the caller retries with backoff)."""
        client = self._current
        try:
            return await call(client)
        except ServerUnavailable:
            self._next_after(client)
            raise

    def _next_after(self, failed: CommsClient) -> None:
        """The next node of the cluster, in order, for the retry."""
        nodes = [self.home, *(p for p in self._peers(self.home) if p is not self.home)]
        if failed in nodes:
            self._current = nodes[(nodes.index(failed) + 1) % len(nodes)]
        else:
            self._current = self.home
