"""Framework round trips: a store written through a framework's public API (the ``interop``
extra), checked, re-indexed, verified and cut over by the real ``guard`` commands, then
used again through the same framework; rolled back and used again.

The application queries with the engine that wrote what it reads: F16 before cutover and
after rollback, the candidate (Q8_0: every vector changes a little) after cutover. Each
search returns every record for queries that are texts of the corpus, so "the same
records" is exact: the same top hit, and the same ids with the same texts and metadata.
Qdrant applications query through an alias (the README's runbook), which cutover moves.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import psycopg
import pytest
from haystack import Document as HaystackDocument
from haystack.components.embedders import MockDocumentEmbedder, MockTextEmbedder
from psycopg import sql
from qdrant_client import QdrantClient, models
from test_interop import GuardLangChainEmbeddings, GuardLlamaIndexEmbedding, sqlalchemy_url

from guard.engines import EmbeddingEngine, open_engine

TEXTS = 40
PROBES = (0, 13, 27, 39)  # corpus texts used as queries
Hit = tuple[str, str, str]  # (id, text, metadata as sorted JSON)
Guard = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def f16(gguf_f16: Path) -> Iterator[EmbeddingEngine]:
    """The engine that wrote the store (one per module: loading it is the slow part)."""
    engine = open_engine(f"llamacpp:{gguf_f16}")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def q8(gguf_q8_0: Path) -> Iterator[EmbeddingEngine]:
    """The candidate the store is re-indexed with, and the application queries with after."""
    engine = open_engine(f"llamacpp:{gguf_q8_0}")
    yield engine
    engine.close()


@pytest.fixture
def texts(short_texts: list[str]) -> list[str]:
    return short_texts[:TEXTS]


@pytest.fixture
def guard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], state_dsn: str
) -> Guard:
    """``guard ARGS`` through the console entry point: (exit code, stdout, stderr)."""
    from guard import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["guard", *args])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return code, out, err

    return run


class App(Protocol):
    """What an application does with its framework store."""

    def search(self, text: str, k: int) -> list[Hit]: ...
    def add(self, texts: list[str]) -> list[str]: ...
    def delete(self, ids: list[str]) -> None: ...
    def close(self) -> None: ...


OpenApp = Callable[[EmbeddingEngine], App]


def _hit(record_id: Any, text: str | None, metadata: Any) -> Hit:
    return str(record_id), text or "", json.dumps(metadata, sort_keys=True, default=str)


@dataclass(frozen=True)
class Seen:
    """What the application's searches return: the top hit and every hit by id."""

    top: Hit
    records: dict[str, tuple[str, str]]


def searched(app: App, texts: list[str]) -> dict[int, Seen]:
    found: dict[int, Seen] = {}
    for probe in PROBES:
        hits = app.search(texts[probe], TEXTS)
        found[probe] = Seen(hits[0], {i: (text, meta) for i, text, meta in hits})
    return found


def writes_and_deletes_work(app: App, texts: list[str]) -> None:
    """The framework adds two texts (found by their own text) and deletes them again."""
    new = [f"A note added through the framework: {texts[probe][:80]}" for probe in (1, 2)]
    ids = app.add(new)
    assert [app.search(text, 1)[0][:2] for text in new] == list(zip(ids, new, strict=True))
    app.delete(ids)
    assert not {i for i, *_ in app.search(new[0], TEXTS + 2)} & set(ids)


def round_trip(
    guard: Guard,
    open_app: OpenApp,
    store: str,
    texts: list[str],
    engines: tuple[EmbeddingEngine, EmbeddingEngine],
    candidate: str,
    after_cutover: Callable[[EmbeddingEngine], None] | None = None,
) -> None:
    """plan, run, verify, cutover; the live store approves the candidate and serves the
    same records through the framework, whose writes and deletes work (``after_cutover``:
    the framework's own extra); rollback, the same again with the old engine."""
    old_engine, new_engine = engines
    app = open_app(old_engine)
    before = searched(app, texts)
    app.close()
    assert {len(seen.records) for seen in before.values()} == {TEXTS}

    code, out, err = guard(
        "reindex", "plan", "--store", store, "--candidate", candidate, "--format", "json"
    )
    assert code == 0, err
    job = json.loads(out)["job_id"]
    for step in (("run",), ("verify",), ("cutover",)):
        code, out, err = guard("reindex", step[0], job)
        assert code == 0, f"{step}: {out}{err}"

    app = open_app(new_engine)
    after = searched(app, texts)
    assert {p: s.top for p, s in after.items()} == {p: s.top for p, s in before.items()}
    assert {p: s.records for p, s in after.items()} == {p: s.records for p, s in before.items()}
    writes_and_deletes_work(app, texts)
    app.close()
    if after_cutover:
        after_cutover(new_engine)
    code, out, err = guard("check", "--store", store, "--candidate", candidate)
    assert code == 0, f"{out}{err}"

    code, out, err = guard("reindex", "rollback", job)
    assert code == 0, f"{out}{err}"
    app = open_app(old_engine)
    assert searched(app, texts) == before
    writes_and_deletes_work(app, texts)
    app.close()


# --- Qdrant: the application queries through an alias ---------------------------------


def alias_collection(folder: Path, collection: str, alias: str) -> None:
    """The runbook's step before the first re-index: the application's name becomes an
    alias of the collection the framework created."""
    client = QdrantClient(path=str(folder))
    client.update_collection_aliases(
        change_aliases_operations=[
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
            )
        ]
    )
    client.close()


class LangChainQdrantApp:
    def __init__(self, folder: Path, collection: str, engine: EmbeddingEngine) -> None:
        from langchain_qdrant import QdrantVectorStore

        self.client = QdrantClient(path=str(folder))
        self.store = QdrantVectorStore(
            client=self.client,
            collection_name=collection,
            embedding=GuardLangChainEmbeddings(engine),
        )

    def search(self, text: str, k: int) -> list[Hit]:
        return [
            _hit(doc.metadata.pop("_id"), doc.page_content, doc.metadata)
            for doc in self.store.similarity_search(text, k=k)
        ]

    def add(self, texts: list[str]) -> list[str]:
        ids = self.store.add_texts(texts, metadatas=[{"added": True} for _ in texts])
        return [str(uuid.UUID(i)) for i in ids]  # as Qdrant returns them: with dashes

    def delete(self, ids: list[str]) -> None:
        assert self.store.delete(ids)

    def close(self) -> None:
        self.client.close()


def test_langchain_qdrant_approves_and_round_trips(
    guard: Guard,
    f16: EmbeddingEngine,
    q8: EmbeddingEngine,
    gguf_f16: Path,
    gguf_q8_0: Path,
    qdrant_dir: Path,
    texts: list[str],
) -> None:
    from langchain_qdrant import QdrantVectorStore

    store = QdrantVectorStore.from_texts(
        texts,
        GuardLangChainEmbeddings(f16),
        metadatas=[{"title": f"Paragraph {i}", "source": "pydoc"} for i in range(TEXTS)],
        path=str(qdrant_dir),
        collection_name="docs_v1",
    )
    store.client.close()
    alias_collection(qdrant_dir, "docs_v1", "docs")
    uri = f"qdrant+local:{qdrant_dir}?collection=docs"
    code, out, err = guard("check", "--store", uri, "--candidate", f"llamacpp:{gguf_f16}")
    assert code == 0, f"{out}{err}"
    round_trip(
        guard,
        lambda engine: LangChainQdrantApp(qdrant_dir, "docs", engine),
        uri,
        texts,
        (f16, q8),
        f"llamacpp:{gguf_q8_0}",
    )


class HaystackApp:
    """Haystack's document embedder (the component that takes an embedding function: the
    guard's engine) writing with ``meta_fields_to_embed=["title"]``, its retriever reading.
    Haystack turns every column and payload key it does not know into ``meta``: after a
    cutover its documents would show anything the re-index added to the records."""

    def __init__(self, store: Any, retriever: Any, engine: EmbeddingEngine) -> None:
        self.store, self.retriever = store, retriever

        def embed(text: str) -> list[float]:
            return [float(x) for x in engine.embed([text])[0]]

        self.documents = MockDocumentEmbedder(
            embedding_fn=embed, dimension=384, meta_fields_to_embed=["title"]
        )
        self.query = MockTextEmbedder(embedding_fn=embed, dimension=384)

    def write(self, texts: list[str], meta: list[dict[str, Any]]) -> list[str]:
        docs = [HaystackDocument(content=t, meta=m) for t, m in zip(texts, meta, strict=True)]
        embedded = self.documents.run(documents=docs)["documents"]
        assert self.store.write_documents(embedded) == len(docs)
        return [doc.id for doc in embedded]

    def search(self, text: str, k: int) -> list[Hit]:
        vector = self.query.run(text=text)["embedding"]
        docs = self.retriever.run(query_embedding=vector, top_k=k)["documents"]
        return [_hit(doc.id, doc.content, doc.meta) for doc in docs]

    def add(self, texts: list[str]) -> list[str]:
        return self.write(texts, [{"title": "Added"} for _ in texts])

    def delete(self, ids: list[str]) -> None:
        self.store.delete_documents(ids)

    def close(self) -> None:
        client = getattr(self.store, "_client", None)
        if client is not None:
            client.close()
        connection = getattr(self.store, "_connection", None)
        if connection is not None:
            connection.close()


def haystack_qdrant(folder: Path, index: str, engine: EmbeddingEngine) -> HaystackApp:
    from haystack_integrations.components.retrievers.qdrant import QdrantEmbeddingRetriever
    from haystack_integrations.document_stores.qdrant import QdrantDocumentStore

    store = QdrantDocumentStore(
        path=str(folder), index=index, embedding_dim=384, progress_bar=False
    )
    return HaystackApp(store, QdrantEmbeddingRetriever(document_store=store), engine)


def haystack_meta(n: int) -> list[dict[str, Any]]:
    return [{"title": f"Paragraph {i}", "source": "pydoc"} for i in range(n)]


def test_haystack_qdrant_approves_with_embed_text_and_round_trips(
    guard: Guard,
    f16: EmbeddingEngine,
    q8: EmbeddingEngine,
    gguf_f16: Path,
    gguf_q8_0: Path,
    qdrant_dir: Path,
    texts: list[str],
) -> None:
    """Haystack embedded the title with the content; ``embed_text=`` says so."""
    app = haystack_qdrant(qdrant_dir, "docs_v1", f16)
    app.write(texts, haystack_meta(TEXTS))
    app.close()
    alias_collection(qdrant_dir, "docs_v1", "docs")
    uri = f"qdrant+local:{qdrant_dir}?collection=docs&embed_text=%7Bmeta.title%7D%0A%7Bcontent%7D"
    code, out, err = guard("check", "--store", uri, "--candidate", f"llamacpp:{gguf_f16}")
    assert code == 0, f"{out}{err}"
    round_trip(
        guard,
        lambda engine: haystack_qdrant(qdrant_dir, "docs", engine),
        uri,
        texts,
        (f16, q8),
        f"llamacpp:{gguf_q8_0}",
    )


def haystack_pg(pg_dsn: str, schema: str, engine: EmbeddingEngine) -> HaystackApp:
    from haystack.utils import Secret
    from haystack_integrations.components.retrievers.pgvector import PgvectorEmbeddingRetriever
    from haystack_integrations.document_stores.pgvector import PgvectorDocumentStore

    store = PgvectorDocumentStore(
        connection_string=Secret.from_token(pg_dsn),
        schema_name=schema,
        embedding_dimension=384,
        search_strategy="hnsw",
    )
    return HaystackApp(store, PgvectorEmbeddingRetriever(document_store=store), engine)


def test_haystack_pgvector_approves_with_embed_text_and_round_trips(
    guard: Guard,
    f16: EmbeddingEngine,
    q8: EmbeddingEngine,
    gguf_f16: Path,
    gguf_q8_0: Path,
    pg_dsn: str,
    pg_schema: str,
    texts: list[str],
) -> None:
    app = haystack_pg(pg_dsn, pg_schema, f16)
    app.write(texts, haystack_meta(TEXTS))
    app.close()
    uri = (
        f"{pg_dsn}&schema={pg_schema}&table=haystack_documents"
        "&embed_text=%7Bmeta.title%7D%0A%7Bcontent%7D"
    )
    code, out, err = guard("check", "--store", uri, "--candidate", f"llamacpp:{gguf_f16}")
    assert code == 0, f"{out}{err}"
    round_trip(
        guard,
        lambda engine: haystack_pg(pg_dsn, pg_schema, engine),
        uri,
        texts,
        (f16, q8),
        f"llamacpp:{gguf_q8_0}",
    )


# --- LangChain PGVector: one shared table, a collection table with a cascading FK -------


class LangChainPGVectorApp:
    def __init__(self, pg_dsn: str, schema: str, engine: EmbeddingEngine, name: str) -> None:
        import sqlalchemy
        from langchain_postgres import PGVector

        host = dict(p.split("=", 1) for p in urlsplit(pg_dsn).query.split("&"))["host"]
        self.engine = sqlalchemy.create_engine(
            sqlalchemy_url(pg_dsn, "psycopg"),
            connect_args={"host": host, "options": f"-c search_path={schema},public"},
        )
        self.store = PGVector(
            embeddings=GuardLangChainEmbeddings(engine),
            collection_name=name,
            connection=self.engine,
            use_jsonb=True,
        )

    def search(self, text: str, k: int) -> list[Hit]:
        return [
            _hit(doc.id, doc.page_content, doc.metadata)
            for doc in self.store.similarity_search(text, k=k)
        ]

    def add(self, texts: list[str]) -> list[str]:
        return self.store.add_texts(texts, metadatas=[{"added": True} for _ in texts])

    def delete(self, ids: list[str]) -> None:
        self.store.delete(ids)

    def close(self) -> None:
        self.engine.dispose()


def test_langchain_pgvector_round_trips_and_delete_collection_cascades(
    guard: Guard,
    f16: EmbeddingEngine,
    q8: EmbeddingEngine,
    gguf_q8_0: Path,
    pg_dsn: str,
    pg_schema: str,
    pg_conn: psycopg.Connection[Any],
    texts: list[str],
) -> None:
    """Round trip of the shared ``langchain_pg_embedding`` table; after cutover and after
    rollback ``delete_collection()`` cascades into the live table (no orphans)."""
    app = LangChainPGVectorApp(pg_dsn, pg_schema, f16, "docs")
    app.store.add_texts(texts, metadatas=[{"title": f"Paragraph {i}"} for i in range(TEXTS)])
    app.close()

    def rows() -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(pg_schema, "langchain_pg_embedding")
        )
        return int(pg_conn.execute(query).fetchone()[0])

    def scratch_collection_comes_and_goes(engine: EmbeddingEngine) -> None:
        scratch = LangChainPGVectorApp(pg_dsn, pg_schema, engine, "scratch")
        scratch.add(texts[:3])
        assert rows() == TEXTS + 3
        scratch.store.delete_collection()
        scratch.close()
        assert rows() == TEXTS

    uri = f"{pg_dsn}&schema={pg_schema}&table=langchain_pg_embedding"
    round_trip(
        guard,
        lambda engine: LangChainPGVectorApp(pg_dsn, pg_schema, engine, "docs"),
        uri,
        texts,
        (f16, q8),
        f"llamacpp:{gguf_q8_0}",
        scratch_collection_comes_and_goes,
    )
    app = LangChainPGVectorApp(pg_dsn, pg_schema, f16, "docs")
    app.store.delete_collection()
    app.close()
    assert rows() == 0


# --- LlamaIndex: nodes embedded with their metadata lines ------------------------------


class LlamaIndexApp:
    def __init__(self, store: Any, engine: EmbeddingEngine, close: Callable[[], None]) -> None:
        from llama_index.core import Settings, VectorStoreIndex

        Settings.llm = None
        self.index = VectorStoreIndex.from_vector_store(
            store, embed_model=GuardLlamaIndexEmbedding(engine)
        )
        self._close = close

    def search(self, text: str, k: int) -> list[Hit]:
        nodes = self.index.as_retriever(similarity_top_k=k).retrieve(text)
        return [_hit(n.node.node_id, n.node.get_content(), n.node.metadata) for n in nodes]

    def add(self, texts: list[str]) -> list[str]:
        from llama_index.core.schema import TextNode

        nodes = [TextNode(text=text, metadata={"title": "Added"}) for text in texts]
        self.index.insert_nodes(nodes)
        return [node.node_id for node in nodes]

    def delete(self, ids: list[str]) -> None:
        self.index.delete_nodes(ids)

    def close(self) -> None:
        self._close()


def llamaindex_documents(texts: list[str]) -> list[Any]:
    from llama_index.core import Document

    return [
        Document(text=text, metadata={"title": f"Paragraph {i}", "source": "pydoc"})
        for i, text in enumerate(texts)
    ]


def write_llamaindex(store: Any, engine: EmbeddingEngine, texts: list[str]) -> None:
    from llama_index.core import Settings, StorageContext, VectorStoreIndex

    Settings.llm = None
    VectorStoreIndex.from_documents(
        llamaindex_documents(texts),
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=GuardLlamaIndexEmbedding(engine),
    )


def test_llamaindex_qdrant_round_trips(
    guard: Guard,
    f16: EmbeddingEngine,
    q8: EmbeddingEngine,
    gguf_q8_0: Path,
    qdrant_dir: Path,
    texts: list[str],
) -> None:
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    client = QdrantClient(path=str(qdrant_dir))
    write_llamaindex(QdrantVectorStore(client=client, collection_name="docs_v1"), f16, texts)
    client.close()
    alias_collection(qdrant_dir, "docs_v1", "docs")

    def open_app(engine: EmbeddingEngine) -> App:
        client = QdrantClient(path=str(qdrant_dir))
        store = QdrantVectorStore(client=client, collection_name="docs")
        return LlamaIndexApp(store, engine, client.close)

    round_trip(
        guard,
        open_app,
        f"qdrant+local:{qdrant_dir}?collection=docs",
        texts,
        (f16, q8),
        f"llamacpp:{gguf_q8_0}",
    )


def test_llamaindex_pgvector_round_trips(
    guard: Guard,
    f16: EmbeddingEngine,
    q8: EmbeddingEngine,
    gguf_q8_0: Path,
    pg_dsn: str,
    pg_schema: str,
    texts: list[str],
) -> None:
    from llama_index.vector_stores.postgres import PGVectorStore

    def store() -> Any:
        return PGVectorStore.from_params(
            connection_string=sqlalchemy_url(pg_dsn, "psycopg"),
            async_connection_string=sqlalchemy_url(pg_dsn, "psycopg"),
            table_name="docs",
            schema_name=pg_schema,
            embed_dim=384,
            hnsw_kwargs={"hnsw_m": 16, "hnsw_ef_construction": 64},
        )

    written = store()
    write_llamaindex(written, f16, texts)
    written.close()

    def open_app(engine: EmbeddingEngine) -> App:
        opened = store()
        return LlamaIndexApp(opened, engine, opened.close)

    round_trip(
        guard,
        open_app,
        f"{pg_dsn}&schema={pg_schema}&table=data_docs",
        texts,
        (f16, q8),
        f"llamacpp:{gguf_q8_0}",
    )
