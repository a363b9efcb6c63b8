"""`guard check` on stores large enough that it stops before reading them whole.

5,000 records on each store kind, with the default 2,000-record maximum, so the
sequential rounds decide. The stored vectors are llama.cpp F16 embeddings of short
documentation chunks; in the mixed stores 30% of them were written by another engine
(the same model pooling the CLS token instead of the mean), at the highest ids, at the
lowest ids, or scattered. The candidate is always the F16 engine itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from guard.checking.report import CheckReport
from guard.checking.run import run_check
from guard.core.cosines import rowwise_cosine
from guard.core.policy import Thresholds
from guard.engines import open_engine
from guard.records import RecordBatch, Vectors
from guard.stores import open_store

RECORDS = 5_000
FOREIGN = 1_500  # 30%
THRESHOLDS = Thresholds()  # max_sample 2,000: the check cannot read the store whole


@pytest.fixture(scope="module")
def chunks(corpus: list[str]) -> list[str]:
    """5,000 distinct chunks of 12 words (stride 8), as a chunking pipeline makes them."""
    seen: dict[str, None] = {}
    for paragraph in corpus:
        words = paragraph.split()
        for start in range(0, len(words), 8):
            chunk = " ".join(words[start : start + 12])
            if len(chunk.split()) >= 6:
                seen.setdefault(chunk)
    texts = list(seen)[:RECORDS]
    assert len(texts) == RECORDS
    return texts


@pytest.fixture(scope="module")
def own_vectors(gguf_f16: Path, chunks: list[str]) -> Vectors:
    engine = open_engine(f"llamacpp:{gguf_f16}")
    try:
        return engine.embed(chunks)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def foreign_vectors(gguf_f16: Path, chunks: list[str]) -> Vectors:
    """Every chunk as the other engine wrote it (CLS pooling); a store takes 30% of them."""
    engine = open_engine(f"llamacpp:{gguf_f16}?pooling=cls")
    try:
        return engine.embed(chunks)
    finally:
        engine.close()


def foreign_rows(placement: str) -> np.ndarray:
    return {
        "newest": np.arange(RECORDS - FOREIGN, RECORDS),
        "oldest": np.arange(FOREIGN),
        "scattered": np.sort(np.random.default_rng(4).choice(RECORDS, FOREIGN, replace=False)),
    }[placement]


@pytest.fixture
def fill(new_store_uri: Callable[..., str], chunks: list[str]) -> Callable[[Vectors], str]:
    def make(vectors: Vectors) -> str:
        uri = new_store_uri()
        store = open_store(uri)
        store.create(dims=vectors.shape[1], distance="cosine")
        for start in range(0, RECORDS, 1000):
            rows = range(start, start + 1000)
            store.upsert(
                RecordBatch(
                    tuple(rows), tuple(chunks[i] for i in rows), vectors[start : start + 1000]
                )
            )
        store.close()
        return uri

    return make


def check(uri: str, gguf: Path, seed: int = 1) -> CheckReport:
    store, engine = open_store(uri), open_engine(f"llamacpp:{gguf}")
    try:
        return run_check(store, engine, thresholds=THRESHOLDS, seed=seed)
    finally:
        store.close()
        engine.close()


def test_the_engine_that_wrote_the_store_is_approved_before_a_census(
    fill: Callable[[Vectors], str], own_vectors: Vectors, gguf_f16: Path
) -> None:
    report = check(fill(own_vectors), gguf_f16)

    assert (report.verdict, report.exit_code) == ("approve", 0)
    assert report.store["count"] == RECORDS
    assert 0 < report.sample["size"] <= 1000
    assert report.sample["rounds"] > 1
    assert report.sample["method"] in ("uniform_id_list", "uniform_ids")
    assert report.bound is not None
    assert report.bound["share_below_threshold_upper"] <= THRESHOLDS.allowed_share


@pytest.mark.parametrize(
    ("placement", "where"),
    [("newest", "the newest"), ("oldest", "the oldest"), ("scattered", "scattered among")],
)
def test_a_store_partly_written_by_another_engine_is_named_mixed(
    fill: Callable[[Vectors], str],
    own_vectors: Vectors,
    foreign_vectors: Vectors,
    gguf_f16: Path,
    placement: str,
    where: str,
) -> None:
    """Wherever the foreign 30% sit, the verdict is reindex with mixed_store, and the
    bound the report states holds for the store's true share below the threshold."""
    rows = foreign_rows(placement)
    stored = own_vectors.copy()
    stored[rows] = foreign_vectors[rows]
    cosines, _ = rowwise_cosine(stored, own_vectors)
    true_share = float(np.mean(cosines < THRESHOLDS.min_cosine))

    report = check(fill(stored), gguf_f16)

    assert (report.verdict, report.exit_code) == ("reindex", 1)
    mixed = [f for f in report.diagnosis if f["cause"] == "mixed_store"]
    assert len(mixed) == 1, report.diagnosis
    assert where in mixed[0]["evidence"]
    assert report.sample["size"] < RECORDS
    assert report.bound is not None
    assert 0.29 <= true_share <= 0.31
    assert (
        report.bound["share_below_threshold_lower"]
        <= true_share
        <= report.bound["share_below_threshold_upper"]
    )
