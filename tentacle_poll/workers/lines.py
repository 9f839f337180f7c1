"""Turn a child's output pipe into text lines, without ever failing on a long line."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Callable

CHUNK_BYTES = 64 * 1024


class LineSplitter:
    """Feeds bytes in, calls ``emit`` once per complete line; overlong lines are cut in pieces."""

    def __init__(self, emit: Callable[[str], None], max_chars: int) -> None:
        self._emit = emit
        self._max_chars = max_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> None:
        text = self._partial + self._decoder.decode(data)
        *complete, self._partial = text.split("\n")
        for line in complete:
            self._emit_cut(line.removesuffix("\r"))
        while len(self._partial) >= self._max_chars:
            self._emit(self._partial[: self._max_chars])
            self._partial = self._partial[self._max_chars :]

    def close(self) -> None:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self._emit_cut(rest.removesuffix("\r"))

    def _emit_cut(self, line: str) -> None:
        for start in range(0, max(len(line), 1), self._max_chars):
            self._emit(line[start : start + self._max_chars])


async def pump_lines(reader: asyncio.StreamReader, splitter: LineSplitter) -> None:
    """Read until EOF in chunks (``readline`` raises past its limit; chunks never do)."""
    while chunk := await reader.read(CHUNK_BYTES):
        splitter.feed(chunk)
    splitter.close()
