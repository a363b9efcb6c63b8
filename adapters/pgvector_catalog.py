"""What PostgreSQL's catalog says about the table a pgvector URI names.

Which table (schema and search path), which id, vector and text columns, which framework
layout (``guard.adapters.layouts``), how many dimensions, which distance (from the HNSW or
IVFFlat index's opclass), and which rows ``collection=``/``filter=`` select. It exists
apart from the store so that the store's reads and writes, the sampling
(``guard.adapters.pgvector_sampling``) and the re-index all work from one ``Table``, read
once per store. Every identifier goes through ``psycopg.sql.Identifier`` and every value
is a parameter; the only SQL text taken from the database is ``format_type()`` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from guard.adapters.layouts import TEXT_TYPES, EmbedTemplate, TableLayout, table_layout
from guard.errors import StoreError
from guard.records import Distance

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
C_COLLATION, POSIX_COLLATION = 950, 951  # pg_collation oids, fixed in every PostgreSQL

ALL_ROWS = sql.SQL("TRUE")


@dataclass(frozen=True)
class TableRequest:
    """What the URI asks for: the table, and the options that pick its columns and rows
    (None: detected from the catalog)."""

    uri: str  # redacted, for messages
    table: str
    schema: str | None = None
    text_column: str | None = None
    template: EmbedTemplate | None = None
    collection: str | None = None  # one LangChain PGVector collection of the shared table
    filter: tuple[str, str] | None = None  # (FIELD, VALUE) of filter=FIELD:VALUE
    id_column: str | None = None
    vector_column: str | None = None

    def fail(self, message: str) -> StoreError:
        return StoreError(message, uri=self.uri)


@dataclass(frozen=True)
class Table:
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


def id_kind(type_name: str) -> str:
    """An id column's type as ``StoreInfo.details["id_type"]`` names it: int, uuid or str."""
    if type_name in ("smallint", "integer", "bigint"):
        return "int"
    return "uuid" if type_name == "uuid" else "str"


def read_table(conn: psycopg.Connection[Any], request: TableRequest) -> Table:
    """The ``Table`` for ``request``; a ``StoreError`` for a table, column or collection
    that is not there or not what the options say."""
    found = conn.execute(
        "SELECT c.oid, n.nspname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(CASE WHEN %(schema)s::text IS NULL"
        " THEN quote_ident(%(table)s::text)"
        " ELSE quote_ident(%(schema)s::text) || '.' || quote_ident(%(table)s::text) END)",
        {"schema": request.schema, "table": request.table},
    ).fetchone()
    if found is None:
        where = f"{request.schema}.{request.table}" if request.schema else request.table
        raise request.fail(f"table {where!r} not found")
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
    vector_column = _pick_vector_column(request, typenames)
    layout = table_layout(request.table, list(columns), request.text_column, request.template)
    if layout is None:
        raise request.fail(
            f"no text column found (columns: {', '.join(columns)}); name it with text_column="
        )
    for name in layout.source_columns:
        if name not in columns:
            raise request.fail(f"column {name!r} not found in {request.table!r}")
    if typenames[layout.text_column] not in TEXT_TYPES:
        raise request.fail(
            f"column {layout.text_column!r} is {columns[layout.text_column]}, not text;"
            " name the column that holds the text with text_column="
        )
    id_column = _pick_id_column(conn, request, oid, layout, columns)
    selection, where_params = _selection(conn, request, schema, columns, layout)
    typmod = next(int(r[3]) for r in rows if r[0] == vector_column)
    dims = typmod if typmod > 0 else _dims_from_data(conn, request, schema, vector_column)
    distance, source = _index_distance(conn, oid, vector_column)
    return Table(
        oid=oid,
        schema=schema,
        name=request.table,
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
    conn: psycopg.Connection[Any],
    request: TableRequest,
    schema: str,
    columns: dict[str, str],
    layout: TableLayout,
) -> tuple[sql.Composable, tuple[Any, ...]]:
    """The condition that selects the rows of ``collection=`` and ``filter=``."""
    conditions: list[sql.Composable] = []
    values: list[Any] = []
    if request.collection is not None:
        conditions.append(sql.SQL("{} = %s").format(sql.Identifier("collection_id")))
        values.append(_collection_uuid(conn, request, schema, columns))
    if request.filter is not None:
        name, wanted = request.filter
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
                raise request.fail(
                    f"filter field {name!r} is not a column of {request.table!r}"
                    " (a key inside a json column is written COLUMN.KEY)"
                )
            conditions.append(sql.SQL("{} #>> %s = %s").format(sql.Identifier(column)))
            values += [path.split("."), wanted]
    if not conditions:
        return ALL_ROWS, ()
    return sql.SQL(" AND ").join(conditions), tuple(values)


def _collection_uuid(
    conn: psycopg.Connection[Any], request: TableRequest, schema: str, columns: dict[str, str]
) -> Any:
    """The uuid of LangChain's collection named ``collection=`` (langchain_pg_collection)."""
    if "collection_id" not in columns:
        raise request.fail(
            f"collection= selects a LangChain PGVector collection, but {request.table!r} has"
            " no collection_id column (use filter=FIELD:VALUE)"
        )
    names = sql.Identifier(schema, "langchain_pg_collection")
    found = conn.execute(
        sql.SQL("SELECT uuid FROM {} WHERE name = %s").format(names), [request.collection]
    ).fetchone()
    if found is None:
        known = conn.execute(sql.SQL("SELECT name FROM {} ORDER BY name").format(names)).fetchall()
        listed = ", ".join(str(r[0]) for r in known) or "none"
        raise request.fail(f"collection {request.collection!r} not found (has: {listed})")
    return found[0]


def _pick_vector_column(request: TableRequest, typenames: dict[str, str]) -> str:
    vectors = [name for name, typ in typenames.items() if typ in VECTOR_TYPES]
    wanted = request.vector_column
    if wanted:
        if wanted not in typenames:
            raise request.fail(f"column {wanted!r} not found in {request.table!r}")
        if typenames[wanted] not in VECTOR_TYPES:
            kind = typenames[wanted]
            raise request.fail(f"column {wanted!r} is not a vector (it is {kind})")
        return wanted
    if len(vectors) == 1:
        return vectors[0]
    if not vectors:
        raise request.fail(f"no vector or halfvec column in {request.table!r}")
    raise request.fail(
        f"several vector columns ({', '.join(vectors)}); pick one with vector_column="
    )


def _pick_id_column(
    conn: psycopg.Connection[Any],
    request: TableRequest,
    oid: int,
    layout: TableLayout,
    columns: dict[str, str],
) -> str:
    """The id_column option, the layout's id, the one-column primary key, or ``id``."""
    if request.id_column:
        if request.id_column not in columns:
            raise request.fail(f"column {request.id_column!r} not found in {request.table!r}")
        return request.id_column
    if layout.id_column in columns:
        return layout.id_column
    keys = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = %s AND i.indisprimary",
        [oid],
    ).fetchall()
    if len(keys) == 1:
        return str(keys[0][0])
    if "id" in columns:
        return "id"
    raise request.fail("no single-column primary key or id column; name it with id_column=")


def _dims_from_data(
    conn: psycopg.Connection[Any], request: TableRequest, schema: str, column: str
) -> int:
    """For ``vector`` columns declared without dimensions (LangChain does that)."""
    row = conn.execute(
        sql.SQL("SELECT vector_dims({col}) FROM {t} WHERE {col} IS NOT NULL LIMIT 1").format(
            col=sql.Identifier(column), t=sql.Identifier(schema, request.table)
        )
    ).fetchone()
    return int(row[0]) if row else 0


def _index_distance(conn: psycopg.Connection[Any], oid: int, column: str) -> tuple[Distance, str]:
    """The distance of the HNSW or IVFFlat index on the column (cosine without one)."""
    found = conn.execute(
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
