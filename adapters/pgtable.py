"""What a PostgreSQL table carries besides its rows, and how a cutover hands it from the
live table to the table that replaces it.

Renaming two tables moves none of it: indexes keep their names (unique per schema, so
the replacement's are generated ones), foreign keys stay bound by oid, triggers, policies,
grants and comments stay on the renamed table. ``swap`` renames, then gives the incoming
table the live table's profile, read from the catalog: index and constraint names (the
kept table's indexes take other names), foreign keys from it and to it, triggers,
row-level security and policies, owner and grants, comments, and the sequences its
columns own. The kept table loses its foreign keys, so no cascade from the live side
reaches it. Rollback is the same swap the other way. Definitions are read under
``search_path = pg_catalog``, so each one names its objects with their schema and means
the same when run again; the caller's transaction makes the whole swap atomic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from guard.errors import ReindexError

Conn = psycopg.Connection[tuple[Any, ...]]

_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
_ENABLE = {"D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


def qualify_definitions(conn: Conn) -> None:
    """Make the catalog print every name with its schema, so a definition read here means
    the same when run again (for this connection, which the caller closes after)."""
    conn.execute("SELECT set_config('search_path', 'pg_catalog', false)")


def oid(conn: Conn, schema: str, table: str) -> int:
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    if row is None:
        raise ReindexError(f"table {schema}.{table} not found")
    return int(row[0])


# --- indexes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Index:
    name: str
    shape: str  # the definition after USING: method, columns, opclasses, options, predicate
    unique: bool
    contype: str  # p, u or x when it backs a constraint, else ""
    constraint: str  # that constraint's definition

    @property
    def key(self) -> tuple[str, bool, str]:
        """What makes two indexes on two tables the same index, names aside."""
        return self.shape, self.unique, self.contype


_INDEXES = (
    "SELECT c.relname, pg_get_indexdef(c.oid), i.indisunique, coalesce(k.contype::text, ''),"
    " coalesce(pg_get_constraintdef(k.oid), ''), quote_ident(c.relname),"
    " quote_ident(n.nspname) || '.' || quote_ident(t.relname)"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
    " LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid"
    " AND k.contype IN ('p', 'u', 'x')"
    " WHERE i.indrelid = %s ORDER BY c.relname"
)


def indexes(conn: Conn, table: int) -> list[Index]:
    found = []
    for name, definition, unique, contype, constraint, quoted, qualified in conn.execute(
        _INDEXES, (table,)
    ):
        head = f"CREATE {'UNIQUE ' if unique else ''}INDEX {quoted} ON {qualified} USING "
        if not definition.startswith(head):
            raise ReindexError(f"cannot read the definition of index {name!r}: {definition}")
        found.append(Index(name, definition[len(head) :], unique, contype, constraint))
    return found


def create_index(conn: Conn, table: sql.Identifier, index: Index, name: str | None) -> None:
    """Build ``index`` on ``table``, named ``name`` (or a generated name)."""
    conn.execute(
        sql.SQL("CREATE {}INDEX {}ON {} USING {}").format(
            sql.SQL("UNIQUE " if index.unique else ""),
            sql.SQL("{} ").format(sql.Identifier(name)) if name else sql.SQL(""),
            table,
            sql.SQL(index.shape),  # from the catalog, not from a user
        )
    )


def pair(
    wanted: Iterable[Index], present: Iterable[Index]
) -> tuple[list[tuple[Index, Index | None]], list[Index]]:
    """Each wanted index with a present one of the same key (or None), and the present
    indexes left over."""
    left = list(present)
    pairs: list[tuple[Index, Index | None]] = []
    for index in wanted:
        match = next((other for other in left if other.key == index.key), None)
        if match is not None:
            left.remove(match)
        pairs.append((index, match))
    return pairs, left


def kept_name(name: str, table: str) -> str:
    """A name for an index of the kept table: index names are unique per schema, and the
    live table needs the original ones."""
    digest = hashlib.sha256(f"{table}\0{name}".encode()).hexdigest()[:8]
    return name.encode()[:50].decode(errors="ignore") + "_" + digest


# --- the profile --------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Everything of a table but its rows and columns, as read from the catalog."""

    indexes: list[Index]
    constraints: list[tuple[str, str, str]]  # name, contype (c, n, f), definition
    referenced_by: list[tuple[str, str, str, str, str | None]]  # schema, table, name, def, comment
    triggers: list[tuple[str, str, str]]  # name, definition, enabled
    policies: list[tuple[Any, ...]]
    table: tuple[bool, bool, str]  # row security, forced, owner
    grants: list[
        tuple[str, str, str, bool]
    ]  # column ("" for the table), grantee, privilege, grantable
    sequences: list[
        tuple[str, str, str, str]
    ]  # schema, name, column, deptype (a serial, i identity)
    comments: dict[tuple[str, str], str]


def read(conn: Conn, table: int) -> Profile:
    def rows(query: str) -> list[tuple[Any, ...]]:
        return conn.execute(query, {"t": table}).fetchall()

    owner = rows(
        "SELECT relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner)"
        " FROM pg_class WHERE oid = %(t)s"
    )[0]
    return Profile(
        indexes=indexes(conn, table),
        constraints=[
            (str(name), str(kind), str(definition))
            for name, kind, definition in rows(
                "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %(t)s AND contype IN ('c', 'n', 'f') AND conislocal"
                " ORDER BY conname"
            )
        ],
        referenced_by=[
            (str(child_schema), str(child), str(name), str(definition), comment)
            for child_schema, child, name, definition, comment in rows(
                "SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid),"
                " obj_description(k.oid, 'pg_constraint') FROM pg_constraint k"
                " JOIN pg_class c ON c.oid = k.conrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE k.confrelid = %(t)s AND k.conrelid <> %(t)s AND k.contype = 'f'"
                " AND k.conparentid = 0 ORDER BY 1, 2, 3"
            )
        ],
        triggers=[
            (str(name), str(definition), str(enabled))
            for name, definition, enabled in rows(
                "SELECT tgname, pg_get_triggerdef(oid), tgenabled::text FROM pg_trigger"
                " WHERE tgrelid = %(t)s AND NOT tgisinternal ORDER BY tgname"
            )
        ],
        policies=rows(
            "SELECT polname, polpermissive, polcmd::text,"
            " ARRAY(SELECT coalesce(pg_get_userbyid(nullif(r, 0)), '')"
            "  FROM unnest(polroles) WITH ORDINALITY u(r, i) ORDER BY i),"
            " pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)"
            " FROM pg_policy WHERE polrelid = %(t)s ORDER BY polname"
        ),
        table=(bool(owner[0]), bool(owner[1]), str(owner[2])),
        grants=sorted(
            (str(column), str(grantee), str(privilege), bool(grantable))
            for column, grantee, privilege, grantable in rows(
                "SELECT '', coalesce(pg_get_userbyid(nullif(a.grantee, 0)), ''),"
                " a.privilege_type, a.is_grantable FROM pg_class c,"
                " aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a"
                " WHERE c.oid = %(t)s"
                " UNION ALL SELECT t.attname, coalesce(pg_get_userbyid(nullif(a.grantee, 0)), ''),"
                " a.privilege_type, a.is_grantable FROM pg_attribute t, aclexplode(t.attacl) a"
                " WHERE t.attrelid = %(t)s AND t.attnum > 0 AND NOT t.attisdropped"
            )
        ),
        sequences=rows(
            "SELECT n.nspname, s.relname, a.attname, d.deptype::text FROM pg_depend d"
            " JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
            " JOIN pg_namespace n ON n.oid = s.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
            " WHERE d.classid = 'pg_class'::regclass AND d.refobjid = %(t)s"
            " AND d.deptype IN ('a', 'i') ORDER BY a.attname"
        ),
        comments=comments(conn, table),
    )


def comments(conn: Conn, table: int) -> dict[tuple[str, str], str]:
    """The comments on a table and its columns, indexes, constraints, triggers and
    policies, by (kind, name)."""
    return {
        (str(kind), str(name)): str(text)
        for kind, name, text in conn.execute(
            "SELECT * FROM ("
            " SELECT 'TABLE', '', obj_description(%(t)s, 'pg_class')"
            " UNION ALL SELECT 'COLUMN', attname, col_description(attrelid, attnum)"
            "  FROM pg_attribute WHERE attrelid = %(t)s AND attnum > 0 AND NOT attisdropped"
            " UNION ALL SELECT 'INDEX', c.relname, obj_description(c.oid, 'pg_class')"
            "  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            "  WHERE i.indrelid = %(t)s"
            " UNION ALL SELECT 'CONSTRAINT', conname, obj_description(oid, 'pg_constraint')"
            "  FROM pg_constraint WHERE conrelid = %(t)s"
            " UNION ALL SELECT 'TRIGGER', tgname, obj_description(oid, 'pg_trigger')"
            "  FROM pg_trigger WHERE tgrelid = %(t)s AND NOT tgisinternal"
            " UNION ALL SELECT 'POLICY', polname, obj_description(oid, 'pg_policy')"
            "  FROM pg_policy WHERE polrelid = %(t)s"
            ") x(kind, name, text) WHERE text IS NOT NULL",
            {"t": table},
        )
    }


# --- the swap -----------------------------------------------------------------------------


def _run(conn: Conn, template: str, *parts: sql.Composable) -> None:
    conn.execute(sql.SQL(template).format(*parts))


def swap(conn: Conn, schema: str, live: str, incoming: str, kept: str) -> None:
    """Rename ``live`` to ``kept`` and ``incoming`` to ``live``, and move the live table's
    profile onto the incoming one; run inside one transaction."""
    qualify_definitions(conn)
    live_oid, incoming_oid = oid(conn, schema, live), oid(conn, schema, incoming)
    was, has = read(conn, live_oid), read(conn, incoming_oid)
    new, old = sql.Identifier(schema, live), sql.Identifier(schema, kept)

    for child_schema, child, name, _, _ in was.referenced_by:  # bound to the live table's oid
        child_table = sql.Identifier(child_schema, child)
        _run(conn, "ALTER TABLE {} DROP CONSTRAINT {}", child_table, sql.Identifier(name))
    _run(conn, "ALTER TABLE {} RENAME TO {}", new, sql.Identifier(kept))
    _run(
        conn, "ALTER TABLE {} RENAME TO {}", sql.Identifier(schema, incoming), sql.Identifier(live)
    )

    _move_indexes(conn, schema, new, kept, was, has)
    _move_constraints(conn, new, old, was, has)
    for child_schema, child, name, definition, comment in was.referenced_by:
        child_table = sql.Identifier(child_schema, child)
        _run(
            conn,
            "ALTER TABLE {} ADD CONSTRAINT {} {}",
            child_table,
            sql.Identifier(name),
            sql.SQL(definition),  # names the table by name: now the incoming one
        )
        if comment is not None:
            _run(
                conn,
                "COMMENT ON CONSTRAINT {} ON {} IS {}",
                sql.Identifier(name),
                child_table,
                sql.Literal(comment),
            )
    _move_triggers_and_policies(conn, new, was, has)
    _move_grants(conn, new, was, has)
    _move_sequences(conn, schema, live, kept, was, has)
    _move_comments(conn, schema, live, was.comments, comments(conn, incoming_oid))


def _move_indexes(
    conn: Conn, schema: str, new: sql.Identifier, kept: str, was: Profile, has: Profile
) -> None:
    """The kept table's indexes take kept names; the incoming table's take the live
    table's names (renaming a constraint's index renames the constraint too); what it
    lacks is built, what the live table did not have is dropped."""
    for index in was.indexes:
        _run(
            conn,
            "ALTER INDEX {} RENAME TO {}",
            sql.Identifier(schema, index.name),
            sql.Identifier(kept_name(index.name, kept)),
        )
    pairs, extra = pair(was.indexes, has.indexes)
    for index in extra:
        if index.contype:
            _run(conn, "ALTER TABLE {} DROP CONSTRAINT {}", new, sql.Identifier(index.name))
        else:
            _run(conn, "DROP INDEX {}", sql.Identifier(schema, index.name))
    for index, match in pairs:
        if match is None and index.contype:
            _run(
                conn,
                "ALTER TABLE {} ADD CONSTRAINT {} {}",
                new,
                sql.Identifier(index.name),
                sql.SQL(index.constraint),
            )
        elif match is None:
            create_index(conn, new, index, index.name)
        elif match.name != index.name:
            _run(
                conn,
                "ALTER INDEX {} RENAME TO {}",
                sql.Identifier(schema, match.name),
                sql.Identifier(index.name),
            )


def _move_constraints(
    conn: Conn, new: sql.Identifier, old: sql.Identifier, was: Profile, has: Profile
) -> None:
    """CHECK and NOT NULL constraints (copied by LIKE, maybe under other names) take the
    live table's names; foreign keys move: added to the incoming table, dropped from the
    kept one, so no cascade from the live side reaches the kept rows."""
    wanted = [c for c in was.constraints if c[1] != "f"]
    present = [c for c in has.constraints if c[1] != "f"]
    for name, kind, definition in wanted:
        match = next((c for c in present if c[1:] == (kind, definition)), None)
        if match is None:
            _run(
                conn,
                "ALTER TABLE {} ADD CONSTRAINT {} {}",
                new,
                sql.Identifier(name),
                sql.SQL(definition),
            )
            continue
        present.remove(match)
        if match[0] != name:
            _run(
                conn,
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                new,
                sql.Identifier(match[0]),
                sql.Identifier(name),
            )
    for name, _, _ in present:
        _run(conn, "ALTER TABLE {} DROP CONSTRAINT {}", new, sql.Identifier(name))
    for name, kind, _ in has.constraints:
        if kind == "f":
            _run(conn, "ALTER TABLE {} DROP CONSTRAINT {}", new, sql.Identifier(name))
    for name, kind, definition in was.constraints:
        if kind == "f":
            _run(
                conn,
                "ALTER TABLE {} ADD CONSTRAINT {} {}",
                new,
                sql.Identifier(name),
                sql.SQL(definition),  # a reference to the table itself names the new one
            )
            _run(conn, "ALTER TABLE {} DROP CONSTRAINT {}", old, sql.Identifier(name))


def _move_triggers_and_policies(
    conn: Conn, new: sql.Identifier, was: Profile, has: Profile
) -> None:
    """The incoming table's own triggers and policies go (after a rollback they are the
    kept table's old ones); the live table's are created from their definitions."""
    for name, _, _ in has.triggers:
        _run(conn, "DROP TRIGGER {} ON {}", sql.Identifier(name), new)
    for name, definition, enabled in was.triggers:
        conn.execute(sql.SQL(definition))  # names the table by name: now the incoming one
        if enabled in _ENABLE:
            _run(conn, "ALTER TABLE {} {} {}", new, sql.SQL(_ENABLE[enabled]), sql.Identifier(name))
    for name, *_ in has.policies:
        _run(conn, "DROP POLICY {} ON {}", sql.Identifier(name), new)
    for name, permissive, command, roles, using, check in was.policies:
        _run(
            conn,
            "CREATE POLICY {} ON {} AS {} FOR {} TO {}{}{}",
            sql.Identifier(name),
            new,
            sql.SQL("PERMISSIVE" if permissive else "RESTRICTIVE"),
            sql.SQL(_COMMANDS[command]),
            sql.SQL(", ").join(_grantee(role) for role in roles),
            sql.SQL(" USING ({})").format(sql.SQL(using)) if using else sql.SQL(""),
            sql.SQL(" WITH CHECK ({})").format(sql.SQL(check)) if check else sql.SQL(""),
        )
    security, forced, owner = was.table
    _run(
        conn,
        "ALTER TABLE {} {} ROW LEVEL SECURITY",
        new,
        sql.SQL("ENABLE" if security else "DISABLE"),
    )
    _run(
        conn,
        "ALTER TABLE {} {} ROW LEVEL SECURITY",
        new,
        sql.SQL("FORCE" if forced else "NO FORCE"),
    )
    if owner != has.table[2]:
        _run(conn, "ALTER TABLE {} OWNER TO {}", new, sql.Identifier(owner))


def _grantee(name: str) -> sql.Composable:
    return sql.Identifier(name) if name else sql.SQL("PUBLIC")


def _move_grants(conn: Conn, new: sql.Identifier, was: Profile, has: Profile) -> None:
    """Revoke what the incoming table grants and grant what the live table did, table
    and column privileges (revoking a table privilege revokes it on every column too).
    The grantor becomes the table's owner."""
    if was.grants == has.grants:
        return
    for grantee in sorted({g[1] for g in has.grants}):
        _run(conn, "REVOKE ALL ON {} FROM {}", new, _grantee(grantee))
    for column, grantee in sorted({g[:2] for g in has.grants if g[0]}):
        _run(conn, "REVOKE ALL ({}) ON {} FROM {}", sql.Identifier(column), new, _grantee(grantee))
    for column, grantee, privilege, grantable in was.grants:
        _run(
            conn,
            "GRANT {}{} ON {} TO {}{}",
            sql.SQL(privilege),  # from the catalog
            sql.SQL(" ({})").format(sql.Identifier(column)) if column else sql.SQL(""),
            new,
            _grantee(grantee),
            sql.SQL(" WITH GRANT OPTION" if grantable else ""),
        )


def _move_sequences(
    conn: Conn, schema: str, live: str, kept: str, was: Profile, has: Profile
) -> None:
    """A serial column's sequence is shared (LIKE copies its default): the incoming
    table's column takes over its ownership, so dropping the kept table keeps it. An
    identity column has a sequence per table: the names swap."""
    for seq_schema, sequence, column, kind in was.sequences:
        name = sql.Identifier(seq_schema, sequence)
        if kind == "a":
            _run(conn, "ALTER SEQUENCE {} OWNED BY {}", name, sql.Identifier(schema, live, column))
            continue
        _run(
            conn, "ALTER SEQUENCE {} RENAME TO {}", name, sql.Identifier(kept_name(sequence, kept))
        )
        own = next((s for s in has.sequences if s[2:] == (column, "i")), None)
        if own is not None:
            _run(
                conn,
                "ALTER SEQUENCE {} RENAME TO {}",
                sql.Identifier(own[0], own[1]),
                sql.Identifier(sequence),
            )


def _move_comments(
    conn: Conn,
    schema: str,
    live: str,
    wanted: dict[tuple[str, str], str],
    present: dict[tuple[str, str], str],
) -> None:
    """Comments set, changed or removed so the incoming table's equal the live one's (its
    objects carry the live names by now)."""
    table = sql.Identifier(schema, live)
    for kind, name in sorted(wanted.keys() | present.keys()):
        text = wanted.get((kind, name))
        if text == present.get((kind, name)):
            continue
        value = sql.Literal(text)  # COMMENT takes no parameters; Literal quotes it
        if kind == "TABLE":
            _run(conn, "COMMENT ON TABLE {} IS {}", table, value)
        elif kind == "COLUMN":
            _run(conn, "COMMENT ON COLUMN {} IS {}", sql.Identifier(schema, live, name), value)
        elif kind == "INDEX":
            _run(conn, "COMMENT ON INDEX {} IS {}", sql.Identifier(schema, name), value)
        else:
            _run(
                conn,
                "COMMENT ON {} {} ON {} IS {}",
                sql.SQL(kind),
                sql.Identifier(name),
                table,
                value,
            )
