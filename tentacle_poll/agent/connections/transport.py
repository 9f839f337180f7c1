"""The agent's HTTP client for one server node; the one place aiohttp and ssl errors are mapped.

Every protocol call is a POST (aiohttp silently retries an idempotent request once on a dropped
pooled connection, and a poll must never be repeated behind our back); only package downloads
are GETs, harmless to repeat. All go over TLS pinned to the node's thumbprints, directly or
through an HTTP CONNECT proxy, with an optional TLS server name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import aiohttp
from pydantic import BaseModel

from tentacle_poll import __version__
from tentacle_poll.agent.connections.causes import Route, communication_error
from tentacle_poll.agent.connections.proxy import proxy_for
from tentacle_poll.config import AgentSettings, ServerNode
from tentacle_poll.exceptions import (
    CommunicationError,
    LeaseLost,
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
)
from tentacle_poll.keepalive import keepalive_socket
from tentacle_poll.protocol.codec import decode, encode
from tentacle_poll.protocol.models import PROTOCOL_VERSION, Problem
from tentacle_poll.protocol.routes import PROTOCOL_HEADER
from tentacle_poll.proxies import ProxyRoute
from tentacle_poll.tls import pinned_client_context, update_pins
from tentacle_poll.tls.files import identity_paths

M = TypeVar("M", bound=BaseModel)
READ_MARGIN_SECONDS = 15.0
DOWNLOAD_CHUNK = 256 * 1024


class Channel(Protocol):
    """What a task needs to talk to its server: one node (CommsClient), or a cluster's nodes
    in turn (agent/connections/failover.py)."""

    @property
    def url(self) -> str: ...
    @property
    def proxy(self) -> ProxyRoute | None: ...
    @property
    def last_date_header(self) -> str | None: ...
    async def post(
        self,
        path: str,
        body: BaseModel | bytes,
        answer_type: type[M],
        read_timeout: float = ...,
        headers: dict[str, str] | None = ...,
    ) -> M: ...
    async def download(self, path: str, destination: BinaryIO, offset: int) -> int: ...
    async def upload(self, path: str, source: Path, answer_type: type[M]) -> M: ...


class CommsClient:
    """Talks to one server node. ``identity_folder=None`` sends no client certificate."""

    def __init__(
        self,
        url: str,
        thumbprints: list[str],
        identity_folder: Path | None,
        *,
        server_name: str | None = None,
        proxy: ProxyRoute | None = None,
        connect_timeout: float | None = 10.0,
        name: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name or self.url  # as messages name the server
        self._ssl = pinned_client_context(thumbprints, identity_folder)
        self._identity_folder = identity_folder
        self._identity_stamp = _stamp(identity_folder)
        self._server_name = server_name
        self.proxy = proxy
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []
        self._closed = False
        self.thumbprints = list(thumbprints)
        self.last_date_header: str | None = None

    async def shut_down(self) -> None:
        """Closes, and from then on a request fails at once: a delivery that outlived the
        daemon's stop (it is shielded) must not open a connection nobody closes; its result
        stays spooled for the next start."""
        self._closed = True
        await self.close()

    async def close(self) -> None:
        """Ends every connection; the next request opens a new one (a new handshake)."""
        for session in [*self._retired, self._session]:
            if session is not None:
                await session.close()
        self._session = None
        self._retired.clear()

    def trust(self, thumbprints: list[str]) -> None:
        """Accepts these server thumbprints on new connections (server certificate rotation)."""
        self.thumbprints = list(thumbprints)
        update_pins(self._ssl, thumbprints)

    def reload_identity_if_changed(self) -> bool:
        """Uses a rotated client certificate from now on; True when it changed.

        Pooled connections were authenticated with the old certificate, so the session is
        retired (requests in flight finish on it) and a new one opens new connections.
        """
        stamp = _stamp(self._identity_folder)
        if self._identity_folder is None or stamp == self._identity_stamp:
            return False
        self._ssl.load_cert_chain(*identity_paths(self._identity_folder))
        self._identity_stamp = stamp
        if self._session is not None:
            self._retired.append(self._session)
            self._session = None
        return True

    async def post(
        self,
        path: str,
        body: BaseModel | bytes,
        answer_type: type[M],
        read_timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> M:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_read=read_timeout + READ_MARGIN_SECONDS
        )
        try:
            async with self._open_session().post(
                self.url + path,
                data=body if isinstance(body, bytes) else encode(body),
                headers={"Content-Type": "application/json", **(headers or {})},
                timeout=timeout,
                **self._route(),
            ) as response:
                payload = await response.read()
                self.last_date_header = response.headers.get("Date")
                return self._answer(response.status, response.headers, payload, answer_type)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._map_error(exc) from exc

    async def download(self, path: str, destination: BinaryIO, offset: int) -> int:
        """Appends the resource's bytes from ``offset`` on to ``destination`` (Range), streaming;
        returns how many bytes arrived. Raises like ``post``; the bytes written stay written."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout, sock_read=60)
        received = 0
        try:
            async with self._open_session().get(
                self.url + path,
                headers=headers,
                timeout=timeout,
                **self._route(),
            ) as response:
                if response.status >= 300:  # raises the error the status maps to
                    self._answer(response.status, response.headers, await response.read(), Problem)
                if offset and response.status != 206:
                    raise ServerUnavailable(f"{self.name} ignored the Range request")
                async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                    destination.write(chunk)
                    received += len(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._map_error(exc) from exc
        return received

    async def upload(self, path: str, source: Path, answer_type: type[M]) -> M:
        """PUTs a file, streamed from disk."""
        timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout, sock_read=60)
        try:
            with open(source, "rb") as handle:
                async with self._open_session().put(
                    self.url + path,
                    data=handle,
                    timeout=timeout,
                    **self._route(),
                ) as response:
                    payload = await response.read()
                    return self._answer(response.status, response.headers, payload, answer_type)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._map_error(exc) from exc

    def _route(self) -> dict[str, Any]:
        """How every request reaches this node: pinned TLS, server name, proxy."""
        return {
            "ssl": self._ssl,
            "server_hostname": self._server_name,
            "proxy": self.proxy.url if self.proxy else None,
            "proxy_headers": self.proxy.headers if self.proxy else None,
        }

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ServerUnavailable(f"{self.name}: not sent, the agent is stopping")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={
                    PROTOCOL_HEADER: PROTOCOL_VERSION,
                    "User-Agent": f"tentacle-poll/{__version__}",
                },
                connector=self._new_connector(),
            )
        return self._session

    def _new_connector(self) -> aiohttp.BaseConnector:
        return aiohttp.TCPConnector(keepalive_timeout=60, socket_factory=keepalive_socket)

    def _answer(
        self, status: int, headers: Mapping[str, str], payload: bytes, answer_type: type[M]
    ) -> M:
        if 200 <= status < 300:
            try:
                return decode(answer_type, payload)
            except ProtocolError as exc:
                raise ServerUnavailable(
                    f"{self.name} sent an answer this agent cannot read: {exc}"
                ) from exc
        problem = _problem(status, payload)
        if status >= 500 or status == 429:
            retry_after = _retry_after(headers)
            raise ServerUnavailable(f"{self.name} answered {status}: {problem.title}", retry_after)
        error_type = (
            LeaseLost if status == 409 and problem.title == "lease lost" else RequestRejected
        )
        raise error_type(status, problem.title, problem.detail)

    def _map_error(self, exc: BaseException) -> CommunicationError:
        route = Route(self.name, self.proxy, with_certificate=self._identity_folder is not None)
        return communication_error(exc, route)


def client_for(
    node: ServerNode, settings: AgentSettings, identity_folder: Path | None
) -> CommsClient:
    """The client for one configured node, with this agent's proxy and timeouts."""
    return CommsClient(
        node.url,
        node.thumbprints,
        identity_folder,
        server_name=node.server_name,
        proxy=proxy_for(node.url, settings.proxy),
        connect_timeout=settings.connect_timeout_seconds,
    )


def _stamp(folder: Path | None) -> tuple[int, int]:
    if folder is None:
        return (0, 0)
    try:
        status = identity_paths(folder)[0].stat()
    except OSError:
        return (0, 0)
    return (status.st_ino, status.st_mtime_ns)


def _problem(status: int, payload: bytes) -> Problem:
    try:
        return decode(Problem, payload)
    except ProtocolError:
        return Problem(
            title=f"HTTP {status}", status=status, detail=payload[:200].decode(errors="replace")
        )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
