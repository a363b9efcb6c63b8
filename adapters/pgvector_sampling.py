"""Drawing a uniform random sample of a pgvector table without reading all of it.

The three draws ``PgVectorStore.sample`` chooses from (README, "How the sample is drawn"):
every id through the index, random ids of a dense integer key kept where a row exists
(rejection), or the rows of ``TABLESAMPLE SYSTEM`` pages. Each returns ids only, in an
order that depends on the seed alone; the store fetches the rows. Kept apart from the
store because the draws are statistics on top of the catalog (``guard.adapters.
pgvector_catalog.Table``), not reads a caller asks for. The caller runs them inside the
store's ``translate_errors``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from guard.adapters.pgvector_catalog import Table, id_kind

SAMPLE_SPREAD = 2  # pages read per record drawn, so that picks rarely share a page
DENSE_IDS = 0.1  # integer ids filling this share of their range are drawn directly
MAX_DRAW_ROUNDS = 50


def row_estimate(conn: psycopg.Connection[Any], t: Table) -> int:
    """The planner's row count, or an exact count where the table was never analysed
    or ``collection=``/``filter=`` selects part of it."""
    row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s", [t.oid]).fetchone()
    if not t.filtered and row and row[0] is not None and row[0] >= 0:
        return int(row[0])
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(t.ident, t.where)
    counted = conn.execute(query, t.where_params).fetchone()
    return int(counted[0]) if counted else 0


def all_ids(conn: psycopg.Connection[Any], t: Table) -> list[Any]:
    """Every selected id with a vector, in id order."""
    query = sql.SQL("{} ORDER BY {}").format(t.select_ids(), sql.Identifier(t.id_column))
    return [r[0] for r in conn.execute(query, t.where_params).fetchall()]


def dense_id_span(conn: psycopg.Connection[Any], t: Table, rows: int) -> tuple[int, int] | None:
    """(lowest id, span) for an indexed integer id filling a tenth of its range."""
    if id_kind(t.columns[t.id_column]) != "int" or not _leads_an_index(conn, t):
        return None
    ident = sql.Identifier(t.id_column)
    found = conn.execute(
        sql.SQL("SELECT min({id}), max({id}) FROM {t} WHERE {where}").format(
            id=ident, t=t.ident, where=t.where
        ),
        t.where_params,
    ).fetchone()
    if found is None or found[0] is None:
        return None
    low, span = int(found[0]), int(found[1]) - int(found[0]) + 1
    return (low, span) if rows / span >= DENSE_IDS else None


def _leads_an_index(conn: psycopg.Connection[Any], t: Table) -> bool:
    """Whether a btree index starts with the id column (min, max and id lookups use it)."""
    found = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am am ON am.oid = c.relam JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = %s AND a.attname = %s AND am.amname = 'btree'",
        [t.oid, t.id_column],
    ).fetchone()
    return found is not None


def draw_ids(
    conn: psycopg.Connection[Any],
    t: Table,
    rng: np.random.Generator,
    n: int,
    low: int,
    span: int,
    rows: int,
) -> list[Any]:
    """Uniform random ids in ``[low, low + span)`` in draw order, kept where a row with
    a vector exists, until ``n`` are found: each row equally likely (rejection)."""
    query = t.select_ids(condition=sql.SQL("{} = ANY(%s)").format(sql.Identifier(t.id_column)))
    chosen: list[int] = []
    tried: set[int] = set()
    for _ in range(MAX_DRAW_ROUNDS):
        if len(chosen) >= n or len(tried) >= span:
            break
        want = math.ceil((n - len(chosen)) * span / max(rows, 1) * 1.25) + 8
        drawn = (low + rng.integers(0, span, size=want, dtype=np.int64)).tolist()
        fresh = [i for i in dict.fromkeys(drawn) if i not in tried]
        tried.update(fresh)
        found = conn.execute(query, [fresh, *t.where_params]).fetchall()
        exists = {int(r[0]) for r in found}
        chosen += [i for i in fresh if i in exists][: n - len(chosen)]
    return chosen


def page_sample(conn: psycopg.Connection[Any], t: Table, n: int, seed: int) -> list[Any]:
    """Ids of the rows on about ``SAMPLE_SPREAD * n`` random pages, sorted (so the
    draw from them depends on the seed only)."""
    row = conn.execute(
        "SELECT pg_relation_size(%s::oid) / current_setting('block_size')::int", [t.oid]
    ).fetchone()
    pages = max(int(row[0]) if row else 0, 1)
    percent = min(100.0, 100.0 * SAMPLE_SPREAD * n / pages)
    query = t.select_ids(sampling=sql.SQL("TABLESAMPLE SYSTEM (%s) REPEATABLE (%s)"))
    while True:
        found = conn.execute(query, [percent, seed, *t.where_params]).fetchall()
        ids = [r[0] for r in found]
        if len(ids) >= SAMPLE_SPREAD * n or percent >= 100.0:
            return sorted(ids)
        percent = min(100.0, percent * max(2.0, 1.25 * SAMPLE_SPREAD * n / (len(ids) or 1)))
