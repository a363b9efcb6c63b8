"""Fixtures that give each test its own real store, and helpers to fill one.

- ``pg_dsn``: one embedded PostgreSQL with pgvector for the whole session (a short
  folder under /tmp: its unix socket path must stay under ~100 characters);
- ``pg_conn`` / ``pg_schema``: a raw connection and a schema of the test's own, dropped
  with everything in it afterwards (for tables written by hand);
- ``qdrant_dir``: a folder for qdrant-client's local mode, in memory (/dev/shm) where
  there is one: local mode commits every point to SQLite on its own, and on a busy disk
  those fsyncs make a 300-point upsert take seconds;
- ``store_kind``: every store the contract runs on: qdrant-local and pgvector, plus
  qdrant-url when ``QDRANT_URL`` is set (e.g. ``http://localhost:6333``);
- ``new_store_uri``: a factory of URIs naming fresh stores of the test's kind (not
  created yet), each dropped afterwards.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg.conninfo import make_conninfo

from guard.engines import open_engine
from guard.pgserver import embedded_dsn
from guard.records import RecordBatch
from guard.stores import open_store

__all__ = [
    "STORE_KINDS",
    "f16_store",
    "make_batch",
    "new_store_uri",
    "pg_conn",
    "pg_dsn",
    "pg_schema",
    "qdrant_dir",
    "qdrant_url_uri",
    "state_dsn",
    "store_kind",
    "unit_vectors",
    "write_store",
]

STORE_KINDS = ["qdrant-local", "pgvector"] + (
    ["qdrant-url"] if os.environ.get("QDRANT_URL") else []
)


def unit_vectors(n: int, dims: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Random unit vectors: Qdrant normalises cosine collections on write, so only unit
    vectors read back unchanged from every store."""
    vectors = np.random.default_rng(seed).normal(size=(n, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_batch(
    n: int,
    dims: int = 16,
    *,
    seed: int = 0,
    start: int = 0,
    uuids: bool = False,
    missing_text_every: int = 0,
    payloads: bool = False,
) -> RecordBatch:
    """``n`` records with ids ``start..`` (or UUIDs derived from them), texts ``"text <i>"``
    (None for every ``missing_text_every``-th) and seeded unit vectors."""
    numbers = range(start, start + n)
    ids = tuple(str(uuid.UUID(int=(i + 1) * 0x9E3779B97F4A7C15)) if uuids else i for i in numbers)
    texts = tuple(
        None if missing_text_every and i % missing_text_every == 0 else f"text {i}" for i in numbers
    )
    extra = tuple({"source": f"doc-{i // 10}", "page": i % 10} for i in numbers) if payloads else ()
    return RecordBatch(ids, texts, unit_vectors(n, dims, seed), extra)


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The session's embedded PostgreSQL (with pgvector installed); stops at exit."""
    datadir = Path(tempfile.mkdtemp(prefix="vmg-pg-", dir="/tmp"))
    # atexit runs last-in first-out: registered before the server's own stop hook, the
    # folder goes after the server has stopped.
    atexit.register(shutil.rmtree, datadir, ignore_errors=True)
    dsn = embedded_dsn(datadir)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return dsn


@pytest.fixture
def state_dsn(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A state database of the test's own in the session's PostgreSQL, dropped afterwards;
    GUARD_STATE_DSN points at it, for `guard` subprocesses too."""
    name = f"state_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(pg_dsn, dbname=name)
    monkeypatch.setenv("GUARD_STATE_DSN", dsn)
    yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        register_vector(conn)
        yield conn


@pytest.fixture
def pg_schema(pg_conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A schema of the test's own, first on ``pg_conn``'s search path; dropped with its
    tables afterwards."""
    name = f"s_{uuid.uuid4().hex[:12]}"
    pg_conn.execute(f'CREATE SCHEMA "{name}"')
    pg_conn.execute(f'SET search_path TO "{name}", public')
    yield name
    pg_conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def qdrant_dir(tmp_path: Path) -> Iterator[Path]:
    memory = Path("/dev/shm")
    if not memory.is_dir():
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="vmg-q-", dir=memory))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def qdrant_url_uri(collection: str, **params: str) -> str:
    """A ``qdrant+http(s)`` URI on the server at ``QDRANT_URL`` (key from QDRANT_API_KEY)."""
    server = urlsplit(os.environ["QDRANT_URL"])
    if os.environ.get("QDRANT_API_KEY"):
        params.setdefault("api_key_env", "QDRANT_API_KEY")
    query = f"?{urlencode(params)}" if params else ""
    return f"qdrant+{server.scheme}://{server.netloc}/{collection}{query}"


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def new_store_uri(
    store_kind: str, request: pytest.FixtureRequest, qdrant_dir: Path
) -> Iterator[Callable[..., str]]:
    """``new_store_uri(**options)``: the URI of a fresh store of this test's kind, with a
    unique name; whatever it names is dropped after the test."""
    made: list[str] = []

    def make(**params: str) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        if store_kind == "qdrant-local":
            query = urlencode({"collection": name, **params})
            uri = f"qdrant+local:{qdrant_dir}?{query}"
        elif store_kind == "qdrant-url":
            uri = qdrant_url_uri(name, **params)
        else:
            dsn: str = request.getfixturevalue("pg_dsn")
            sep = "&" if "?" in dsn else "?"
            uri = f"{dsn}{sep}{urlencode({'table': name, **params})}"
        made.append(uri)
        return uri

    yield make
    for uri in made:
        store = open_store(uri)
        store.drop()
        store.close()


@pytest.fixture
def f16_store(new_store_uri: Callable[..., str], gguf_f16: Path, corpus: list[str]) -> str:
    """120 short paragraphs embedded by llama.cpp F16 in a store of the test's kind: the
    whole store is the sample."""
    texts = [text for text in corpus if len(text) < 600][:120]
    engine = open_engine(f"llamacpp:{gguf_f16}")
    vectors = engine.embed(texts)
    engine.close()
    return write_store(new_store_uri(), texts, vectors)


def write_store(uri: str, texts: Sequence[str], vectors: np.ndarray) -> str:
    """A new cosine store at ``uri`` holding ``texts`` (ids 0, 1, ...) with ``vectors``."""
    store = open_store(uri)
    try:
        store.create(dims=vectors.shape[1], distance="cosine")
        store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), vectors))
    finally:
        store.close()
    return uri
