"""Re-indexing one collection of a shared table (LangChain PGVector's ``collection=``) or
one tenant of a shared Qdrant collection (``filter=``), through the real ``guard``
commands: the selected rows carry the candidate's vectors after cutover, every other row
is the same as before (written by another engine, still approved by it), a row written
to another collection between run and cutover survives cutover, and rollback restores
the table or collection as it was."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from qdrant_client import QdrantClient, models
from test_cli import assert_one_line_error, guard
from test_store_options import LANGCHAIN, pg_uri

from guard.engines import open_engine

A_ROWS, B_ROWS = 12, 40  # B: enough for `guard check` to approve with a bound


def _embed(engine_uri: str, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
    engine = open_engine(engine_uri)
    try:
        return engine.embed(texts)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def engines(gguf_f16: Path, gguf_q4_0: Path, static_model_dir: Path) -> dict[str, str]:
    """A's engine, B's engine (another space entirely) and the candidate for A."""
    return {
        "a": f"llamacpp:{gguf_q4_0}",
        "b": f"model2vec:{static_model_dir}",
        "candidate": f"llamacpp:{gguf_f16}",
    }


@pytest.fixture
def texts(corpus: list[str]) -> dict[str, list[str]]:
    return {"a": corpus[:A_ROWS], "b": corpus[A_ROWS : A_ROWS + B_ROWS]}


def _ok(*args: str) -> str:
    result = guard(*args)
    assert result.returncode == 0, (args[:3], result.stderr)
    return result.stdout


def _plan_run_verify(store: str, candidate: str) -> str:
    out = _ok("reindex", "plan", "--store", store, "--candidate", candidate, "--batch-size",
              "5", "--format", "json")  # fmt: skip
    job_id = str(json.loads(out)["job_id"])
    _ok("reindex", "run", job_id)
    _ok("reindex", "verify", job_id)
    return job_id


def _verify_fails_on_others(job_id: str) -> None:
    """A row written to another collection after run: verify says the target lags."""
    result = guard("reindex", "verify", job_id)
    assert result.returncode == 1, result.stderr
    assert "1 rows outside the selection differ" in result.stdout + result.stderr


def _cosines(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- PostgreSQL: LangChain PGVector, collection= -------------------------------------------

ROW_MD5 = (
    "SELECT id, md5(ROW(id, collection_id, embedding, document, cmetadata)::text)"
    " FROM langchain_pg_embedding"
)


def _md5s(conn: psycopg.Connection[Any], collection: uuid.UUID | None = None) -> dict[str, str]:
    """Each row's md5 over the columns LangChain wrote (the re-index adds two columns)."""
    if collection is None:
        return dict(conn.execute(ROW_MD5).fetchall())
    found = conn.execute(ROW_MD5 + " WHERE collection_id = %s", (collection,)).fetchall()
    return dict(found)


def _langchain_insert(
    conn: psycopg.Connection[Any], collection: uuid.UUID, key: str, text: str, vector: Any
) -> None:
    conn.execute(
        "INSERT INTO langchain_pg_embedding VALUES (%s, %s, %s, %s, %s)",
        (key, collection, vector, text, json.dumps({"key": key})),
    )


@pytest.fixture
def langchain(
    pg_conn: psycopg.Connection[Any],
    pg_schema: str,
    engines: dict[str, str],
    texts: dict[str, list[str]],
) -> dict[str, uuid.UUID]:
    """LangChain PGVector's two tables with collection ``a`` written by A's engine and
    ``b`` by B's engine; the collections' uuids."""
    pg_conn.execute(LANGCHAIN)
    uuids = {name: uuid.uuid4() for name in ("a", "b")}
    for name, key in uuids.items():
        pg_conn.execute("INSERT INTO langchain_pg_collection VALUES (%s, %s, '{}')", (key, name))
        vectors = _embed(engines[name], texts[name])
        for i, (text, vector) in enumerate(zip(texts[name], vectors, strict=True)):
            _langchain_insert(pg_conn, key, f"{name}-{i:03d}", text, vector)
    return uuids


def test_pgvector_reindex_of_one_collection_leaves_the_other_as_it_was(
    pg_dsn: str,
    pg_conn: psycopg.Connection[Any],
    pg_schema: str,
    langchain: dict[str, uuid.UUID],
    engines: dict[str, str],
    texts: dict[str, list[str]],
    state_dsn: str,
) -> None:
    """collection=a of a two-collection table: afterwards a's rows carry the candidate's
    vectors, b's rows are byte-identical, rows written to b between run and cutover are
    live after cutover (copied by catch-up, or else by cutover), b still approves with
    b's engine, and rollback restores the table, keeping a row written to b after
    cutover."""
    conn = pg_conn
    table = "langchain_pg_embedding"
    a_before, b_before = _md5s(conn, langchain["a"]), _md5s(conn, langchain["b"])

    job_id = _plan_run_verify(
        pg_uri(pg_dsn, pg_schema, table, collection="a"), engines["candidate"]
    )
    for key in ("b-late", "b-later"):  # caught up by catch-up, then by cutover itself
        late = f"a note {key} written to collection b while a was being re-indexed"
        _langchain_insert(conn, langchain["b"], key, late, _embed(engines["b"], [late])[0])
        _verify_fails_on_others(job_id)
        if key == "b-late":
            assert (
                json.loads(_ok("reindex", "catch-up", job_id, "--format", "json"))["others_copied"]
                == 1
            )
            _ok("reindex", "verify", job_id)
    b_before = _md5s(conn, langchain["b"])
    table_before = _md5s(conn)
    _ok("reindex", "cutover", job_id)

    assert b_before == _md5s(conn, langchain["b"])  # b-late and b-later included
    a_after = _md5s(conn, langchain["a"])
    assert sorted(a_after) == sorted(a_before)
    assert all(a_after[key] != a_before[key] for key in a_before)
    stored = conn.execute(
        "SELECT embedding FROM langchain_pg_embedding WHERE collection_id = %s ORDER BY id",
        (langchain["a"],),
    ).fetchall()
    fresh = _embed(engines["candidate"], texts["a"])
    assert _cosines(np.stack([row[0] for row in stored]), fresh).min() > 0.999
    b_uri = pg_uri(pg_dsn, pg_schema, table, collection="b")
    result = guard("check", "--store", b_uri, "--candidate", engines["b"], "--sample", "200")
    assert result.returncode == 0, result.stdout + result.stderr

    after = "a note written to collection b after the cutover"
    _langchain_insert(conn, langchain["b"], "b-after", after, _embed(engines["b"], [after])[0])
    written = _md5s(conn, langchain["b"])["b-after"]
    _ok("reindex", "rollback", job_id)
    assert {**table_before, "b-after": written} == _md5s(conn)


# --- Qdrant: one tenant of a shared collection, filter= ------------------------------------


def _points(folder: Path, collection: str) -> dict[Any, tuple[dict[str, Any], list[float]]]:
    """Every point's (payload, vector), read with a client closed again at once (local
    mode locks the folder for the guard's processes)."""
    client = QdrantClient(path=str(folder))
    try:
        points, _ = client.scroll(collection, limit=1000, with_payload=True, with_vectors=True)
    finally:
        client.close()
    return {p.id: (p.payload or {}, p.vector) for p in points}  # type: ignore[misc]


def _upsert(folder: Path, collection: str, points: list[models.PointStruct]) -> None:
    client = QdrantClient(path=str(folder))
    try:
        client.upsert(collection, points)
    finally:
        client.close()


def _same(
    before: dict[Any, tuple[dict[str, Any], list[float]]],
    after: dict[Any, tuple[dict[str, Any], list[float]]],
) -> None:
    """Same ids and payloads; vectors equal up to the float32 rounding of Qdrant's cosine
    re-normalisation on write."""
    assert sorted(before) == sorted(after)
    for key, (payload, vector) in before.items():
        assert payload == after[key][0]
        np.testing.assert_allclose(after[key][1], vector, rtol=1e-6, atol=0)


@pytest.fixture
def tenants(
    qdrant_dir: Path, engines: dict[str, str], texts: dict[str, list[str]]
) -> Iterator[Path]:
    """Collection ``docs``: tenant a's points written by A's engine, tenant b's by B's."""
    client = QdrantClient(path=str(qdrant_dir))
    client.create_collection(
        "docs", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
    )
    client.close()
    points = []
    for offset, name in ((0, "a"), (1000, "b")):
        vectors = _embed(engines[name], texts[name])
        points += [
            models.PointStruct(
                id=offset + i, vector=vector.tolist(), payload={"text": text, "tenant": name}
            )
            for i, (text, vector) in enumerate(zip(texts[name], vectors, strict=True))
        ]
    _upsert(qdrant_dir, "docs", points)
    yield qdrant_dir


def test_qdrant_reindex_of_one_tenant_leaves_the_other_as_it_was(
    tenants: Path, engines: dict[str, str], texts: dict[str, list[str]], state_dsn: str
) -> None:
    """filter=tenant:a of a shared collection: through the alias, a's points carry the
    candidate's vectors and b's are the same points as before (plus one written to b
    between run and cutover); b still approves with b's engine; rollback points the
    alias back at the collection as it was, plus a point written to b after cutover."""
    folder = tenants
    store = f"qdrant+local:{folder}?collection=docs&filter=tenant:a"
    before = _points(folder, "docs")
    job_id = _plan_run_verify(store, engines["candidate"])

    late = "a note written for tenant b while tenant a was being re-indexed"
    late_point = models.PointStruct(
        id=5000,
        vector=_embed(engines["b"], [late])[0].tolist(),
        payload={"text": late, "tenant": "b"},
    )
    _upsert(folder, "docs", [late_point])
    before = _points(folder, "docs")
    _verify_fails_on_others(job_id)
    _ok("reindex", "cutover", job_id, "--alias", "docs_live")

    live = _points(folder, "docs_live")
    b_ids = [key for key, (payload, _) in before.items() if payload["tenant"] == "b"]
    _same({k: before[k] for k in b_ids}, {k: v for k, v in live.items() if k in b_ids})
    a_ids = sorted(key for key, (payload, _) in before.items() if payload["tenant"] == "a")
    assert sorted(set(live) - set(b_ids)) == a_ids
    fresh = _embed(engines["candidate"], texts["a"])
    assert _cosines(np.stack([live[k][1] for k in a_ids]), fresh).min() > 0.999
    b_uri = f"qdrant+local:{folder}?collection=docs_live&filter=tenant:b"
    result = guard("check", "--store", b_uri, "--candidate", engines["b"], "--sample", "200")
    assert result.returncode == 0, result.stdout + result.stderr

    after = "a note written for tenant b after the cutover"
    after_point = models.PointStruct(
        id=6000,
        vector=_embed(engines["b"], [after])[0].tolist(),
        payload={"text": after, "tenant": "b"},
    )
    _upsert(folder, "docs_live", [after_point])
    written = _points(folder, "docs_live")[6000]
    _ok("reindex", "rollback", job_id)
    _same({**before, 6000: written}, _points(folder, "docs_live"))


def test_reindex_of_one_collection_refuses_a_candidate_of_another_size(
    qdrant_dir: Path, engines: dict[str, str], state_dsn: str
) -> None:
    """The other tenants keep their vectors, so a candidate must make vectors of their
    size: one line, exit 2, no job."""
    client = QdrantClient(path=str(qdrant_dir))
    client.create_collection(
        "small", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
    )
    client.upsert(
        "small",
        [
            models.PointStruct(
                id=i, vector=[1.0, i, 0.5, 0.0], payload={"text": f"t {i}", "tenant": t}
            )
            for i, t in enumerate("aabb")
        ],
    )
    client.close()
    store = f"qdrant+local:{qdrant_dir}?collection=small&filter=tenant:a"
    result = guard("reindex", "plan", "--store", store, "--candidate", engines["candidate"])
    assert "re-indexed by an engine of the same size" in assert_one_line_error(result)
