"""A TCP relay that can cut a connection right after the server writes its next answer."""

from __future__ import annotations

import asyncio
import contextlib


class CuttingRelay:
    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._armed: bool | None = None  # None: pass through; else forward the chunk first?
        self._cut_after: int | None = None  # cut once this many server bytes went through
        self._cut_each_after_handshake = False
        self.cuts = 0
        self.port = 0
        self._refuse_after_cut = False
        self.refusing = False  # every connection is closed at once, as a dead network would
        self.bad_gateway = False  # every request is answered 502, as a proxy whose server is down
        self._writers: list[asyncio.StreamWriter] = []
        self._closed = False

    async def __aenter__(self) -> CuttingRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._closed = True  # a connection still being set up closes itself (see _accept)
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def cut_after_next_answer(self, forward_first: bool) -> None:
        self._armed = forward_first

    def refuse_after_next_answer(self) -> None:
        """The next answer reaches the agent; then its connection is cut and every connection
        refused (closed at once) until ``restore``."""
        self._armed, self._refuse_after_cut = True, True

    def restore(self) -> None:
        self.refusing = self.bad_gateway = False

    def cut_all_and_answer_bad_gateway(self) -> None:
        """Every open connection is cut now, and every new request answered 502 until
        ``restore``: a reverse proxy in front of a server that went away."""
        self.cut_all_and_refuse()
        self.refusing, self.bad_gateway = False, True

    def cut_all_and_refuse(self) -> None:
        """Every open connection is cut now and new ones closed at once, until ``restore``: the
        other side is gone, as when its machine or the network between fails."""
        self.refusing = True
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def cut_after_bytes(self, count: int) -> None:
        """Cut the connection in the middle of an answer, once ``count`` bytes reached the agent."""
        self._cut_after = count

    def cut_each_connection_after_the_handshake(self) -> None:
        """Every connection is closed once the client's handshake records went through, before
        a byte of its request: read as TLS records (the first record after the client's
        ChangeCipherSpec ends its handshake flight), not as reads, whose sizes vary."""
        self._cut_each_after_handshake = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        if self.bad_gateway:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(BAD_GATEWAY)
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        if self._closed:  # the relay closed while this connection was being made
            for w in (writer, up_writer):
                w.close()
            return
        self._writers += [writer, up_writer]
        upstream = asyncio.create_task(self._pipe(reader, up_writer, cut=False))
        downstream = asyncio.create_task(self._pipe(up_reader, writer, cut=True))
        await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: bool
    ) -> None:
        handshake = _ClientHandshake()
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if not cut and self._cut_each_after_handshake:
                    chunk = handshake.take(chunk)
                    if handshake.done:
                        writer.write(chunk)
                        await writer.drain()
                        self.cuts += 1
                        return
                if cut and self._cut_after is not None:
                    self._cut_after -= len(chunk)
                    if self._cut_after <= 0:
                        self._cut_after = None
                        self.cuts += 1
                        return
                if cut and self._armed is not None:
                    forward, self._armed = self._armed, None
                    self.cuts += 1
                    if forward:
                        writer.write(chunk)
                        await writer.drain()
                    self.refusing, self._refuse_after_cut = self._refuse_after_cut, False
                    return
                writer.write(chunk)
                await writer.drain()


class _ClientHandshake:
    """Splits a TLS client's bytes at the end of its handshake flight: up to and including
    the first record after its ChangeCipherSpec (TLS 1.3 sends one for middlebox
    compatibility; TLS 1.2 one before its Finished)."""

    def __init__(self) -> None:
        self._pending = b""
        self._after_ccs = False
        self.done = False

    def take(self, chunk: bytes) -> bytes:
        """What of ``chunk`` belongs to the handshake, to forward; the rest is withheld."""
        self._pending += chunk
        forward = b""
        while len(self._pending) >= 5 and not self.done:
            size = 5 + int.from_bytes(self._pending[3:5], "big")
            if len(self._pending) < size:
                break
            record, self._pending = self._pending[:size], self._pending[size:]
            forward += record
            self.done = self._after_ccs
            self._after_ccs = self._after_ccs or record[0] == CHANGE_CIPHER_SPEC
        return forward


CHANGE_CIPHER_SPEC = 0x14
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
