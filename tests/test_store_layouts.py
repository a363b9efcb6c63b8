"""Layout detection on the schemas frameworks write, recreated by hand (no framework is
installed): LangChain, LlamaIndex, Haystack and pgai on pgvector; LangChain, LlamaIndex
and Haystack payloads on Qdrant. Each test asserts the layout named and the texts read."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import psycopg
import pytest
from fixtures_stores import qdrant_url_uri, unit_vectors
from qdrant_client import QdrantClient, models

from guard.records import RecordBatch
from guard.stores import open_store

TEXTS = ["alpha document", "beta document", "gamma document", ""]
DIMS = 4

# --- pgvector ------------------------------------------------------------------------------

LANGCHAIN_POSTGRES = """
CREATE TABLE langchain_pg_collection (
    uuid uuid PRIMARY KEY, name varchar NOT NULL UNIQUE, cmetadata json);
CREATE TABLE langchain_pg_embedding (
    id varchar PRIMARY KEY,
    collection_id uuid REFERENCES langchain_pg_collection (uuid) ON DELETE CASCADE,
    embedding vector, document varchar, cmetadata jsonb);
CREATE INDEX ix_cmetadata_gin ON langchain_pg_embedding USING gin (cmetadata jsonb_path_ops);
"""
LANGCHAIN_COMMUNITY = """
CREATE TABLE langchain_pg_collection (uuid uuid PRIMARY KEY, name varchar, cmetadata json);
CREATE TABLE langchain_pg_embedding (
    uuid uuid PRIMARY KEY,
    collection_id uuid REFERENCES langchain_pg_collection (uuid) ON DELETE CASCADE,
    embedding vector(4), document varchar, cmetadata json, custom_id varchar);
"""
LLAMAINDEX = """
CREATE TABLE data_docs (
    id bigserial PRIMARY KEY, text varchar NOT NULL, metadata_ json, node_id varchar,
    embedding halfvec(4));
CREATE INDEX data_docs_embedding_idx ON data_docs USING hnsw (embedding halfvec_cosine_ops);
"""
PGAI = """
CREATE TABLE blog (id int PRIMARY KEY, title text NOT NULL, contents text NOT NULL);
CREATE TABLE blog_contents_embedding_store (
    embedding_uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    id int NOT NULL REFERENCES blog (id) ON DELETE CASCADE,
    chunk_seq int NOT NULL, chunk text NOT NULL, embedding vector(4) NOT NULL,
    UNIQUE (id, chunk_seq));
"""
HAYSTACK = """
CREATE TABLE haystack_documents (
    id varchar(128) PRIMARY KEY, embedding vector(4), content text, blob_data bytea,
    blob_meta jsonb, blob_mime_type varchar(255), meta jsonb);
CREATE INDEX haystack_hnsw_index ON haystack_documents USING hnsw (embedding vector_ip_ops);
"""


def fill_langchain(conn: psycopg.Connection[Any], id_column: str) -> None:
    collection = uuid.uuid4()
    conn.execute("INSERT INTO langchain_pg_collection VALUES (%s, 'docs', '{}')", [collection])
    for text, vector in zip(TEXTS, unit_vectors(len(TEXTS), DIMS, 1), strict=True):
        key = str(uuid.uuid4())
        conn.execute(
            f"INSERT INTO langchain_pg_embedding ({id_column}, collection_id, embedding,"
            " document, cmetadata) VALUES (%s, %s, %s, %s, '{}')",
            [key, collection, vector, text],
        )


def fill_llamaindex(conn: psycopg.Connection[Any]) -> None:
    for text, vector in zip(TEXTS, unit_vectors(len(TEXTS), DIMS, 2), strict=True):
        conn.execute(
            "INSERT INTO data_docs (text, metadata_, node_id, embedding)"
            ' VALUES (%s, \'{"doc_id": "d1"}\', %s, %s::halfvec)',
            [text, str(uuid.uuid4()), vector],
        )


def fill_pgai(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO blog VALUES (1, 'post', 'long contents')")
    for seq, (text, vector) in enumerate(
        zip(TEXTS, unit_vectors(len(TEXTS), DIMS, 3), strict=True)
    ):
        conn.execute(
            "INSERT INTO blog_contents_embedding_store (id, chunk_seq, chunk, embedding)"
            " VALUES (1, %s, %s, %s)",
            [seq, text, vector],
        )


def fill_haystack(conn: psycopg.Connection[Any]) -> None:
    for text, vector in zip(TEXTS, unit_vectors(len(TEXTS), DIMS, 4), strict=True):
        conn.execute(
            "INSERT INTO haystack_documents (id, embedding, content, meta)"
            " VALUES (%s, %s, %s, '{}')",
            [uuid.uuid4().hex * 2, vector, text],
        )


PG_CASES = {
    "langchain-postgres": (LANGCHAIN_POSTGRES, "langchain_pg_embedding", "langchain", "id"),
    "langchain-community": (LANGCHAIN_COMMUNITY, "langchain_pg_embedding", "langchain", "uuid"),
    "llamaindex": (LLAMAINDEX, "data_docs", "llamaindex", "id"),
    "pgai": (PGAI, "blog_contents_embedding_store", "pgai", "embedding_uuid"),
    "haystack": (HAYSTACK, "haystack_documents", "haystack", "id"),
}
FILLERS: dict[str, Callable[[psycopg.Connection[Any]], None]] = {
    "langchain-postgres": lambda conn: fill_langchain(conn, "id"),
    "langchain-community": lambda conn: fill_langchain(conn, "uuid"),
    "llamaindex": fill_llamaindex,
    "pgai": fill_pgai,
    "haystack": fill_haystack,
}


def pg_uri(dsn: str, schema: str, table: str, **options: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in {"table": table, **options}.items())
    return f"{dsn}&schema={schema}&{query}"


@pytest.mark.parametrize("case", sorted(PG_CASES))
def test_pgvector_detects_framework_tables(
    case: str, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    ddl, table, layout, id_column = PG_CASES[case]
    pg_conn.execute(ddl)
    FILLERS[case](pg_conn)
    store = open_store(pg_uri(pg_dsn, pg_schema, table))
    info = store.describe()
    assert (info.layout, info.count, info.dims) == (layout, len(TEXTS), DIMS)
    assert info.details["id_column"] == id_column
    assert info.records_without_text == 1
    drawn = store.sample(10, seed=0)
    assert sorted(text or "" for text in drawn.texts) == sorted(TEXTS)
    store.close()


def test_pgvector_reads_halfvec_as_float32_and_distance_from_its_index(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute(LLAMAINDEX)
    fill_llamaindex(pg_conn)
    store = open_store(pg_uri(pg_dsn, pg_schema, "data_docs"))
    info = store.describe()
    assert (info.distance, info.details["vector_type"]) == ("cosine", "halfvec")
    batch = store.fetch([1, 2])
    assert batch.vectors.dtype.name == "float32"
    assert store.search(batch.vectors[:1], 1) == [[1]]
    store.close()


@pytest.mark.parametrize(
    ("opclass", "distance"),
    [
        ("vector_cosine_ops", "cosine"),
        ("vector_ip_ops", "dot"),
        ("vector_l2_ops", "l2"),
        ("vector_l1_ops", "l1"),
        ("halfvec_ip_ops", "dot"),
        ("halfvec_l1_ops", "l1"),
    ],
)
def test_pgvector_takes_the_distance_from_the_index_opclass(
    opclass: str, distance: str, pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    column = "halfvec(4)" if opclass.startswith("halfvec") else "vector(4)"
    pg_conn.execute(f"CREATE TABLE items (id int PRIMARY KEY, text text, emb {column})")
    pg_conn.execute(f"CREATE INDEX ON items USING hnsw (emb {opclass})")
    store = open_store(pg_uri(pg_dsn, pg_schema, "items"))
    info = store.describe()
    assert info.distance == distance
    assert opclass in info.details["distance_source"]
    store.close()


def test_pgvector_without_an_index_assumes_cosine_and_says_so(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute("CREATE TABLE items (id int PRIMARY KEY, text text, emb vector(4))")
    info = open_store(pg_uri(pg_dsn, pg_schema, "items")).describe()
    assert info.distance == "cosine"
    assert info.details["distance_source"] == "default: no HNSW or IVFFlat index on emb"


def test_pgvector_options_name_columns_with_odd_identifiers(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    """Quotes, spaces and upper case in names go through as identifiers, never as SQL."""
    pg_conn.execute(
        'CREATE TABLE "My Table" ("Key" int PRIMARY KEY, "the ""body""" text,'
        ' "Vec A" vector(4), "Vec B" vector(4))'
    )
    vectors = unit_vectors(2, DIMS, 5)
    for key, vector in enumerate(vectors):
        pg_conn.execute(
            'INSERT INTO "My Table" VALUES (%s, %s, %s, %s)', [key, f"t{key}", vector, vector]
        )
    uri = pg_uri(
        pg_dsn,
        pg_schema,
        "My%20Table",
        text_column="the%20%22body%22",
        vector_column="Vec%20B",
        id_column="Key",
    )
    store = open_store(uri)
    info = store.describe()
    assert (info.layout, info.text_field, info.vector_field) == ("custom", 'the "body"', "Vec B")
    assert [page.texts for page in store.scan(batch_size=5)] == [("t0", "t1")]
    store.close()


# --- Qdrant --------------------------------------------------------------------------------

Options = dict[str, str]
QDRANT_KINDS = ["qdrant-local"] + (["qdrant-url"] if os.environ.get("QDRANT_URL") else [])


def llamaindex_payload(text: str) -> dict[str, Any]:
    """What llama-index-vector-stores-qdrant writes: the node as JSON plus its metadata."""
    node_id = str(uuid.uuid4())
    node = {
        "id_": node_id,
        "embedding": None,
        "metadata": {"file_name": "a.txt"},
        "excluded_embed_metadata_keys": [],
        "excluded_llm_metadata_keys": [],
        "relationships": {"1": {"node_id": "doc-1", "node_type": "4", "metadata": {}}},
        "text": text,
        "mimetype": "text/plain",
        "start_char_idx": 0,
        "end_char_idx": len(text),
        "text_template": "{metadata_str}\n\n{content}",
        "metadata_template": "{key}: {value}",
        "metadata_seperator": "\n",
        "class_name": "TextNode",
    }
    return {
        "file_name": "a.txt",
        "_node_content": json.dumps(node),
        "_node_type": "TextNode",
        "document_id": "doc-1",
        "doc_id": "doc-1",
        "ref_doc_id": "doc-1",
    }


QDRANT_CASES: dict[str, tuple[Callable[[str], dict[str, Any]], tuple[str, ...], str, Options]] = {
    # name: (payload for a text, vector names, layout, URI options)
    "plain": (lambda text: {"text": text, "lang": "en"}, (), "plain", {}),
    "langchain": (
        lambda text: {"page_content": text, "metadata": {"source": "a.txt"}},
        (),
        "langchain",
        {},
    ),
    "llamaindex": (llamaindex_payload, ("text-dense",), "llamaindex", {}),
    "haystack": (
        lambda text: {"id": uuid.uuid4().hex * 2, "content": text, "meta": {}, "blob": None},
        (),
        "haystack",
        {},
    ),
    "custom": (lambda text: {"body": text}, (), "custom", {"text_field": "body"}),
}
Writer = Callable[[list[dict[str, Any]], tuple[str, ...], Options], str]


def qdrant_vectors(count: int, name_index: int) -> list[list[float]]:
    return unit_vectors(count, DIMS, 60 + name_index).tolist()


@pytest.fixture(params=QDRANT_KINDS)
def qdrant_writer(request: pytest.FixtureRequest, qdrant_dir: Path) -> Iterator[Writer]:
    """``write(payloads, vector_names, options)``: a collection written with a raw client,
    as a framework would (``qdrant_vectors`` gives the vectors of each name); returns its
    URI. The local client is closed before the store under test opens the folder (local
    mode allows one client per folder)."""
    made: list[str] = []
    local = request.param == "qdrant-local"

    def write(payloads: list[dict[str, Any]], names: tuple[str, ...], options: Options) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        if local:
            client = QdrantClient(path=str(qdrant_dir))
        else:
            client = QdrantClient(
                url=os.environ["QDRANT_URL"], api_key=os.environ.get("QDRANT_API_KEY")
            )
        params = models.VectorParams(size=DIMS, distance=models.Distance.DOT)
        client.create_collection(
            name, vectors_config={n: params for n in names} if names else params
        )
        columns = [qdrant_vectors(len(payloads), i) for i in range(max(len(names), 1))]
        points = []
        for row, payload in enumerate(payloads):
            vector: Any = (
                {n: columns[i][row] for i, n in enumerate(names)} if names else columns[0][row]
            )
            points.append(models.PointStruct(id=str(uuid.uuid4()), vector=vector, payload=payload))
        client.upsert(name, points)
        client.close()
        if local:
            uri = f"qdrant+local:{qdrant_dir}?{urlencode({'collection': name, **options})}"
        else:
            uri = qdrant_url_uri(name, **options)
        made.append(uri)
        return uri

    yield write
    for uri in made:
        store = open_store(uri)
        store.drop()
        store.close()


@pytest.mark.parametrize("case", sorted(QDRANT_CASES))
def test_qdrant_detects_framework_payloads(case: str, qdrant_writer: Writer) -> None:
    payload, names, layout, options = QDRANT_CASES[case]
    store = open_store(qdrant_writer([payload(text) for text in TEXTS], names, options))
    info = store.describe()
    expected = (layout, len(TEXTS), "dot", names[0] if names else None)
    assert (info.layout, info.count, info.distance, info.vector_field) == expected
    if layout != "llamaindex":  # its text sits inside a JSON string: not countable by filter
        assert info.records_without_text == 1
    drawn = store.sample(10, seed=0)
    # LlamaIndex embedded its metadata lines with the text (MetadataMode.EMBED).
    embedded = [f"file_name: a.txt\n\n{t}" if t and layout == "llamaindex" else t for t in TEXTS]
    assert sorted(text or "" for text in drawn.texts) == sorted(embedded)
    store.close()


def test_qdrant_upsert_keeps_the_llamaindex_layout(qdrant_writer: Writer) -> None:
    """Copied payloads are kept byte for byte; a new text is written inside
    ``_node_content``, under the node's metadata lines."""
    store = open_store(qdrant_writer([llamaindex_payload(t) for t in TEXTS], ("text-dense",), {}))
    page = next(store.scan(batch_size=10, with_payload=True))
    store.upsert(RecordBatch(page.ids[1:2], page.texts[1:2], page.vectors[1:2], page.payloads[1:2]))
    assert next(store.scan(batch_size=10, with_payload=True)).payloads[1] == page.payloads[1]
    store.upsert(RecordBatch(page.ids[:1], ("rewritten",), page.vectors[:1], page.payloads[:1]))
    assert store.fetch(page.ids[:1]).texts == ("file_name: a.txt\n\nrewritten",)
    assert store.describe().layout == "llamaindex"
    store.close()


def test_qdrant_reads_the_named_vector_the_vector_option_picks(qdrant_writer: Writer) -> None:
    payloads = [{"text": text} for text in TEXTS]
    store = open_store(qdrant_writer(payloads, ("first", "second"), {"vector": "second"}))
    assert store.describe().vector_field == "second"
    drawn = store.sample(10, seed=0)
    order = [TEXTS.index(text or "") for text in drawn.texts]
    np.testing.assert_allclose(
        drawn.vectors, np.array(qdrant_vectors(len(TEXTS), 1))[order], atol=1e-6
    )
    store.close()
