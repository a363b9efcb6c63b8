"""Re-indexing one collection or tenant of a shared table or collection (``collection=``,
``filter=``): the rows the URI does not select belong to other applications' engines, so
they are copied into the target unchanged, never re-embedded, and copied again where
they changed.

The target holds the other rows as copies and the selected rows re-embedded; the
switch (a table rename, an alias) stays one atomic step for every reader. PostgreSQL:
the shadow table gets the other rows at plan time, at catch-up, and once more at cutover
inside the switch's transaction while the live table is locked against writes, so
nothing written to another collection during the job is lost; rollback copies them the
other way. Qdrant has no transaction across collections: the other points are copied
again just before the alias switch, and a write that lands between that copy and the
switch is not carried over (README, "One collection at a time").

Rows are compared by their text form (``ROW(columns)::text``: vectors, json and bytea
print exactly), points by payload and vector; Qdrant re-normalises cosine vectors on
every write, which moves some of them by one float32 rounding step, so those compare
within ``COSINE_RTOL``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from psycopg import sql

from guard.errors import ConfigError, ReindexError
from guard.reindex.pgtable import Conn
from guard.reindex.provenance import Row, merge, store_name
from guard.stores import open_store
from guard.uri import parse

if TYPE_CHECKING:
    from adapters.pgvector import PgVectorStore
    from adapters.qdrant import QdrantStore

PAGE = 256
COSINE_RTOL = 1e-6  # Qdrant's re-normalisation moves a unit vector by ~1e-7 at most
EXAMPLES = 5


def is_part(uri: str) -> bool:
    """Whether the URI selects part of a table or collection (``collection=`` on
    PostgreSQL, ``filter=`` on either store)."""
    parsed = parse(uri)
    names = ("filter",) if parsed.scheme.startswith("qdrant") else ("collection", "filter")
    return any(name in parsed.params for name in names)


def refuse_other_dims(source_dims: int, candidate_dims: int) -> None:
    """The other rows keep their vectors, so the candidate must make vectors of their size
    (a Qdrant collection has one size per vector, and a typed pgvector column too)."""
    if source_dims != candidate_dims:
        raise ConfigError(
            f"the candidate makes {candidate_dims}-dimensional vectors and the stored ones have"
            f" {source_dims}: one collection of a shared table or collection can only be"
            " re-indexed by an engine of the same size (the others keep their vectors);"
            " write the collection to a store of its own"
        )


@dataclass
class OthersCheck:
    """The rows outside the selection: how many the live side has, and which differ in
    the target (missing, stale, extra, or re-embedded)."""

    records: int = 0
    differ: list[Any] = field(default_factory=list)
    count: int = 0  # every differing row; ``differ`` holds the first few


def copy_others(live_uri: str, into_uri: str) -> int:
    """Copy (again) into ``into_uri`` the rows outside the selection that differ from the
    live side's; returns the number of rows written or removed."""
    if parse(live_uri).scheme.startswith("qdrant"):
        return _qdrant_copy(live_uri, into_uri)
    from guard.reindex.targets import _pg_connect

    part = pg_part(live_uri)
    with _pg_connect(live_uri) as conn, conn.transaction():
        return pg_copy(conn, part, store_name(live_uri), store_name(into_uri))


def check_others(live_uri: str, into_uri: str) -> OthersCheck:
    if parse(live_uri).scheme.startswith("qdrant"):
        return _qdrant_check(live_uri, into_uri)
    from guard.reindex.targets import _pg_connect

    part = pg_part(live_uri)
    with _pg_connect(live_uri) as conn:
        return pg_check(conn, part, store_name(live_uri), store_name(into_uri))


# --- PostgreSQL ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PgPart:
    """What selects the part: the condition of ``PgVectorStore.selection`` (unqualified
    column names, so it reads the same on the live table and on its shadow)."""

    schema: str
    id_column: str
    where: sql.Composable
    params: tuple[Any, ...]


def pg_part(uri: str) -> PgPart:
    store: PgVectorStore = open_store(uri)  # type: ignore[assignment]
    try:
        info = store.describe()
        where, params = store.selection()
    finally:
        store.close()
    return PgPart(str(info.details["schema"]), str(info.details["id_column"]), where, params)


def _columns(conn: Conn, schema: str, live: str, into: str) -> list[str]:
    """The stored (not generated) columns both tables have, in the live table's order."""
    found = conn.execute(
        "SELECT a.attname FROM pg_attribute a"
        " WHERE a.attrelid = (quote_ident(%(s)s) || '.' || quote_ident(%(l)s))::regclass"
        " AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''"
        " AND EXISTS (SELECT 1 FROM pg_attribute b WHERE b.attname = a.attname"
        "  AND b.attrelid = (quote_ident(%(s)s) || '.' || quote_ident(%(i)s))::regclass"
        "  AND b.attnum > 0 AND NOT b.attisdropped AND b.attgenerated = '')"
        " ORDER BY a.attnum",
        {"s": schema, "l": live, "i": into},
    ).fetchall()
    return [str(name) for (name,) in found]


def _diff(
    conn: Conn, part: PgPart, live: str, into: str
) -> tuple[sql.Composed, list[Any], list[str]]:
    """Ids (``k``) of the rows outside the selection that differ between the two tables,
    and whether the live table has them (``in_live``): missing from ``into``, changed,
    gone from the live table, or selected in ``into`` but no longer live."""
    columns = _columns(conn, part.schema, live, into)
    row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
    key = sql.Identifier(part.id_column)
    query = sql.SQL(
        "SELECT coalesce(l.k, s.k) AS k, l.k IS NOT NULL AS in_live FROM"
        " (SELECT {key} AS k, {row} AS r FROM {live} WHERE ({where}) IS NOT TRUE) l"
        " FULL JOIN"
        " (SELECT {key} AS k, {row} AS r, ({where}) IS TRUE AS chosen FROM {into}) s"
        " ON s.k = l.k"
        " WHERE (l.k IS NULL AND NOT s.chosen) OR s.k IS NULL"
        " OR (l.k IS NOT NULL AND (s.chosen OR l.r <> s.r))"
    ).format(
        key=key,
        row=row,
        live=sql.Identifier(part.schema, live),
        into=sql.Identifier(part.schema, into),
        where=part.where,
    )
    return query, [*part.params, *part.params], columns


def pg_copy(conn: Conn, part: PgPart, live: str, into: str) -> int:
    """Within the caller's transaction: make ``into``'s rows outside the selection equal
    to ``live``'s, touching only those that differ (an index on ``into`` is updated row
    by row, so a full rewrite would cost as much as the re-index)."""
    diff, params, columns = _diff(conn, part, live, into)
    conn.execute(
        sql.SQL("CREATE TEMP TABLE guard_part_diff ON COMMIT DROP AS {}").format(diff), params
    )
    key, target = sql.Identifier(part.id_column), sql.Identifier(part.schema, into)
    removed = conn.execute(
        sql.SQL("DELETE FROM {} WHERE {} IN (SELECT k FROM guard_part_diff)").format(target, key)
    ).rowcount
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    copied = conn.execute(
        sql.SQL(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}"
            " WHERE {} IN (SELECT k FROM guard_part_diff WHERE in_live)"
        ).format(target, names, names, sql.Identifier(part.schema, live), key)
    ).rowcount
    conn.execute("DROP TABLE guard_part_diff")
    return max(removed, 0) + max(copied, 0)


def pg_check(conn: Conn, part: PgPart, live: str, into: str) -> OthersCheck:
    diff, params, _ = _diff(conn, part, live, into)
    found = conn.execute(
        sql.SQL("SELECT count(*), (array_agg(k::text ORDER BY k::text))[1:{}] FROM ({}) d").format(
            sql.Literal(EXAMPLES), diff
        ),
        params,
    ).fetchone()
    others = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE ({}) IS NOT TRUE").format(
            sql.Identifier(part.schema, live), part.where
        ),
        part.params,
    ).fetchone()
    count, examples = (int(found[0]), list(found[1] or [])) if found else (0, [])
    return OthersCheck(int(others[0]) if others else 0, examples, count)


def pg_copy_locked(conn: Conn, part: PgPart, live: str, into: str) -> None:
    """At a switch, inside its transaction: lock the live table against writes (readers
    go on), copy the other rows once more, and prove them equal before the renames."""
    conn.execute(
        sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
            sql.Identifier(part.schema, live)
        )
    )
    pg_copy(conn, part, live, into)
    check = pg_check(conn, part, live, into)
    if check.count:
        raise ReindexError(
            f"{check.count} rows outside the selection still differ after copying them"
            f" (e.g. {', '.join(map(str, check.differ))}); not switching"
        )


# --- Qdrant --------------------------------------------------------------------------------


def _qdrant_store(uri: str) -> QdrantStore:
    from adapters.qdrant import QdrantStore

    store = open_store(uri)
    if not isinstance(store, QdrantStore):
        raise ReindexError(f"not a Qdrant store: {store.uri}")
    return store


def _qdrant_others(store: QdrantStore) -> Iterator[Row]:
    """The points outside the selection in id order, with payloads and every vector."""
    offset: Any = None
    while True:
        with store._errors():  # the adapter's one error map, shared with its reads
            points, offset = store.client.scroll(
                store.collection,
                scroll_filter=store.others(),
                offset=offset,
                limit=PAGE,
                with_payload=True,
                with_vectors=True,
            )
        for point in points:
            point_id = point.id if isinstance(point.id, int) else str(point.id)
            yield Row(point_id, None, {"payload": point.payload or {}, "vector": point.vector})
        if offset is None:
            return


def _cosine_vectors(store: QdrantStore) -> dict[str | None, bool]:
    """Which vectors (None: the unnamed one) Qdrant re-normalises on write."""
    from qdrant_client import models

    with store._errors():
        vectors = store.client.get_collection(store.collection).config.params.vectors
    if isinstance(vectors, models.VectorParams):
        return {None: vectors.distance == models.Distance.COSINE}
    return {name: p.distance == models.Distance.COSINE for name, p in (vectors or {}).items()}


def _same_vector(left: Any, right: Any, cosine: bool) -> bool:
    if not isinstance(left, list) or not isinstance(right, list):
        return bool(left == right)  # sparse or multi-vectors: exactly equal
    a, b = np.asarray(left, np.float32), np.asarray(right, np.float32)
    if a.shape != b.shape:
        return False
    return bool(np.allclose(a, b, rtol=COSINE_RTOL, atol=0.0)) if cosine else bool((a == b).all())


def _same_point(left: Row, right: Row, cosine: dict[str | None, bool]) -> bool:
    if left.payload["payload"] != right.payload["payload"]:
        return False
    a, b = left.payload["vector"], right.payload["vector"]
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(
            _same_vector(a[name], b[name], cosine.get(name, False)) for name in a
        )
    return _same_vector(a, b, cosine.get(None, False))


def _qdrant_pairs(live: QdrantStore, into: QdrantStore) -> Iterator[tuple[Row | None, Row | None]]:
    """(live point, target point) pairs of the points outside the selection that differ."""
    cosine = _cosine_vectors(live)
    for left, right in merge(_qdrant_others(live), _qdrant_others(into)):
        if left is None or right is None or not _same_point(left, right, cosine):
            yield left, right


def _qdrant_copy(live_uri: str, into_uri: str) -> int:
    from qdrant_client import models

    live, into = _qdrant_store(live_uri), _qdrant_store(into_uri)
    try:
        writes: list[models.PointStruct] = []
        deletes: list[Any] = []
        changed = 0
        for left, right in _qdrant_pairs(live, into):
            changed += 1
            if left is None:
                assert right is not None
                deletes.append(right.id)
            else:
                vector, payload = left.payload["vector"], left.payload["payload"]
                writes.append(models.PointStruct(id=left.id, vector=vector, payload=payload))
            if len(writes) >= PAGE or len(deletes) >= PAGE:
                _qdrant_write(into, writes, deletes)
        _qdrant_write(into, writes, deletes)
    finally:
        into.close()
        live.close()
    return changed


def _qdrant_write(store: QdrantStore, writes: list[Any], deletes: list[Any]) -> None:
    """Apply and clear the pending writes and deletes. Points are written with the
    vectors and payloads read (not through ``upsert``, which writes the text field)."""
    from qdrant_client import models

    with store._errors():
        if writes:
            store.client.upsert(store.collection, writes)
        if deletes:
            store.client.delete(store.collection, models.PointIdsList(points=deletes))
    writes.clear()
    deletes.clear()


def _qdrant_check(live_uri: str, into_uri: str) -> OthersCheck:
    live, into = _qdrant_store(live_uri), _qdrant_store(into_uri)
    try:
        result = OthersCheck()
        for left, right in _qdrant_pairs(live, into):
            result.count += 1
            point = left or right
            if point is not None and len(result.differ) < EXAMPLES:
                result.differ.append(point.id)
        with live._errors():
            others = live.others()
            result.records = live.client.count(live.collection, count_filter=others).count
    finally:
        into.close()
        live.close()
    return result
