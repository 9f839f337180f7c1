"""asyncpg against psycopg 3 on the statements the PostgreSQL store runs most (issue 16),
and what keeping packages in the database costs.

python -m tests.benchmarks.pg_drivers [--dsn postgresql://...] [--rounds N] [--blob-mb N]

Each round is what one task costs the store on its hot path: an insert (queue), a leasing
transaction (SELECT ... FOR UPDATE SKIP LOCKED + UPDATE ... RETURNING), an output append (a
bytea row) and a read by key. Both drivers run the same SQL on one connection each, in a schema
of their own, dropped afterwards; reported: rounds per second (wall) and this process's CPU
milliseconds per round (the server's cost, on a machine whose cores the database shares).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg

DSN = "postgresql://postgres@127.0.0.1:5432/test"
TABLES = """
CREATE TABLE q (id TEXT PRIMARY KEY, agent TEXT NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL,
                created DOUBLE PRECISION NOT NULL);
CREATE INDEX q_by_agent ON q (agent, state, created);
CREATE TABLE o (task TEXT NOT NULL, seq BIGINT NOT NULL, text BYTEA NOT NULL,
                PRIMARY KEY (task, seq));
"""
LEASE = (
    "UPDATE q SET state = 'leased' WHERE id IN (SELECT id FROM q WHERE agent = $1 AND "
    "state = 'queued' ORDER BY created LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, spec"
)
LINES = b"a line of output from a deployment script\n" * 40


async def asyncpg_round(dsn: str, schema: str) -> Callable[[int], Awaitable[None]]:
    db = await asyncpg.connect(dsn, server_settings={"search_path": schema})

    async def one(i: int) -> None:
        await db.execute(
            "INSERT INTO q VALUES ($1, $2, 'queued', $3, $4)", f"t{i}", "a", "{}", time.time()
        )
        async with db.transaction():
            await db.fetch(LEASE, "a")
        await db.execute("INSERT INTO o VALUES ($1, $2, $3)", f"t{i}", 1, LINES)
        await db.fetchrow("SELECT state, spec FROM q WHERE id = $1", f"t{i}")

    return one


async def psycopg_round(dsn: str, schema: str) -> Callable[[int], Awaitable[None]]:
    import psycopg

    db = await psycopg.AsyncConnection.connect(dsn, options=f"-c search_path={schema}")
    await db.set_autocommit(True)

    def numbered(sql: str) -> str:  # psycopg's placeholders are %s
        for n in range(4, 0, -1):
            sql = sql.replace(f"${n}", "%s")
        return sql

    insert, lease = numbered("INSERT INTO q VALUES ($1, $2, 'queued', $3, $4)"), numbered(LEASE)
    append, read = (
        numbered("INSERT INTO o VALUES ($1, $2, $3)"),
        numbered("SELECT state, spec FROM q WHERE id = $1"),
    )

    async def one(i: int) -> None:
        await db.execute(insert, (f"t{i}", "a", "{}", time.time()), prepare=True)
        async with db.transaction():
            await (await db.execute(lease, ("a",), prepare=True)).fetchall()
        await db.execute(append, (f"t{i}", 1, LINES), prepare=True)
        await (await db.execute(read, (f"t{i}",), prepare=True)).fetchone()

    return one


async def measure(name: str, dsn: str, rounds: int) -> tuple[float, float]:
    schema = f"bench_{name}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}; {TABLES}")
    try:
        maker = asyncpg_round if name == "asyncpg" else psycopg_round
        one = await maker(dsn, schema)
        for i in range(50):  # warm up: prepared statements, caches
            await one(-i - 1)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(rounds):
            await one(i)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return rounds / wall, cpu / rounds * 1000
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def compare(dsn: str, rounds: int, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Median rounds/s and CPU ms/round per driver, the drivers alternating."""
    runs: dict[str, list[tuple[float, float]]] = {"asyncpg": [], "psycopg": []}
    for _ in range(repeats):
        for name in runs:
            runs[name].append(await measure(name, dsn, rounds))
    return {
        name: (statistics.median(r for r, _ in got), statistics.median(c for _, c in got))
        for name, got in runs.items()
    }


async def blob_rates(dsn: str, megabytes: int) -> tuple[float, float, float]:
    """(MB/s storing a package into the database, MB/s fetching it on another node into its
    cache, MB/s of a plain file copy of the same bytes): what keeping packages in PostgreSQL
    costs against a node's disk (store/blobs.py)."""
    import shutil
    import tempfile
    from pathlib import Path

    from tentacle_poll.store.blobs import DatabaseBlobs
    from tentacle_poll.store.postgres import PostgresStore

    schema = f"bench_blobs_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE SCHEMA {schema}")
    url = f"{dsn}?search_path={schema}"
    folder = Path(tempfile.mkdtemp(prefix="blobs-"))
    try:
        nodes = [await PostgresStore.open(url, migrate=True) for _ in range(2)]
        blobs = [DatabaseBlobs(node, folder / f"node{n}") for n, node in enumerate(nodes)]
        for blob in blobs:
            blob.folder.mkdir()
        source = folder / "package"
        with open(source, "wb") as handle:
            for _ in range(megabytes):
                handle.write(secrets.token_bytes(1024 * 1024))
        started = time.perf_counter()
        shutil.copyfile(source, folder / "copy")
        copy = megabytes / (time.perf_counter() - started)
        upload = folder / "node0" / ".upload"
        shutil.copyfile(source, upload)
        started = time.perf_counter()
        await blobs[0].keep(upload, "e" * 64)
        store = megabytes / (time.perf_counter() - started)
        started = time.perf_counter()
        await blobs[1].local("e" * 64)
        fetch = megabytes / (time.perf_counter() - started)
        for node in nodes:
            await node.close()
        return store, fetch, copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--blob-mb", type=int, default=256, help="package size for blob rates")
    args = parser.parse_args()
    for name, (rate, cpu) in asyncio.run(compare(args.dsn, args.rounds)).items():
        print(f"{name:8} {rate:8.0f} rounds/s   {cpu:.3f} ms CPU per round (client)")
    store, fetch, copy = asyncio.run(blob_rates(args.dsn, args.blob_mb))
    print(
        f"packages in PostgreSQL: stored at {store:.0f} MB/s, fetched by another node at "
        f"{fetch:.0f} MB/s (a file copy: {copy:.0f} MB/s)"
    )


if __name__ == "__main__":
    main()
