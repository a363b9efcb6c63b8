"""The embedding cache: real llama.cpp engines, a real SQLite file, real subprocesses.

A cached vector is only ever served for the exact fingerprint and text that made it;
a damaged file or row is detected and never served; several processes share one file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from test_cli import guard

from guard.cache import CachedEngine, EmbeddingCache, cacheable
from guard.checking.run import run_check
from guard.comparing.run import run_compare
from guard.core.bridge import LinearMap
from guard.core.policy import Thresholds
from guard.engines import EmbeddingEngine, bridgefile, open_engine
from guard.hashing import fingerprint_sha256, text_sha256
from guard.records import RecordBatch, Vectors
from guard.stores import VectorStore, open_store


@pytest.fixture(scope="module")
def texts(corpus: list[str]) -> list[str]:
    return corpus[::23][:60]


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[EmbeddingCache]:
    made = EmbeddingCache(tmp_path / "cache" / "embeddings.sqlite")
    yield made
    made.close()


def _fresh(uri: str, texts: list[str]) -> Vectors:
    engine = open_engine(uri)
    try:
        return engine.embed(texts)
    finally:
        engine.close()


def assert_same_vectors(expected: Vectors, actual: Vectors) -> None:
    """Row for row the same vectors, up to the rounding of another batch composition
    (llama.cpp packs several texts per decode; a re-embedded miss sits in another pack)."""
    assert expected.shape == actual.shape
    cosines = np.sum(expected * actual, axis=1) / (
        np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    )
    assert float(cosines.min()) > 0.9999
    assert np.allclose(np.linalg.norm(expected, axis=1), np.linalg.norm(actual, axis=1), rtol=1e-3)


def _through(cache: EmbeddingCache, uri: str, texts: list[str]) -> tuple[Vectors, int, int]:
    """Embed through the cache: the vectors, hits and misses."""
    engine = CachedEngine(open_engine(uri), cache)
    try:
        vectors = engine.embed(texts)
        return vectors, engine.hits, engine.misses
    finally:
        engine.close()


def test_a_rerun_of_the_same_check_hits_the_cache_with_identical_figures(
    gguf_f16: Path, qdrant_dir: Path, texts: list[str], cache: EmbeddingCache
) -> None:
    uri = f"llamacpp:{gguf_f16}"
    store_uri = f"qdrant+local:{qdrant_dir}?collection=cached"
    store = open_store(store_uri)
    store.create(dims=384, distance="cosine")
    store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), _fresh(uri, texts)))
    first, rerun = _checked_twice(store, uri, cache)
    embedded = first["cache"]["misses"]  # type: ignore[index]
    assert first["cache"] == {"enabled": True, "hits": 0, "misses": embedded}
    assert embedded >= 20
    assert rerun["cache"] == {"enabled": True, "hits": embedded, "misses": 0}
    for name in ("verdict", "sample", "metrics", "bound", "diagnosis", "candidate"):
        assert first[name] == rerun[name], name


def test_the_diagnosis_alternatives_count_into_the_report_and_hit_on_a_rerun(
    gguf_f16: Path, qdrant_dir: Path, texts: list[str], cache: EmbeddingCache
) -> None:
    """A store written with a task prefix: the prefix alternative the diagnosis embeds
    goes through the cache too, and the report counts it."""
    uri = f"llamacpp:{gguf_f16}"
    store = open_store(f"qdrant+local:{qdrant_dir}?collection=prefixed")
    store.create(dims=384, distance="cosine")
    written = _fresh(f"{uri}?prefix={quote('query: ')}", texts)
    store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), written))
    first, rerun = _checked_twice(store, uri, cache)
    assert [f["cause"] for f in first["diagnosis"]] == ["prefix_mismatch"]  # type: ignore[attr-defined]
    embedded = first["cache"]["misses"]  # type: ignore[index]
    assert embedded > first["sample"]["size"]  # type: ignore[index]
    assert rerun["cache"] == {"enabled": True, "hits": embedded, "misses": 0}
    assert first["diagnosis"] == rerun["diagnosis"]


def test_compare_keeps_its_timed_vectors_and_reads_the_rest_through_the_cache(
    gguf_f16: Path, qdrant_dir: Path, texts: list[str], cache: EmbeddingCache
) -> None:
    """The timed pass embeds with the bare engine (speed is the engine's), then its
    vectors go into the cache; the check's later rounds read through it."""
    uri = f"llamacpp:{gguf_f16}"
    store = open_store(f"qdrant+local:{qdrant_dir}?collection=compared")
    store.create(dims=384, distance="cosine")
    store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), _fresh(uri, texts)))
    thresholds = Thresholds(initial_sample=20, max_sample=60)
    try:
        first, rerun = (
            run_compare(store, [uri], thresholds=thresholds, seed=3, cache=cache).candidates[0]
            for _ in range(2)
        )
        timed = store.sample(60, seed=3).with_text().texts[:20]
    finally:
        store.close()
    assert first.check is not None and rerun.check is not None
    engine = open_engine(uri)
    key = fingerprint_sha256(engine.fingerprint())
    engine.close()
    assert len(timed) == len(cache.get_many(key, [text_sha256(t or "") for t in timed]))
    embedded = first.check.cache["misses"]  # type: ignore[index]
    assert embedded > 0
    assert rerun.check.cache == {"enabled": True, "hits": embedded, "misses": 0}
    assert (first.verdict, first.check.metrics) == (rerun.verdict, rerun.check.metrics)


def _bridge(tmp_path: Path) -> str:
    path = bridgefile.save(
        LinearMap("affine", np.eye(384), np.zeros(384)),
        tmp_path / "identity.npz",
        fitted_between={},
        validation={},
    )
    return f"bridge={path}"


@pytest.mark.parametrize(
    "change",
    ["max_tokens=64", "prefix=query: ", "normalize=true", "pooling=cls", "q8_0", "bridge"],
)
def test_another_setting_model_file_or_bridge_never_hits(
    change: str,
    gguf_f16: Path,
    gguf_q8_0: Path,
    texts: list[str],
    cache: EmbeddingCache,
    tmp_path: Path,
) -> None:
    base = f"llamacpp:{gguf_f16}"
    if change == "q8_0":
        other = f"llamacpp:{gguf_q8_0}"
    elif change == "bridge":
        other = f"{base}?{_bridge(tmp_path)}"
    else:
        name, value = change.split("=")
        other = f"{base}?{name}={quote(value)}"
    _, _, filled = _through(cache, base, texts)
    assert filled == len(texts)
    vectors, hits, misses = _through(cache, other, texts)
    assert (hits, misses) == (0, len(texts))
    assert np.array_equal(_fresh(other, texts), vectors)
    again, hits, _ = _through(cache, other, texts)
    assert hits == len(texts) and np.array_equal(vectors, again)


def _filled(path: Path, uri: str, texts: list[str]) -> Vectors:
    cache = EmbeddingCache(path)
    try:
        vectors, _, _ = _through(cache, uri, texts)
    finally:
        cache.close()  # the last connection folds the WAL into the file
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return vectors


@pytest.mark.parametrize("damage", ["overwrite_middle", "truncate"])
def test_a_corrupted_or_truncated_file_is_detected_rebuilt_and_never_served(
    damage: str, gguf_f16: Path, corpus: list[str], tmp_path: Path
) -> None:
    uri = f"llamacpp:{gguf_f16}"
    texts = corpus[:200]
    path = tmp_path / "embeddings.sqlite"
    fresh = _filled(path, uri, texts)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        if damage == "truncate":
            handle.truncate(size // 2)
        else:
            handle.seek(size // 2)
            handle.write(os.urandom(4096 * 3))
    cache = EmbeddingCache(path)
    try:
        served, hits, misses = _through(cache, uri, texts)
        assert_same_vectors(fresh, served)
        assert misses > 0
        again, hits, misses = _through(cache, uri, texts)
        assert (hits, misses) == (len(texts), 0) and np.array_equal(served, again)
    finally:
        cache.close()
    if damage == "truncate":
        assert [p.name for p in tmp_path.glob("embeddings.sqlite.corrupt-*")]


def test_a_row_with_a_flipped_byte_is_not_served(
    gguf_f16: Path, texts: list[str], tmp_path: Path
) -> None:
    uri = f"llamacpp:{gguf_f16}"
    path = tmp_path / "embeddings.sqlite"
    fresh = _filled(path, uri, texts)
    with sqlite3.connect(path) as conn:
        (blob,) = conn.execute(
            "SELECT vector FROM vectors WHERE text = ?", (text_sha256(texts[5]),)
        ).fetchone()
        flipped = bytearray(blob)
        flipped[103] ^= 0x40  # the exponent of one coordinate: a vector far off
        conn.execute(
            "UPDATE vectors SET vector = ? WHERE text = ?", (bytes(flipped), text_sha256(texts[5]))
        )
    conn.close()
    cache = EmbeddingCache(path)
    try:
        served, hits, misses = _through(cache, uri, texts)
    finally:
        cache.close()
    assert (hits, misses) == (len(texts) - 1, 1)
    assert np.array_equal(np.delete(fresh, 5, 0), np.delete(served, 5, 0))
    assert_same_vectors(fresh[5:6], served[5:6])


ROWS_PER_PROCESS = 600


def _fill_from_process(path: str, worker: int) -> int:
    """Rows 0..N of this worker plus a shared overlap, written in small transactions."""
    cache = EmbeddingCache(Path(path))
    try:
        for start in range(0, ROWS_PER_PROCESS, 25):
            items = [
                (f"w{worker}-{i}", np.full(16, worker * 10_000 + i, dtype=np.float32))
                for i in range(start, start + 25)
            ]
            items += [(f"shared-{start}", np.full(16, -start, dtype=np.float32))]
            cache.put_many("fp", items)
            cache.get_many("fp", [key for key, _ in items])
    finally:
        cache.close()
    return worker


def test_two_processes_filling_one_cache_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "embeddings.sqlite")
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        done = pool.starmap(_fill_from_process, [(path, 1), (path, 2)])
    assert done == [1, 2]
    cache = EmbeddingCache(Path(path))
    try:
        keys = [f"w{w}-{i}" for w in (1, 2) for i in range(ROWS_PER_PROCESS)]
        keys += [f"shared-{start}" for start in range(0, ROWS_PER_PROCESS, 25)]
        found = cache.get_many("fp", keys)
        assert sorted(found) == sorted(keys)
        assert float(found["w2-599"][0]) == 20_599.0
        with sqlite3.connect(path) as conn:
            (rows, total) = conn.execute("SELECT count(*), sum(bytes) FROM vectors").fetchone()
        conn.close()
        assert (rows, total) == (len(keys), cache.size())
    finally:
        cache.close()


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used_first(
    tmp_path: Path,
) -> None:
    cache = EmbeddingCache(tmp_path / "embeddings.sqlite", max_bytes=10_000)
    try:
        vector = np.ones(256, dtype=np.float32)  # about 1,200 bytes a row
        for i in range(8):
            cache.put_many("fp", [(f"old-{i}", vector)])
        cache.get_many("fp", ["old-0"])  # used again: now the most recent of the old rows
        cache.put_many("fp", [(f"new-{i}", vector) for i in range(6)])
        held = set(cache.get_many("fp", [f"old-{i}" for i in range(8)]))
        assert cache.size() <= 10_000
        assert "old-0" in held
        kept = sorted(int(key.split("-")[1]) for key in held - {"old-0"})
        assert 0 < len(kept) < 7
        assert kept == list(range(8 - len(kept), 8))  # the oldest went first
        assert len(cache.get_many("fp", [f"new-{i}" for i in range(6)])) == 6
    finally:
        cache.close()


def test_no_cache_embeds_everything_and_the_report_says_so(
    gguf_f16: Path, qdrant_dir: Path, texts: list[str], tmp_path: Path
) -> None:
    uri = f"llamacpp:{gguf_f16}"
    store_uri = f"qdrant+local:{qdrant_dir}?collection=nocache"
    store = open_store(store_uri)
    store.create(dims=384, distance="cosine")
    store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), _fresh(uri, texts)))
    store.close()
    env = {"GUARD_HOME": str(tmp_path / "home")}
    args = ("check", "--store", store_uri, "--candidate", uri, "--format", "json")
    first = json.loads(guard(*args, env=env).stdout)
    cached = json.loads(guard(*args, env=env).stdout)
    bare = json.loads(guard(*args, "--no-cache", env=env).stdout)
    n = first["sample"]["size"]
    assert first["cache"] == {"enabled": True, "hits": 0, "misses": n}
    assert cached["cache"] == {"enabled": True, "hits": n, "misses": 0}
    assert bare["cache"] == {"enabled": False, "hits": 0, "misses": 0}
    assert first["metrics"] == cached["metrics"] == bare["metrics"]
    config = tmp_path / "guard.toml"
    config.write_text("[cache]\nenabled = false\n", encoding="utf-8")
    off = json.loads(guard(*args, "--config", str(config), env=env).stdout)
    assert off["cache"]["enabled"] is False


def test_the_key_is_the_canonical_fingerprint_and_only_content_hashed_models_are_cached() -> None:
    """Key order does not matter; a served model name (HTTP engines) is not a content hash."""
    local = {"model": {"sha256": "ab", "file": "m.gguf"}, "settings": {"prefix": "", "a": 1}}
    reordered = {"settings": {"a": 1, "prefix": ""}, "model": {"file": "m.gguf", "sha256": "ab"}}
    assert fingerprint_sha256(local) == fingerprint_sha256(reordered)
    assert fingerprint_sha256(local) != fingerprint_sha256({**local, "settings": {"prefix": "q: "}})
    assert cacheable(local)
    assert not cacheable({"model": {"requested": "m", "served": "m"}, "settings": {}})


def _checked_twice(
    store: VectorStore, uri: str, cache: EmbeddingCache
) -> tuple[dict[str, object], dict[str, object]]:
    """The same check twice, each with a freshly opened engine, through ``cache``;
    the store is closed afterwards."""
    thresholds = Thresholds(initial_sample=20, max_sample=60)

    def check() -> dict[str, object]:
        engine: EmbeddingEngine = open_engine(uri)
        try:
            return run_check(store, engine, thresholds=thresholds, seed=3, cache=cache).to_dict()
        finally:
            engine.close()

    try:
        return check(), check()
    finally:
        store.close()


_RERUN = """
import json, sys
import guard
report = guard.check(sys.argv[1], sys.argv[2], baseline=sys.argv[2])
loaded = sorted(m for m in ("sentence_transformers", "torch", "transformers") if m in sys.modules)
print(json.dumps({"report": report.to_dict(), "loaded": loaded}))
"""


def test_a_fully_cached_rerun_loads_no_model_and_reaches_the_same_verdict(
    st_model_dir: Path, qdrant_dir: Path, texts: list[str], tmp_path: Path
) -> None:
    """The fingerprint, token counts and self-check runs come from what the first run
    kept: the rerun's process never imports the model's libraries."""
    uri = f"st:{st_model_dir}"
    store_uri = f"qdrant+local:{qdrant_dir}?collection=st-cached"
    store = open_store(store_uri)
    store.create(dims=384, distance="cosine")
    store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), _fresh(uri, texts)))
    store.close()
    env = {**os.environ, "GUARD_HOME": str(tmp_path / "home")}
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _RERUN, store_uri, uri],
                capture_output=True, text=True, timeout=600, env=env, check=True,
            ).stdout.splitlines()[-1]  # the log lines go first
        )
        for _ in range(2)
    ]  # fmt: skip
    first, rerun = (run["report"] for run in runs)
    assert runs[0]["loaded"] == ["sentence_transformers", "torch", "transformers"]
    assert runs[1]["loaded"] == []
    assert rerun["cache"] == {"enabled": True, "hits": first["cache"]["misses"], "misses": 0}
    for name in ("verdict", "sample", "metrics", "bound", "diagnosis", "candidate", "baseline"):
        assert first[name] == rerun[name], name
