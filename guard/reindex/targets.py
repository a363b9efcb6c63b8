"""What a re-index does to each kind of store beyond the ``VectorStore`` Protocol: create a
target shaped like the source, switch readers over in one atomic step, switch back, and
drop the side that is no longer live.

Qdrant: the target is a new collection with the source's vector names, distance, HNSW
settings and payload indexes; readers switch through an alias in one
``update_collection_aliases`` call. pgvector: the target is a shadow table made with
``CREATE TABLE ... (LIKE source INCLUDING ALL)`` (every column, default, constraint and
index) and nothing else: frameworks that read every column (Haystack) would show any
column of the guard's to the application after cutover. Its HNSW or IVFFlat indexes are
built on the new vectors just before the switch. The switch renames both tables in one
transaction under ``lock_timeout`` and moves everything else the live table had onto
the one that takes its name (index and constraint names, foreign keys both ways,
triggers, policies, grants, comments, owned sequences: guard.reindex.pgtable); rollback
is the same switch the other way. Views that select from the source stay bound to the
kept table (PostgreSQL binds them by oid): recreate them after cutover.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from guard.errors import ReindexError, StoreError
from guard.pgserver import embedded_dsn
from guard.records import StoreInfo
from guard.reindex import parts, pgtable
from guard.stores import VectorStore, open_store
from guard.uri import parse, redact

if TYPE_CHECKING:
    from adapters.qdrant import QdrantStore

LOCK_TIMEOUT = "5s"


def is_qdrant(uri: str) -> bool:
    return parse(uri).scheme.startswith("qdrant")


def _qdrant_store(store: VectorStore) -> QdrantStore:
    from adapters.qdrant import QdrantStore

    if not isinstance(store, QdrantStore):
        raise ReindexError(f"not a Qdrant store: {store.uri}")
    return store


@contextmanager
def _qdrant_call(store_uri: str) -> Iterator[Any]:
    """The qdrant-client of the store at ``store_uri``, its errors (qdrant-client's,
    httpx's) turned into one-line StoreErrors by the adapter's own map."""
    store = _qdrant_store(open_store(store_uri))
    try:
        with store._errors():  # the adapter's one error map, shared with its reads
            yield store.client
    finally:
        store.close()


def create_target(source_uri: str, target_uri: str, dims: int, info: StoreInfo) -> None:
    """An empty target shaped like the source, with the candidate's dimensions."""
    source, target = open_store(source_uri), open_store(target_uri)
    try:
        if is_qdrant(source_uri):
            _create_qdrant(source, target, dims)
        else:
            _create_pg(source_uri, target_uri, dims, info)
    finally:
        target.close()
        source.close()


def _create_qdrant(source: VectorStore, target: VectorStore, dims: int) -> None:
    from qdrant_client import models

    store = _qdrant_store(source)
    client, name, new = store.client, store.collection, _qdrant_store(target).collection
    with store._errors():  # the adapter's one error map (as _qdrant_call), on the open store
        try:
            if client.collection_exists(new):
                raise ReindexError(f"the target collection {new!r} already exists")
            config = client.get_collection(name)
            vectors = config.config.params.vectors
            if isinstance(vectors, models.VectorParams):
                vectors_config: Any = vectors.model_copy(update={"size": dims})
            else:
                vectors_config = {
                    key: value.model_copy(update={"size": dims})
                    for key, value in (vectors or {}).items()  # None: sparse vectors only
                }
            hnsw = config.config.hnsw_config
            client.create_collection(
                new,
                vectors_config=vectors_config,
                hnsw_config=models.HnswConfigDiff(**hnsw.model_dump()) if hnsw else None,
                on_disk_payload=config.config.params.on_disk_payload,
            )
            for field, schema in (config.payload_schema or {}).items():
                client.create_payload_index(new, field, field_schema=schema.data_type)
            _qdrant_store(target).use_wal_journal()
        except (ValueError, RuntimeError) as exc:
            raise StoreError(f"cannot create the target collection: {exc}", uri=target.uri) from exc


def pg_dsn(uri: str) -> str:
    """A libpq DSN for a ``postgresql:`` or ``pgserver:`` URI (the guard's options removed)."""
    from adapters.pgvector import GUARD_PARAMS

    parsed = parse(uri)
    if parsed.scheme == "pgserver":
        return embedded_dsn(parsed.netloc + parsed.path)
    return parsed.without_params(*GUARD_PARAMS)


def _pg_connect(uri: str) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(pg_dsn(uri), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise StoreError(f"PostgreSQL: {redact(str(exc))}", uri=redact(uri)) from exc


def _pg_names(uri: str, info: StoreInfo) -> tuple[str, str]:
    params = parse(uri).params
    return str(info.details.get("schema") or params.get("schema") or "public"), params["table"]


def _create_pg(source_uri: str, target_uri: str, dims: int, info: StoreInfo) -> None:
    schema, table = _pg_names(source_uri, info)
    _, shadow = _pg_names(target_uri, info)
    vector_type = str(info.details.get("vector_type") or "vector")
    src, dst = sql.Identifier(schema, table), sql.Identifier(schema, shadow)
    with _pg_connect(source_uri) as conn:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(dst, src))
                if dims != info.dims and info.vector_field:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}({})").format(
                            dst,
                            sql.Identifier(info.vector_field),
                            sql.SQL(vector_type),
                            sql.Literal(dims),
                        )
                    )
                for index, *_ in _vector_indexes(conn, schema, shadow):
                    conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(index)))
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot create the shadow table {shadow!r}: {redact(str(exc))}",
                uri=redact(target_uri),
            ) from exc


_VECTOR_INDEXES = (
    "SELECT ic.oid::regclass::text, am.amname, a.attname, opc.opcname, ic.reloptions"
    " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
    " JOIN pg_am am ON am.oid = ic.relam"
    " JOIN pg_opclass opc ON opc.oid = i.indclass[0]"
    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
    " WHERE i.indrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass"
    " AND am.amname IN ('hnsw', 'ivfflat') AND i.indnatts = 1 AND i.indpred IS NULL"
)


def _vector_indexes(
    conn: psycopg.Connection[tuple[Any, ...]], schema: str, table: str
) -> list[tuple[Any, ...]]:
    """(index name, method, column, opclass, options) of each HNSW or IVFFlat index."""
    return conn.execute(_VECTOR_INDEXES, (schema, table)).fetchall()


def pg_build_indexes(uri: str, schema: str, table: str, shadow: str) -> int:
    """Build on the filled shadow table each index of the source it lacks: the HNSW and
    IVFFlat ones left out while loading (one build over every new vector beats updating
    the index row by row, and IVFFlat lists need the data) and any made on the source
    since. Returns the number built; none when the shadow has them all (a cutover after
    a rollback). Done before the switch, so its transaction holds its locks briefly."""
    with _pg_connect(uri) as conn:
        pgtable.qualify_definitions(conn)
        wanted = pgtable.indexes(conn, pgtable.oid(conn, schema, table))
        present = pgtable.indexes(conn, pgtable.oid(conn, schema, shadow))
        pairs, _ = pgtable.pair(wanted, present)
        missing = [index for index, match in pairs if match is None and not index.contype]
        for index in missing:
            try:
                pgtable.create_index(conn, sql.Identifier(schema, shadow), index, None)
            except psycopg.Error as exc:
                raise StoreError(
                    f"cannot build index {index.name!r} on {shadow!r}: {redact(str(exc))}",
                    uri=redact(uri),
                ) from exc
        return len(missing)


# --- switching ---------------------------------------------------------------------------


def qdrant_switch(store_uri: str, alias: str, to: str) -> str | None:
    """Point ``alias`` at collection ``to`` in one atomic call; returns the collection it
    pointed at before (None when it did not exist)."""
    from qdrant_client import models

    with _qdrant_call(store_uri) as client:
        before = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
        operations: list[Any] = []
        if alias in before:
            operations.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            )
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=to, alias_name=alias)
            )
        )
        client.update_collection_aliases(change_aliases_operations=operations)
    return before.get(alias)


def qdrant_alias_target(store_uri: str, name: str) -> str | None:
    """The collection ``name`` points at when it is an alias, else None."""
    return qdrant_aliases(store_uri).get(name)


def qdrant_aliases(store_uri: str) -> dict[str, str]:
    """Every alias of the store's Qdrant and the collection it points at."""
    with _qdrant_call(store_uri) as client:
        return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}


def qdrant_drop(store_uri: str, collection: str) -> None:
    with _qdrant_call(store_uri) as client:
        client.delete_collection(collection)


def pg_oid(uri: str, schema: str, table: str) -> int | None:
    """The oid of the table under this name now (None: no such table). Oids survive
    renames, so they tell which table a name serves."""
    with _pg_connect(uri) as conn:
        row = conn.execute(
            "SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s))::oid", (schema, table)
        ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def pg_swap(
    uri: str, schema: str, live: str, incoming: str, kept: str, part: parts.PgPart | None = None
) -> None:
    """Readers switch from ``live`` to ``incoming`` in one transaction: ``live`` becomes
    ``kept``, ``incoming`` takes its name and everything else it had (see
    guard.reindex.pgtable). ``lock_timeout`` makes a busy table fail fast instead of
    queueing every reader behind the switch. With ``part`` (one collection re-indexed),
    the rows outside it are first copied from ``live`` into ``incoming`` under a lock
    that holds writers off until the switch commits."""
    with _pg_connect(uri) as conn:
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT))
                )
                if part is not None:
                    parts.pg_copy_locked(conn, part, live, incoming)
                pgtable.swap(conn, schema, live, incoming, kept)
                _advance_identities(conn, schema, live)
        except psycopg.errors.LockNotAvailable as exc:
            raise ReindexError(
                f"the table is busy (lock not granted within {LOCK_TIMEOUT}); try again"
            ) from exc
        except psycopg.errors.ForeignKeyViolation as exc:
            raise ReindexError(
                f"not switched, nothing changed: {exc.diag.message_primary}; the rows that"
                f" would become live reference rows deleted since (or rows elsewhere"
                f" reference rows they lack): restore or delete those rows and try again"
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"switch failed: {redact(str(exc))}", uri=redact(uri)) from exc


def _advance_identities(conn: psycopg.Connection[tuple[Any, ...]], schema: str, table: str) -> None:
    """Identity columns copied by LIKE got their own sequences starting at 1: move each
    past the highest id so inserts after the switch cannot collide."""
    columns = conn.execute(
        "SELECT a.attname, pg_get_serial_sequence(quote_ident(%s) || '.' || quote_ident(%s),"
        " a.attname) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (schema, table, schema, table),
    ).fetchall()
    for column, sequence in columns:
        if sequence is None:
            continue
        conn.execute(
            sql.SQL(
                "SELECT setval(%s::regclass, greatest((SELECT max({}) FROM {}), "
                "(SELECT last_value FROM {}), 1))"
            ).format(
                sql.Identifier(column),
                sql.Identifier(schema, table),
                sql.SQL(sequence),  # pg_get_serial_sequence quotes it already
            ),
            (sequence,),
        )


def pg_drop(uri: str, schema: str, table: str, keep_sequences_for: str | None) -> None:
    """Drop a table; sequences it owns that the live table still uses (serial columns
    copied by LIKE share them) are handed to the live table first."""
    with _pg_connect(uri) as conn:
        try:
            with conn.transaction():
                if keep_sequences_for:
                    owned = conn.execute(
                        "SELECT s.oid::regclass::text, a.attname FROM pg_depend d"
                        " JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
                        " JOIN pg_attribute a"
                        " ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
                        " WHERE d.refobjid = %s::regclass AND d.deptype = 'a'",
                        (f"{_quote(schema)}.{_quote(table)}",),
                    ).fetchall()
                    for sequence, column in owned:
                        conn.execute(
                            sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                                sql.SQL(sequence),  # regclass::text is quoted already
                                sql.Identifier(schema, keep_sequences_for, column),
                            )
                        )
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table))
                )
        except psycopg.Error as exc:
            raise StoreError(f"cannot drop {table!r}: {redact(str(exc))}", uri=redact(uri)) from exc


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
