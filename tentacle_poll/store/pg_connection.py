"""The PostgreSQL connection pool, with the driver's errors named in the store's words.

asyncpg, not psycopg 3: on the store's hot statements it did 1.27x the rounds per second for
0.57x the client CPU (tests/benchmarks/pg_drivers.py; docs/high-availability.md has figures),
and it has LISTEN built in.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg

from tentacle_poll.exceptions import ConfigurationError, StorageFull, StoreUnavailable

# The pool's own retries log a traceback at WARNING through the standard library: the node's
# heartbeat and health report a database that is away, in one line.
logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)

POOL_SIZE = 10
CONNECT_SECONDS = 10.0
# Lost or refused connections, a server shutting down, too many clients: a retry will do.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def described(url: str) -> str:
    """The database as logs and errors may name it: never its password."""
    parts = urlsplit(url)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
    return f"postgresql://{where}" + (f"?{parts.query}" if parts.query else "")


@contextlib.contextmanager
def translated(url: str) -> Iterator[None]:
    try:
        yield
    except asyncpg.exceptions.DiskFullError as exc:
        raise StorageFull(f"the database's disk is full ({exc})") from exc
    except UNAVAILABLE as exc:
        raise StoreUnavailable(
            f"the database {described(url)} cannot be reached ({exc or type(exc).__name__})"
        ) from exc


async def _keep_session(connection: asyncpg.Connection) -> None:
    """What a connection needs between two uses of the pool: nothing. The store sets no
    session state (no SET, LISTEN, session lock or cursor: the listener has a connection of its
    own), and asyncpg still rolls back an open transaction; its default reset (RESET ALL,
    UNLISTEN, unlock, CLOSE) would cost one more round trip for every statement."""


async def open_pool(url: str) -> asyncpg.Pool:
    try:
        with translated(url):
            # Every connection made at start: one made during a burst (10,000 agents woken
            # by a fan-out) waits behind the whole burst for its handshake, times out, and
            # the requests waiting on it were answered "database unreachable".
            return await asyncpg.create_pool(
                url,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                timeout=CONNECT_SECONDS,
                reset=_keep_session,
            )
    except StoreUnavailable as exc:
        raise ConfigurationError(
            f"{exc}; check store_url (server.toml or TENTACLE_POLL_STORE_URL) and that "
            "PostgreSQL is running"
        ) from exc
    except asyncpg.PostgresError as exc:  # no such database, role, or a refused login
        raise ConfigurationError(
            f"the database {described(url)} refused the connection ({exc}); check store_url"
        ) from exc
