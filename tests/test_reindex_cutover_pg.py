"""pgvector cutover keeps the whole table: tables shaped the way LangChain PGVector and
Haystack write them, and one with a bigserial id, a trigger, a grant, a row-level
security policy, comments and a foreign key pointing at it, re-indexed through the real
``guard reindex`` commands. After cutover the live table's catalog equals the source's
before it (names and definitions of constraints, indexes, triggers, policies, grants,
comments, sequences, foreign keys both ways); the copy kept for rollback is out of reach
of cascades; rollback restores the same catalog; a second cutover and cleanup leave a
table that still takes inserts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures_stores import unit_vectors
from psycopg import sql

RECORDS = 12
OLD_DIMS = 16
Guard = Callable[..., tuple[int, str, str]]


@pytest.fixture
def guard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], state_dsn: str
) -> Guard:
    """`guard reindex ARGS` through the console entry point: (exit code, stdout, stderr)."""
    from guard import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["guard", "reindex", *args])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def role(pg_conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A role of the test's own (roles are cluster-wide), dropped afterwards."""
    name = f"reader_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    yield name
    pg_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _uri(pg_dsn: str, schema: str, table: str) -> str:
    return f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}table={table}&schema={schema}"


def _fill(conn: psycopg.Connection[Any], insert: str, rows: list[tuple[Any, ...]]) -> None:
    vectors = unit_vectors(len(rows), OLD_DIMS, seed=3)
    for row, vector in zip(rows, vectors, strict=True):
        conn.execute(insert, (*row, vector))


def catalog(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, Any]:
    """Everything about a table that an application or a framework relies on, read from
    the catalog. The vector's dimensions are left out: they change by design. Every
    column is in: the re-index adds none (Haystack would show it in ``meta``)."""
    oid = conn.execute(
        "SELECT (quote_ident(%s) || '.' || quote_ident(%s))::regclass::oid", (schema, table)
    ).fetchone()[0]

    def rows(query: str) -> list[tuple[Any, ...]]:
        return sorted(conn.execute(query, {"oid": oid, "schema": schema}).fetchall(), key=str)

    columns = [
        (name, re.sub(r"vector\(\d+\)", "vector", kind), *rest)
        for name, kind, *rest in rows(
            "SELECT attname, format_type(atttypid, atttypmod), pg_get_expr(d.adbin, d.adrelid),"
            " attnotnull, attidentity, col_description(a.attrelid, a.attnum),"
            " (SELECT array_agg(x::text ORDER BY x::text) FROM aclexplode(a.attacl) x)"
            " FROM pg_attribute a LEFT JOIN pg_attrdef d"
            " ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped"
        )
    ]
    return {
        "columns": columns,
        "constraints": rows(
            "SELECT conname, pg_get_constraintdef(oid), convalidated,"
            " obj_description(oid, 'pg_constraint') FROM pg_constraint WHERE conrelid = %(oid)s"
        ),
        "referenced_by": rows(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated"
            " FROM pg_constraint WHERE confrelid = %(oid)s AND conrelid <> %(oid)s"
        ),
        "indexes": rows(
            "SELECT c.relname, pg_get_indexdef(c.oid), obj_description(c.oid, 'pg_class')"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = %(oid)s"
        ),
        "triggers": rows(
            "SELECT tgname, pg_get_triggerdef(oid), tgenabled,"
            " obj_description(oid, 'pg_trigger')"
            " FROM pg_trigger WHERE tgrelid = %(oid)s AND NOT tgisinternal"
        ),
        "policies": rows(
            "SELECT polname, polpermissive, polcmd, polroles::regrole[]::text,"
            " pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid),"
            " obj_description(oid, 'pg_policy') FROM pg_policy WHERE polrelid = %(oid)s"
        ),
        "table": rows(
            "SELECT relrowsecurity, relforcerowsecurity, relowner::regrole::text,"
            " obj_description(oid, 'pg_class') FROM pg_class WHERE oid = %(oid)s"
        ),
        "grants": rows(
            "SELECT a.grantor::regrole::text, a.grantee, a.privilege_type, a.is_grantable"
            " FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a"
            " WHERE c.oid = %(oid)s"
        ),
        "sequences": [
            row
            for row in rows(
                "SELECT attname, pg_get_serial_sequence(%(oid)s::regclass::text, attname)"
                " FROM pg_attribute WHERE attrelid = %(oid)s AND attnum > 0 AND NOT attisdropped"
            )
        ],
    }


def _count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    return int(conn.execute(query).fetchone()[0])


def _kept(conn: psycopg.Connection[Any], schema: str, table: str) -> str:
    """The name of the copy kept for rollback (``<table>__old_<jobid8>``)."""
    names = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
        (schema, f"{table}\\_\\_old\\_%"),
    ).fetchall()
    assert len(names) == 1, names
    return str(names[0][0])


def _reindex(guard: Guard, uri: str, candidate: str, *steps: str) -> str:
    """plan, run, verify and ``steps`` through the CLI; the job id."""
    code, out, err = guard(
        "plan", "--store", uri, "--candidate", candidate, "--batch-size", "5", "--format", "json"
    )
    assert code == 0, err
    job_id = str(json.loads(out)["job_id"])
    for step in ("run", "verify", *steps):
        code, _, err = guard(step, job_id)
        assert code == 0, (step, err)
    return job_id


def _reindex_and_cut_over(guard: Guard, uri: str, candidate: str) -> str:
    return _reindex(guard, uri, candidate, "cutover")


def _tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    query = "SELECT tablename FROM pg_tables WHERE schemaname = %s"
    return {name for (name,) in conn.execute(query, (schema,)).fetchall()}


@pytest.fixture(scope="module")
def candidate(gguf_f16: Path) -> str:
    return f"llamacpp:{gguf_f16}"


def _langchain_tables(conn: psycopg.Connection[Any]) -> dict[str, uuid.UUID]:
    """LangChain PGVector's tables as langchain-postgres creates them, two collections of
    RECORDS / 2 rows each; their uuids by name."""
    conn.execute(
        "CREATE TABLE langchain_pg_collection (uuid uuid PRIMARY KEY, name varchar NOT NULL"
        " UNIQUE, cmetadata json)"
    )
    conn.execute(
        "CREATE TABLE langchain_pg_embedding (id varchar PRIMARY KEY, collection_id uuid"
        " REFERENCES langchain_pg_collection(uuid) ON DELETE CASCADE, embedding vector,"
        " document varchar, cmetadata jsonb)"
    )
    conn.execute("CREATE UNIQUE INDEX ix_langchain_pg_embedding_id ON langchain_pg_embedding (id)")
    conn.execute(
        "CREATE INDEX ix_cmetadata_gin ON langchain_pg_embedding"
        " USING gin (cmetadata jsonb_path_ops)"
    )
    collections = {name: uuid.uuid4() for name in ("kept", "dropped")}
    for name, key in collections.items():
        conn.execute("INSERT INTO langchain_pg_collection VALUES (%s, %s, '{}')", (key, name))
    _fill(
        conn,
        "INSERT INTO langchain_pg_embedding (id, collection_id, document, cmetadata, embedding)"
        " VALUES (%s, %s, %s, %s, %s)",
        [
            (
                str(uuid.UUID(int=i + 1)),
                collections["kept" if i % 2 else "dropped"],
                f"document {i} about {('rivers', 'bread', 'engines')[i % 3]}",
                json.dumps({"n": i}),
            )
            for i in range(RECORDS)
        ],
    )
    return collections


def test_langchain_tables_keep_foreign_keys_and_cascade_only_on_the_live_table(
    guard: Guard, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str, candidate: str
) -> None:
    """LangChain PGVector's two tables: after cutover the live embedding table has the
    collection FK (ON DELETE CASCADE) and the original names; deleting a collection
    cascades into it and leaves the kept copy whole. A rollback that discards the writes
    since cutover refuses while the kept rows would break the FK, and restores the same
    catalog once they would not; a plain rollback carries the cascaded deletes back into
    the kept copy (deletes need no engine) and switches at once."""
    conn, schema = pg_conn, pg_schema
    collections = _langchain_tables(conn)
    table = "langchain_pg_embedding"
    before = catalog(conn, schema, table)

    job_id = _reindex_and_cut_over(guard, _uri(pg_dsn, schema, table), candidate)
    assert before == catalog(conn, schema, table)
    kept = _kept(conn, schema, table)
    conn.execute("DELETE FROM langchain_pg_collection WHERE name = 'dropped'")
    assert (_count(conn, schema, table), _count(conn, schema, kept)) == (RECORDS // 2, RECORDS)

    code, _, err = guard("rollback", job_id, "--discard-writes")
    assert (code, len(err.strip().splitlines())) == (2, 1), err
    assert "Traceback" not in err
    assert "dropped" not in err  # the row data stays out of the message
    assert (_count(conn, schema, table), _count(conn, schema, kept)) == (RECORDS // 2, RECORDS)

    conn.execute(
        "INSERT INTO langchain_pg_collection VALUES (%s, 'dropped', '{}')",
        (collections["dropped"],),
    )
    code, _, err = guard("rollback", job_id, "--discard-writes")
    assert code == 0, err
    assert before == catalog(conn, schema, table)
    assert _count(conn, schema, table) == RECORDS
    conn.execute("DELETE FROM langchain_pg_collection WHERE name = 'kept'")
    assert _count(conn, schema, table) == RECORDS // 2

    code, _, err = guard("cutover", job_id)  # the cascade's deletes go to the target too
    assert code == 0, err
    conn.execute("DELETE FROM langchain_pg_collection WHERE name = 'dropped'")
    assert _count(conn, schema, table) == 0
    code, out, err = guard("rollback", job_id)
    assert code == 0, err
    assert f"{RECORDS // 2} deleted" in out
    assert before == catalog(conn, schema, table)
    assert _count(conn, schema, table) == 0


def test_haystack_table_keeps_its_index_names(
    guard: Guard, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str, candidate: str
) -> None:
    """Haystack's haystack_documents: its keyword and HNSW indexes keep their names on the
    live table (Haystack looks them up by name), and again after rollback."""
    conn, schema = pg_conn, pg_schema
    conn.execute(
        "CREATE TABLE haystack_documents (id VARCHAR(128) PRIMARY KEY, embedding VECTOR(16),"
        " content TEXT, blob_data BYTEA, blob_meta JSONB, blob_mime_type VARCHAR(255),"
        " meta JSONB)"
    )
    conn.execute(
        "CREATE INDEX haystack_keyword_index ON haystack_documents"
        " USING GIN (to_tsvector('english', content))"
    )
    conn.execute(
        "CREATE INDEX haystack_hnsw_index ON haystack_documents"
        " USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
    _fill(
        conn,
        "INSERT INTO haystack_documents (id, content, meta, embedding) VALUES (%s, %s, %s, %s)",
        [(f"doc-{i}", f"content number {i}", json.dumps({"i": i})) for i in range(RECORDS)],
    )
    table = "haystack_documents"
    before = catalog(conn, schema, table)

    job_id = _reindex_and_cut_over(guard, _uri(pg_dsn, schema, table), candidate)
    assert before == catalog(conn, schema, table)
    kept = _kept(conn, schema, table)
    kept_indexes = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
        (schema, kept),
    ).fetchall()
    assert not {"haystack_keyword_index", "haystack_hnsw_index"} & {i for (i,) in kept_indexes}

    code, _, err = guard("rollback", job_id)
    assert code == 0, err
    assert before == catalog(conn, schema, table)


def test_bigserial_table_keeps_trigger_grant_policy_comments_and_takes_inserts(
    guard: Guard,
    pg_dsn: str,
    pg_conn: psycopg.Connection[Any],
    pg_schema: str,
    role: str,
    candidate: str,
) -> None:
    """A bigserial table with a trigger, a grant, an RLS policy, comments, a CHECK and a
    foreign key from another table: all there after cutover and after rollback; a second
    cutover and cleanup leave a table that takes inserts and cascades into its children."""
    conn, schema = pg_conn, pg_schema
    reader = sql.Identifier(role)
    conn.execute(
        "CREATE TABLE notes (id bigserial PRIMARY KEY, text text NOT NULL,"
        " embedding vector(16), edited boolean NOT NULL DEFAULT false,"
        " CONSTRAINT notes_text_not_blank CHECK (text <> ''))"
    )
    conn.execute("CREATE INDEX notes_embedding_hnsw ON notes USING hnsw (embedding vector_l2_ops)")
    conn.execute(
        "CREATE FUNCTION mark_edited() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN NEW.edited := true; RETURN NEW; END $$"
    )
    conn.execute(
        "CREATE TRIGGER notes_mark_edited BEFORE UPDATE OF text ON notes"
        " FOR EACH ROW EXECUTE FUNCTION mark_edited()"
    )
    conn.execute(sql.SQL("GRANT SELECT, UPDATE (text) ON notes TO {}").format(reader))
    conn.execute(sql.SQL("GRANT INSERT ON notes TO {} WITH GRANT OPTION").format(reader))
    conn.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
    conn.execute(
        sql.SQL("CREATE POLICY notes_visible ON notes FOR SELECT TO {} USING (NOT edited)").format(
            reader
        )
    )
    conn.execute("COMMENT ON TABLE notes IS 'notes of the team'")
    conn.execute("COMMENT ON INDEX notes_embedding_hnsw IS 'nearest notes'")
    conn.execute("COMMENT ON TRIGGER notes_mark_edited ON notes IS 'flags edits'")
    conn.execute("COMMENT ON POLICY notes_visible ON notes IS 'readers see unedited notes'")
    conn.execute(
        "CREATE TABLE note_links (id serial PRIMARY KEY, note_id bigint NOT NULL"
        " CONSTRAINT note_links_note_fk REFERENCES notes(id) ON DELETE CASCADE)"
    )
    conn.execute("COMMENT ON CONSTRAINT note_links_note_fk ON note_links IS 'link target'")
    _fill(
        conn,
        "INSERT INTO notes (text, embedding) VALUES (%s, %s)",
        [(f"note {i} on {('tides', 'ovens', 'gears')[i % 3]}",) for i in range(RECORDS)],
    )
    conn.execute("INSERT INTO note_links (note_id) SELECT id FROM notes")
    table = "notes"
    before = catalog(conn, schema, table)

    job_id = _reindex_and_cut_over(guard, _uri(pg_dsn, schema, table), candidate)
    assert before == catalog(conn, schema, table)
    kept = _kept(conn, schema, table)
    conn.execute("UPDATE notes SET text = text WHERE id = 1")  # fires the trigger
    assert conn.execute("SELECT edited FROM notes WHERE id = 1").fetchone() == (True,)
    conn.execute("DELETE FROM notes WHERE id = 2")
    assert (
        _count(conn, schema, "note_links"),
        _count(conn, schema, kept),
    ) == (RECORDS - 1, RECORDS)

    code, _, err = guard("rollback", job_id, "--discard-writes")
    assert code == 0, err
    assert before == catalog(conn, schema, table)
    assert conn.execute("SELECT edited FROM notes WHERE id = 1").fetchone() == (False,)

    for step in ("catch-up", "cutover", "cleanup"):  # catch-up: row 2 back, row 1 re-embedded
        code, _, err = guard(step, job_id)
        assert code == 0, (step, err)
    assert code == 0, err
    assert before == catalog(conn, schema, table)
    new_id = conn.execute(
        "INSERT INTO notes (text) VALUES ('after cleanup') RETURNING id"
    ).fetchone()[0]
    assert new_id > RECORDS
    conn.execute("INSERT INTO note_links (note_id) VALUES (%s)", (new_id,))
    conn.execute("DELETE FROM notes WHERE id = %s", (new_id,))
    assert (
        conn.execute("SELECT count(*) FROM note_links WHERE note_id = %s", (new_id,)).fetchone()[0]
        == 0
    )


def test_a_switch_stopped_midway_changes_nothing(
    guard: Guard, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str, candidate: str
) -> None:
    """A writer's open transaction on langchain_pg_collection holds a lock the switch needs
    only after it has renamed the tables and their indexes (to add the foreign key to
    the new live table): the switch stops at lock_timeout with one line and exit 2, and
    tables, names and foreign keys are as before; once the writer is done it switches."""
    conn, schema = pg_conn, pg_schema
    _langchain_tables(conn)
    table = "langchain_pg_embedding"
    before = catalog(conn, schema, table)
    job_id = _reindex(guard, _uri(pg_dsn, schema, table), candidate)
    tables = _tables(conn, schema)

    with psycopg.connect(pg_dsn) as writer:  # not autocommit: its transaction stays open
        writer.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, 'third', NULL)").format(
                sql.Identifier(schema, "langchain_pg_collection")
            ),
            (uuid.uuid4(),),
        )
        code, _, err = guard("cutover", job_id)
        writer.rollback()
    assert (code, len(err.strip().splitlines())) == (2, 1), err
    assert "busy" in err
    assert _tables(conn, schema) == tables
    assert before == catalog(conn, schema, table)

    code, _, err = guard("cutover", job_id)
    assert code == 0, err
    assert before == catalog(conn, schema, table)
    assert _tables(conn, schema) - tables == {_kept(conn, schema, table)}


def test_identity_table_keeps_its_sequence_name_and_takes_inserts(
    guard: Guard, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str, candidate: str
) -> None:
    """An identity column has a sequence per table: the live table's takes the source's
    sequence name, and inserts get fresh ids after cutover and after rollback."""
    conn, schema = pg_conn, pg_schema
    conn.execute(
        "CREATE TABLE chunks (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " text text, embedding vector(16))"
    )
    _fill(
        conn,
        "INSERT INTO chunks (text, embedding) VALUES (%s, %s)",
        [(f"chunk {i} of {('maps', 'songs', 'tools')[i % 3]}",) for i in range(RECORDS)],
    )
    table = "chunks"
    before = catalog(conn, schema, table)

    job_id = _reindex_and_cut_over(guard, _uri(pg_dsn, schema, table), candidate)
    assert before == catalog(conn, schema, table)
    insert = "INSERT INTO chunks (text) VALUES ('new') RETURNING id"
    assert conn.execute(insert).fetchone()[0] == RECORDS + 1

    code, _, err = guard("rollback", job_id, "--discard-writes")
    assert code == 0, err
    assert before == catalog(conn, schema, table)
    assert conn.execute(insert).fetchone()[0] == RECORDS + 1


def test_two_cutovers_at_once_switch_once(
    guard: Guard, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str, candidate: str
) -> None:
    """Two `guard reindex cutover` processes started together: one switches, the other
    exits 2 with one line, and the live table is whole."""
    conn, schema = pg_conn, pg_schema
    _langchain_tables(conn)
    table = "langchain_pg_embedding"
    before = catalog(conn, schema, table)
    job_id = _reindex(guard, _uri(pg_dsn, schema, table), candidate)
    tables = _tables(conn, schema)

    command = [str(Path(sys.executable).with_name("guard")), "reindex", "cutover", job_id]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    results = sorted((run.returncode, error) for run, error in zip(runs, errors, strict=True))
    assert [code for code, _ in results] == [0, 2], results
    assert len(results[1][1].strip().splitlines()) == 1, results
    assert before == catalog(conn, schema, table)
    assert _tables(conn, schema) - tables == {_kept(conn, schema, table)}
