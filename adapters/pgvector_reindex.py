"""The re-index on pgvector (``guard.stores.ReindexStore``): a shadow table, a rename.

The target is a shadow table made with ``CREATE TABLE ... (LIKE source INCLUDING ALL)``
(every column, default, constraint and index) and nothing else: frameworks that read
every column (Haystack) would show any column of the guard's to the application after
cutover. Its HNSW or IVFFlat indexes are built on the new vectors just before the switch.
The switch renames both tables in one transaction under ``lock_timeout`` and moves
everything else the live table had onto the one that takes its name (guard.adapters.pgtable);
rollback is the same switch the other way. Views that select from the source stay bound
to the kept table (PostgreSQL binds them by oid): recreate them after cutover.

One collection or tenant of a shared table (``collection=``, ``filter=``): the other rows
are copied into the shadow table unchanged at plan time, at catch-up, and once more at
the switch inside its transaction while the live table is locked against writes, so
nothing written to another collection during the job is lost. Rows are compared by
their text form (``ROW(columns)::text``: vectors, json and bytea print exactly).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from guard.adapters import pgtable
from guard.adapters.pgtable import Conn
from guard.adapters.pgvector import PgVectorStore
from guard.closing import Closing
from guard.errors import ReindexError
from guard.records import Changes, RecordBatch, RecordId, StoreInfo
from guard.stores import LastWrites, OthersCheck, Switch
from guard.uri import ParsedURI, parse

LOCK_TIMEOUT = "5s"
EXAMPLES = 5  # differing rows named in a check


def _table(uri: str) -> str:
    """The table a URI of this store names (the store's own parsing)."""
    return PgVectorStore(parse(uri)).table


@dataclass(frozen=True)
class Part:
    """What selects the part: the condition of ``PgVectorStore.selection`` (unqualified
    column names, so it reads the same on the live table and on its shadow)."""

    schema: str
    id_column: str
    where: sql.Composable
    params: tuple[Any, ...]


class PgVectorReindex(Closing):
    """One pgvector table's re-index: shadow table, index build, swap, drop."""

    def __init__(self, parsed: ParsedURI) -> None:
        self._parsed = parsed
        self._store = PgVectorStore(parsed)
        self.uri = self._store.uri

    def name(self) -> str:
        return self._store.table

    def renamed(self, name: str) -> str:
        return self._parsed.with_param("table", name)

    def selects_part(self) -> bool:
        return any(name in self._parsed.params for name in ("collection", "filter"))

    def close(self) -> None:
        self._store.close()

    @contextmanager
    def _session(self, failing: str) -> Iterator[Conn]:
        """A connection of its own; a driver error becomes ``failing: <one line>``."""
        with self._store.session() as conn, self._store.translate_errors(failing):
            yield conn

    def _schema(self) -> str:
        return str(self._store.describe().details.get("schema") or "public")

    # --- the target ----------------------------------------------------------------------

    def create_target(self, target_uri: str, *, dims: int, info: StoreInfo) -> None:
        schema = str(info.details.get("schema") or self._parsed.params.get("schema") or "public")
        shadow = _table(target_uri)
        vector_type = str(info.details.get("vector_type") or "vector")
        src, dst = sql.Identifier(schema, self.name()), sql.Identifier(schema, shadow)
        failing = f"cannot create the shadow table {shadow!r}"
        with self._session(failing) as conn, conn.transaction():
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

    def _build_indexes(self, schema: str, table: str, shadow: str) -> int:
        """Build on the filled shadow table each index of the source it lacks: the HNSW
        and IVFFlat ones left out while loading (one build over every new vector beats
        updating the index row by row, and IVFFlat lists need the data) and any made on
        the source since. Returns the number built; none when the shadow has them all (a
        cutover after a rollback). Done before the switch, so its transaction holds its
        locks briefly."""
        with self._session(f"cannot build the indexes of {shadow!r}") as conn:
            pgtable.qualify_definitions(conn)
            wanted = pgtable.indexes(conn, pgtable.oid(conn, schema, table))
            present = pgtable.indexes(conn, pgtable.oid(conn, schema, shadow))
            pairs, _ = pgtable.pair(wanted, present)
            missing = [index for index, match in pairs if match is None and not index.contype]
            for index in missing:
                failing = f"cannot build index {index.name!r} on {shadow!r}"
                with self._store.translate_errors(failing):
                    pgtable.create_index(conn, sql.Identifier(schema, shadow), index, None)
            return len(missing)

    # --- the rows outside a selection ----------------------------------------------------

    def _part(self, uri: str) -> Part:
        store = PgVectorStore(parse(uri))
        try:
            info = store.describe()
            where, params = store.selection()
        finally:
            store.close()
        return Part(str(info.details["schema"]), str(info.details["id_column"]), where, params)

    def copy_others(self, live_uri: str, into_uri: str) -> int:
        part = self._part(live_uri)
        failing = "cannot copy the rows outside the selection"
        with self._session(failing) as conn, conn.transaction():
            return _copy(conn, part, _table(live_uri), _table(into_uri))

    def check_others(self, live_uri: str, into_uri: str) -> OthersCheck:
        part = self._part(live_uri)
        with self._session("cannot compare the rows outside the selection") as conn:
            return _check(conn, part, _table(live_uri), _table(into_uri))

    def repair(self, live_uri: str, batch: RecordBatch) -> int:
        """One conditional UPDATE per record: the vector is replaced only where the row
        still has the text it was made from."""
        live = PgVectorStore(parse(live_uri))
        try:
            info = live.describe()
        finally:
            live.close()
        if "embed_text" in info.details or not len(batch):  # a built text: no one column
            return 0
        schema, id_column = str(info.details["schema"]), str(info.details["id_column"])
        query = sql.SQL("UPDATE {t} SET {v} = %s::{vt} WHERE {id}::text = %s AND {x} = %s").format(
            t=sql.Identifier(schema, _table(live_uri)),
            v=sql.Identifier(str(info.vector_field)),
            vt=sql.SQL(str(info.details.get("vector_type") or "vector")),
            id=sql.Identifier(id_column),
            x=sql.Identifier(str(info.text_field)),
        )
        rewritten = 0
        with self._session("cannot rewrite vectors") as conn:
            for record_id, text, vector in zip(batch.ids, batch.texts, batch.vectors, strict=True):
                cursor = conn.execute(query, (str(vector.tolist()), str(record_id), text))
                rewritten += max(cursor.rowcount, 0)
            conn.commit()
        return rewritten

    def changes(self, live_uri: str, into_uri: str) -> Changes:
        """One join of the two tables on the server: ids and texts, within the
        selection. Fast enough to run while writers wait."""
        live = PgVectorStore(parse(live_uri))
        try:
            info = live.describe()
            where, params = live.selection()
        finally:
            live.close()
        schema, key = str(info.details["schema"]), sql.Identifier(str(info.details["id_column"]))
        live_table, into_table = _table(live_uri), _table(into_uri)
        with self._session("cannot compare the source and target tables") as conn:
            # The text decides (a framework's json columns do not print back as written);
            # a text built from several columns compares all of them.
            columns = (
                [
                    name
                    for name in _columns(conn, schema, live_table, into_table)
                    if name != info.vector_field
                ]
                if "embed_text" in info.details
                else [str(info.text_field)]
            )
            row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
            with_text = (
                sql.SQL("TRUE")
                if "embed_text" in info.details  # built from several columns
                else sql.SQL("nullif(btrim({}::text), '') IS NOT NULL").format(
                    sql.Identifier(info.text_field)
                )
            )
            found = conn.execute(
                sql.SQL(
                    "SELECT coalesce(l.k, s.k), l.k IS NULL, s.k IS NULL FROM"
                    " (SELECT {key} AS k, {row} AS r, {with_text} AS t FROM {live}"
                    "  WHERE ({where}) IS TRUE) l"
                    " FULL JOIN (SELECT {key} AS k, {row} AS r, {with_text} AS t FROM {into}"
                    "  WHERE ({where}) IS TRUE) s ON s.k = l.k"
                    " WHERE (l.k IS NULL AND s.t) OR (s.k IS NULL AND l.t)"
                    " OR (s.k IS NOT NULL AND l.r <> s.r)"
                ).format(
                    key=key,
                    row=row,
                    with_text=with_text,
                    where=where,
                    live=sql.Identifier(schema, live_table),
                    into=sql.Identifier(schema, into_table),
                ),
                [*params, *params],
            ).fetchall()
        ids = [(_record_id(k), only_into, only_live) for k, only_into, only_live in found]
        added = tuple(k for k, _, only_live in ids if only_live)
        gone = tuple(k for k, only_into, _ in ids if only_into)
        edited = tuple(k for k, only_into, only_live in ids if not only_into and not only_live)
        return Changes(added, edited, gone)

    # --- switching -----------------------------------------------------------------------

    def switch_notes(self) -> list[str]:
        return []

    def _oid(self, schema: str, table: str) -> int | None:
        """The oid of the table under this name now (None: no such table). Oids survive
        renames, so they tell which table a name serves."""
        with self._session("cannot read the catalog") as conn:
            row = conn.execute(
                "SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s))::oid",
                (schema, table),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def plan_switch(self, target_uri: str, *, kept: str, alias: str | None) -> Switch:
        schema, table, shadow = self._schema(), self.name(), _table(target_uri)
        source_oid, target_oid = self._oid(schema, table), self._oid(schema, shadow)
        if source_oid is None or target_oid is None:
            raise ReindexError(f"the table {table if source_oid is None else shadow!r} is missing")
        return {
            "kind": "pg_rename", "schema": schema, "table": table, "old": kept, "shadow": shadow,
            "source_oid": source_oid, "target_oid": target_oid,
        }  # fmt: skip

    def serves_target(self, switch: Switch) -> bool:
        served = self._oid(switch["schema"], switch["table"])
        if served is not None and served == switch.get("target_oid"):
            return True
        if served is not None and served == switch.get("source_oid"):
            return False
        raise ReindexError(
            f"table {switch['table']!r} is neither the source nor the target table this job "
            f"recorded; fix it by hand"
        )

    def switch(self, switch: Switch, *, to_target: bool, settle: LastWrites | None = None) -> None:
        schema, table, old, shadow = (
            switch["schema"], switch["table"], switch["old"], switch["shadow"]
        )  # fmt: skip
        if to_target:
            self._build_indexes(schema, table, shadow)
            self._swap(schema, table, shadow, old, settle)
        else:
            self._swap(schema, table, old, shadow, settle)

    def _swap(
        self, schema: str, live: str, incoming: str, kept: str, settle: LastWrites | None
    ) -> None:
        """Readers switch from ``live`` to ``incoming`` in one transaction: ``live`` becomes
        ``kept``, ``incoming`` takes its name and everything else it had (see
        guard.adapters.pgtable). ``lock_timeout`` makes a busy table fail fast instead of
        queueing every reader behind the switch. With one collection re-indexed, the rows
        outside it are first copied from ``live`` into ``incoming`` under a lock that
        holds writers off until the switch commits.

        First both tables are locked against vacuum and DDL only (SHARE UPDATE
        EXCLUSIVE: readers and writers go on), so that no autovacuum holds the renames
        up later, while writers wait: PostgreSQL cancels an autovacuum in a lock's way
        only after deadlock_timeout (1 s). ``settle.ahead`` then carries what changed
        while nobody waits. Then the lock that holds writers off (SHARE ROW EXCLUSIVE:
        readers go on) is taken, ``settle`` carries the last writes over on connections
        of its own (they read ``live`` and write ``incoming``, which this transaction
        holds no conflicting lock on), and the renames take their brief ACCESS EXCLUSIVE
        locks. Writers that waited go on after the commit, into the table that has the
        name now."""
        part = self._part(self._parsed.raw) if self.selects_part() else None
        with self._session("switch failed") as conn:
            try:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT))
                    )
                    conn.execute(
                        sql.SQL("LOCK TABLE {}, {} IN SHARE UPDATE EXCLUSIVE MODE").format(
                            sql.Identifier(schema, live), sql.Identifier(schema, incoming)
                        )
                    )
                    if settle is not None:
                        settle.ahead()
                    conn.execute(
                        sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                            sql.Identifier(schema, live)
                        )
                    )
                    if settle is not None:
                        settle()
                    if part is not None:
                        _copy_locked(conn, part, live, incoming)
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

    def shown(self, switch: Switch, *, cut_over: bool) -> tuple[str, str]:
        return str(switch["table"]), str(switch["old"] if cut_over else switch["shadow"])

    def locations(self, switch: Switch, target_uri: str) -> tuple[str, str]:
        return self.renamed(switch["old"]), self.renamed(switch["table"])

    # --- cleanup -------------------------------------------------------------------------

    def plan_cleanup(
        self, switch: Switch | None, target_uri: str, *, cut_over: bool
    ) -> tuple[str, str]:
        if cut_over and switch:
            return str(switch["table"]), str(switch["old"])
        return self.name(), _table(target_uri)

    def drop(self, name: str, *, live: str | None) -> None:
        """Drop a table (gone already: a re-run); sequences it owns that the live table
        still uses (serial columns copied by LIKE share them) are handed to it first. The
        table the URI names is the one readers query: never dropped."""
        if name == self.name():
            raise ReindexError(f"{name!r} is the table readers query; not dropping it")
        schema = self._schema()
        if self._oid(schema, name) is None:
            return
        with self._session(f"cannot drop {name!r}") as conn, conn.transaction():
            if live:
                owned = conn.execute(
                    "SELECT s.oid::regclass::text, a.attname FROM pg_depend d"
                    " JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
                    " JOIN pg_attribute a"
                    " ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
                    " WHERE d.refobjid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass"
                    " AND d.deptype = 'a'",
                    (schema, name),
                ).fetchall()
                for sequence, column in owned:
                    conn.execute(
                        sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                            sql.SQL(sequence),  # regclass::text is quoted already
                            sql.Identifier(schema, live, column),
                        )
                    )
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))


_VECTOR_INDEXES = (
    "SELECT ic.oid::regclass::text, am.amname, a.attname, opc.opcname, ic.reloptions"
    " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
    " JOIN pg_am am ON am.oid = ic.relam"
    " JOIN pg_opclass opc ON opc.oid = i.indclass[0]"
    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
    " WHERE i.indrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass"
    " AND am.amname IN ('hnsw', 'ivfflat') AND i.indnatts = 1 AND i.indpred IS NULL"
)


def _vector_indexes(conn: Conn, schema: str, table: str) -> list[tuple[Any, ...]]:
    """(index name, method, column, opclass, options) of each HNSW or IVFFlat index."""
    return conn.execute(_VECTOR_INDEXES, (schema, table)).fetchall()


def _advance_identities(conn: Conn, schema: str, table: str) -> None:
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
    conn: Conn, part: Part, live: str, into: str
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


def _copy(conn: Conn, part: Part, live: str, into: str) -> int:
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


def _check(conn: Conn, part: Part, live: str, into: str) -> OthersCheck:
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


def _copy_locked(conn: Conn, part: Part, live: str, into: str) -> None:
    """At a switch, inside its transaction: lock the live table against writes (readers
    go on), copy the other rows once more, and prove them equal before the renames."""
    conn.execute(
        sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
            sql.Identifier(part.schema, live)
        )
    )
    _copy(conn, part, live, into)
    check = _check(conn, part, live, into)
    if check.count:
        raise ReindexError(
            f"{check.count} rows outside the selection still differ after copying them"
            f" (e.g. {', '.join(map(str, check.differ))}); not switching"
        )


def _record_id(value: Any) -> RecordId:
    """As the store reads ids: integers stay ints, uuid and other keys become strings."""
    return value if isinstance(value, int | str) else str(value)
