"""Reference for memory per connection: a plain asyncio TLS server (default 256 KiB read
buffers) that accepts connections and keeps them open without answering, like a held poll."""

from __future__ import annotations

import asyncio
import ssl
import sys
import tempfile
from pathlib import Path

from tentacle_poll.tls import generate_identity, save_identity


async def main(port: int) -> None:
    folder = Path(tempfile.mkdtemp())
    save_identity(folder, generate_identity("plain"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client goes away

    server = await asyncio.start_server(hold, "127.0.0.1", port, ssl=context, backlog=4096)
    print("listening", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
