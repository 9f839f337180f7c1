"""Turn a child's output pipe into text lines, without ever failing on a long line."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Callable

from tentacle_poll.workers.masking import SecretMasker

CHUNK_BYTES = 64 * 1024


class LineSplitter:
    """Feeds bytes in, calls ``emit`` with every complete line of each feed, joined by newlines.

    A busy pipe thus yields a block of lines per read (cheap at millions of lines), an idle one
    a line at a time. Lines longer than ``max_chars`` are cut in pieces, each but the last
    emitted on its own with ``continues`` set, so that a follower can show the line whole; a
    trailing carriage return is dropped.

    ``masker`` hides secrets before any cut, so that no boundary the splitter makes (a read
    chunk, a long line's pieces) can split a secret in two unmasked halves: complete lines are
    masked whole, and a line still being written is cut only where every secret that could
    cross the cut is already complete in the buffer (``masker.longest`` characters past it).
    """

    def __init__(
        self, emit: Callable[[str, bool], None], max_chars: int, masker: SecretMasker | None = None
    ) -> None:
        self._emit = emit
        self._max_chars = max_chars
        self._masker = masker or SecretMasker(())
        self._holdback = max(self._masker.longest - 1, 0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> None:
        text = self._partial + self._decoder.decode(data)
        complete, newline, self._partial = text.rpartition("\n")
        if newline:
            self._emit_block(complete)
        if len(self._partial) >= self._max_chars + self._holdback:
            self._cut_unfinished_line()

    def _cut_unfinished_line(self) -> None:
        self._partial = self._masker.mask(self._partial)
        while len(self._partial) >= self._max_chars + self._holdback:
            self._emit(self._partial[: self._max_chars], True)  # the line goes on
            self._partial = self._partial[self._max_chars :]

    def close(self) -> None:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self._emit_block(rest)

    def _emit_block(self, block: str) -> None:
        if "\r" in block:
            block = (block + "\n").replace("\r\n", "\n")[:-1]
        block = self._masker.mask(block)
        if len(block) > self._max_chars and self._may_hold_a_long_line(block):
            self._emit_cutting_long_lines(block)
        else:
            self._emit(block, False)

    def _emit_cutting_long_lines(self, block: str) -> None:
        """Short lines go out together; each piece of a long line but its last goes out on
        its own, marked as continued; the last piece ends the line like any short one."""
        size, group = self._max_chars, list[str]()
        for line in block.split("\n"):
            if len(line) > size:
                if group:
                    self._emit("\n".join(group), False)
                for start in range(0, len(line) - size, size):
                    self._emit(line[start : start + size], True)
                group = [line[(len(line) - 1) // size * size :]]
            else:
                group.append(line)
        self._emit("\n".join(group), False)

    def _may_hold_a_long_line(self, block: str) -> bool:
        """False when every aligned window of half the limit holds a newline: then no line can
        be as long as the limit. A few substring searches instead of splitting every block."""
        half = max(self._max_chars // 2, 1)
        return any("\n" not in block[i : i + half] for i in range(0, len(block) - half + 1, half))


async def pump_lines(reader: asyncio.StreamReader, splitter: LineSplitter) -> None:
    """Read until EOF in chunks (``readline`` raises past its limit; chunks never do)."""
    while chunk := await reader.read(CHUNK_BYTES):
        splitter.feed(chunk)
    splitter.close()
