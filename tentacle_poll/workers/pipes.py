"""A child's output pipe, read without a wake-up for every write.

A script printing fast writes its pipe a few KiB at a time; reading each write as it lands costs
a wake-up, a read and an output block per write (over 12,000 of each for 100 MB, measured).
Here a pipe written in a burst is read at most once per LINGER_SECONDS, in reads of up to
READ_BYTES, from a pipe enlarged to PIPE_BYTES so that the writer seldom waits meanwhile. The
first output after a quiet spell is read at once: a line printed now and then still arrives in
milliseconds, and a burst is delayed by at most LINGER_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time

READ_BYTES = 128 * 1024
PIPE_BYTES = 1024 * 1024
LINGER_SECONDS = 0.001
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; the constant is new in 3.10


class OutputPipe:
    """One pipe: ``write_fd`` goes to the child, ``read`` gives what it wrote."""

    def __init__(self) -> None:
        self._fd, self.write_fd = os.pipe()
        os.set_blocking(self._fd, False)
        # Over the user's pipe quota the default size stays: it only costs more reads.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, F_SETPIPE_SZ, PIPE_BYTES)
        self._last_read = 0.0
        self._bursting = False

    def close_write_end(self) -> None:
        """After the spawn: the child holds its own copy, and EOF comes when it closes it."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_write_end()
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    async def read(self) -> bytes:
        """The next bytes the child wrote; b"" once every writer has closed the pipe."""
        if self._bursting:
            await asyncio.sleep(LINGER_SECONDS)
        data = await self._read_when_ready()
        now = time.monotonic()
        # A full read means more is waiting: read again at once. A read soon after the last
        # one means the writer is busy: let the pipe fill before the next.
        self._bursting = len(data) < READ_BYTES and now - self._last_read < LINGER_SECONDS
        self._last_read = now
        return data

    async def _read_when_ready(self) -> bytes:
        while True:
            try:
                return os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                await self._readable()

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        fd, ready = self._fd, loop.create_future()
        loop.add_reader(fd, _resolve, ready)
        try:
            await ready
        finally:
            if self._fd == fd:  # close() already unregistered it; the number may be reused
                loop.remove_reader(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
