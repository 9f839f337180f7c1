"""Memory per held connection: the one place the server tunes asyncio's TLS buffers.

asyncio's ``SSLProtocol`` allocates a read buffer of ``max_size`` (256 KiB) for every TLS
connection, up front. An idle long poll never needs it: a TLS record carries at most 16 KiB of
plaintext, and large bodies are simply read in more chunks. At 10,000 held polls that one buffer
is 2.5 GiB; at 32 KiB it is 320 MiB. (Measured: docs/benchmarks.md.)
"""

from __future__ import annotations

import asyncio.sslproto

TLS_READ_BUFFER_BYTES = 32 * 1024


def shrink_tls_read_buffers(size: int = TLS_READ_BUFFER_BYTES) -> None:
    """Applies to TLS connections accepted or opened from now on, in this process."""
    asyncio.sslproto.SSLProtocol.max_size = size
