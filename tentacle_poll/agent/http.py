"""A small HTTP/1.1 client over asyncio streams, for the agent only.

The agent needs little of HTTP: JSON POSTs, a streamed GET with Range and a streamed PUT, over
TLS pinned by thumbprint, directly or through an HTTP CONNECT proxy, with keep-alive. aiohttp
does all that and much more, and importing it costs the agent about 13 MB of memory (a third of
its footprint); this does what the agent needs in a few hundred lines. Errors are raised as
they come (OSError, ssl.SSLError, TimeoutError, IncompleteReadError, ProxyStatus); the
transport maps them to the exception tree.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tentacle_poll.agent.proxy import ProxyRoute
from tentacle_poll.keepalive import enable_keepalive

CHUNK = 256 * 1024
MAX_HEADER_LINES = 100
IDLE_REUSE_SECONDS = 30.0  # the server closes idle connections later than this


class ProxyStatus(Exception):
    """The proxy answered CONNECT with something other than 200."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    received: int = 0  # bytes written to the sink, when one was given


@dataclass(eq=False)  # hashed by identity: kept in a set while busy
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used_at: float = field(default_factory=time.monotonic)

    def reusable(self) -> bool:
        fresh = time.monotonic() - self.used_at < IDLE_REUSE_SECONDS
        return fresh and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, server_name: str | None,
        proxy: ProxyRoute | None, connect_timeout: float, default_headers: Mapping[str, str],
    ) -> None:  # fmt: skip
        self.host, self.port, self.context = host, port, context
        self.server_name = server_name or (None if _is_ip(host) else host)
        self.proxy = proxy
        self.connect_timeout = connect_timeout
        self.default_headers = dict(default_headers)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()

    async def close(self) -> None:
        """Closes idle and busy connections (a held poll ends at once)."""
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()
        self._busy.clear()

    def drop_idle(self) -> None:
        """Forget pooled connections (after a client certificate change)."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def request(
        self, method: str, path: str, *, body: bytes | Path = b"",
        headers: Mapping[str, str] | None = None, read_timeout: float = 60.0,
        sink: BinaryIO | None = None,
    ) -> Response:  # fmt: skip
        connection = await self._connection()
        self._busy.add(connection)
        try:
            await self._send(connection, method, path, body, headers or {})
            async with asyncio.timeout(read_timeout):
                response, keep = await self._receive(connection, sink)
        except BaseException:
            connection.close()
            raise
        finally:
            self._busy.discard(connection)
        if keep:
            connection.used_at = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            connection.close()
        async with asyncio.timeout(self.connect_timeout):
            return await self._open()

    async def _open(self) -> _Connection:
        if self.proxy is None:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.context, server_hostname=self.server_name or ""
            )
        else:
            reader, writer = await asyncio.open_connection(self.proxy.host, self.proxy.port)
            await self._tunnel(reader, writer, self.proxy)
            await writer.start_tls(self.context, server_hostname=self.server_name or "")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            enable_keepalive(sock)
        return _Connection(reader, writer)

    async def _tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: ProxyRoute
    ) -> None:
        target = f"{self.host}:{self.port}"
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in proxy.headers.items()) + "\r\n"
        writer.write(head.encode())
        status, reason, headers = await _read_head(reader)
        length = int(headers.get("content-length", "0") or 0)
        if length:
            await reader.readexactly(length)
        if status != 200:
            writer.close()
            raise ProxyStatus(status, reason)

    async def _send(
        self, connection: _Connection, method: str, path: str, body: bytes | Path,
        headers: Mapping[str, str],
    ) -> None:  # fmt: skip
        size = body.stat().st_size if isinstance(body, Path) else len(body)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.server_name or self.host}"]
        merged = {**self.default_headers, **headers, "Content-Length": str(size)}
        lines += [f"{k}: {v}" for k, v in merged.items()]
        connection.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if isinstance(body, Path):
            with open(body, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    connection.writer.write(chunk)
                    await connection.writer.drain()
        else:
            connection.writer.write(body)
        await connection.writer.drain()

    async def _receive(
        self, connection: _Connection, sink: BinaryIO | None
    ) -> tuple[Response, bool]:
        status, _, headers = await _read_head(connection.reader)
        response = Response(status, headers)
        keep = headers.get("connection", "").lower() != "close"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            await _read_chunked(connection.reader, response, sink if status < 300 else None)
        elif "content-length" in headers:
            await _read_length(connection.reader, int(headers["content-length"]), response,
                               sink if status < 300 else None)  # fmt: skip
        else:
            response.body = await connection.reader.read()
            keep = False
        return response, keep


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        raw = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not raw:
            return int(parts[1]), parts[2] if len(parts) > 2 else "", headers
        name, _, value = raw.partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ConnectionError("too many header lines")


async def _read_length(
    reader: asyncio.StreamReader, length: int, response: Response, sink: BinaryIO | None
) -> None:
    if sink is None:
        response.body = await reader.readexactly(length)
        return
    remaining = length
    while remaining:
        chunk = await reader.read(min(CHUNK, remaining))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", remaining)
        sink.write(chunk)
        response.received += len(chunk)
        remaining -= len(chunk)


async def _read_chunked(
    reader: asyncio.StreamReader, response: Response, sink: BinaryIO | None
) -> None:
    parts: list[bytes] = []
    while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        if sink is None:
            parts.append(data)
        else:
            sink.write(data)
            response.received += size
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass  # trailers
    response.body = b"".join(parts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
