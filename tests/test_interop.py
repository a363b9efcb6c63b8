"""Stores written the way it happens: through the frameworks' own public APIs (the
``interop`` extra), embedding with all-MiniLM-L6-v2 through the guard's llama.cpp engine
wrapped in each framework's embeddings interface; then ``guard check`` as users run it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from langchain_core.embeddings import Embeddings
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.node_parser import SentenceSplitter
from pydantic import PrivateAttr
from qdrant_client import QdrantClient
from test_cli import guard

from guard.engines import EmbeddingEngine, open_engine

TEXTS = 40  # corpus paragraphs per store: enough for a bound, quick on 2 cores


class GuardLangChainEmbeddings(Embeddings):
    """A guard engine behind LangChain's ``Embeddings`` interface."""

    def __init__(self, engine: EmbeddingEngine) -> None:
        self.engine = engine

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self.engine.embed(texts)]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class GuardLlamaIndexEmbedding(BaseEmbedding):
    """A guard engine behind LlamaIndex's ``BaseEmbedding``."""

    _engine: Any = PrivateAttr()

    def __init__(self, engine: EmbeddingEngine) -> None:
        super().__init__(model_name="guard", embed_batch_size=32)
        self._engine = engine

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self._engine.embed(texts)]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


@pytest.fixture
def f16(gguf_f16: Path) -> Iterator[EmbeddingEngine]:
    engine = open_engine(f"llamacpp:{gguf_f16}")
    yield engine
    engine.close()


def check(store: str, candidate: str) -> int:
    result = guard("check", "--store", store, "--candidate", candidate, "--sample", "200")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 2, result.stderr
    return result.returncode


def documents(corpus: list[str], start: int = 0) -> list[Document]:
    """LlamaIndex documents with the metadata its default nodes embed with the text."""
    return [
        Document(text=text, metadata={"title": f"Paragraph {i}", "source": "pydoc"})
        for i, text in enumerate(corpus[start : start + TEXTS])
    ]


def test_llamaindex_qdrant_default_nodes_approve_with_the_same_model(
    f16: EmbeddingEngine, gguf_f16: Path, qdrant_dir: Path, corpus: list[str]
) -> None:
    """LlamaIndex embeds each node's metadata lines with its text (MetadataMode.EMBED);
    the guard rebuilds that string, so the same model approves (was: median cosine 0.85,
    reindex)."""
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    Settings.llm = None
    client = QdrantClient(path=str(qdrant_dir))
    store = QdrantVectorStore(client=client, collection_name="docs")
    VectorStoreIndex.from_documents(
        documents(corpus),
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=GuardLlamaIndexEmbedding(f16),
        transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=0)],
    )
    client.close()
    assert check(f"qdrant+local:{qdrant_dir}?collection=docs", f"llamacpp:{gguf_f16}") == 0


def sqlalchemy_url(dsn: str, driver: str) -> str:
    """pgserver's libpq URI (socket in ``host=``) as an SQLAlchemy URL for ``driver``."""
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


def test_llamaindex_pgvector_default_nodes_approve_with_the_same_model(
    f16: EmbeddingEngine, gguf_f16: Path, pg_dsn: str, pg_schema: str, corpus: list[str]
) -> None:
    from llama_index.vector_stores.postgres import PGVectorStore

    Settings.llm = None
    store = PGVectorStore.from_params(
        connection_string=sqlalchemy_url(pg_dsn, "psycopg"),
        async_connection_string=sqlalchemy_url(pg_dsn, "psycopg"),
        table_name="docs",
        schema_name=pg_schema,
        embed_dim=384,
    )
    VectorStoreIndex.from_documents(
        documents(corpus),
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=GuardLlamaIndexEmbedding(f16),
        transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=0)],
    )
    store.close()
    uri = f"{pg_dsn}&schema={pg_schema}&table=data_docs"
    assert check(uri, f"llamacpp:{gguf_f16}") == 0


def test_langchain_pgvector_each_collection_gets_its_own_verdict(
    f16: EmbeddingEngine, gguf_f16: Path, pg_dsn: str, pg_schema: str, corpus: list[str]
) -> None:
    """Two collections of one ``langchain_pg_embedding`` table, written by two engines
    (the second with a task prefix): ``collection=`` checks each against its own."""
    import sqlalchemy
    from langchain_postgres import PGVector

    prefixed_uri = f"llamacpp:{gguf_f16}?prefix={quote('passage: ')}"
    prefixed = open_engine(prefixed_uri)
    host = dict(p.split("=", 1) for p in urlsplit(pg_dsn).query.split("&"))["host"]
    engine = sqlalchemy.create_engine(
        sqlalchemy_url(pg_dsn, "psycopg"),
        connect_args={"host": host, "options": f"-c search_path={pg_schema},public"},
    )
    try:
        for name, embeddings, start in (("plain", f16, 0), ("prefixed", prefixed, TEXTS)):
            PGVector(
                embeddings=GuardLangChainEmbeddings(embeddings),
                collection_name=name,
                connection=engine,
                use_jsonb=True,
            ).add_texts(corpus[start : start + TEXTS])
    finally:
        engine.dispose()
        prefixed.close()
    table = f"{pg_dsn}&schema={pg_schema}&table=langchain_pg_embedding"
    assert check(f"{table}&collection=plain", f"llamacpp:{gguf_f16}") == 0
    assert check(f"{table}&collection=prefixed", prefixed_uri) == 0
    assert check(f"{table}&collection=prefixed", f"llamacpp:{gguf_f16}") != 0


def test_langchain_pgvectorstore_table_approves_with_the_same_model(
    f16: EmbeddingEngine, gguf_f16: Path, pg_dsn: str, pg_schema: str, corpus: list[str]
) -> None:
    """LangChain's newer ``PGVectorStore`` on a ``PGEngine`` table (``langchain_id``,
    ``content``, ``embedding``, ``langchain_metadata``), written by langchain-postgres."""
    from langchain_postgres import PGEngine, PGVectorStore

    engine = PGEngine.from_connection_string(sqlalchemy_url(pg_dsn, "psycopg"))
    try:
        engine.init_vectorstore_table("docs", 384, schema_name=pg_schema)
        store = PGVectorStore.create_sync(
            engine, GuardLangChainEmbeddings(f16), "docs", schema_name=pg_schema
        )
        store.add_texts(
            corpus[:TEXTS], metadatas=[{"source": "pydoc", "n": i} for i in range(TEXTS)]
        )
    finally:
        engine._run_as_sync(engine.close())  # PGEngine has no public sync close
    uri = f"{pg_dsn}&schema={pg_schema}&table=docs"
    result = guard(
        "check", "--store", uri, "--candidate", f"llamacpp:{gguf_f16}", "--format", "json"
    )
    assert (result.returncode, json.loads(result.stdout)["store"]["layout"]) == (
        0,
        "langchain",
    ), result.stderr
