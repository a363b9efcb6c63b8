"""`guard check` end to end: real stores filled with known ground truth, real engines.

The store holds the demo corpus embedded one way; the candidate re-embeds it another.
Each test pins the verdict and the causes the guard must name for that pair.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_stores import write_store

from guard.checking.report import CheckReport
from guard.checking.run import effective_settings, run_check
from guard.core.cosines import compare
from guard.core.diagnosis import settings_to_try
from guard.core.evidence import Evidence
from guard.core.policy import Thresholds
from guard.engines import EmbeddingEngine, EngineOptions, open_engine
from guard.errors import StoreError
from guard.records import Vectors
from guard.stores import open_store

THRESHOLDS = Thresholds()


@pytest.fixture(scope="module")
def check_texts(short_texts: list[str], long_texts: list[str], corpus: list[str]) -> list[str]:
    """About 150 paragraphs, every one longer than 256 tokens among them."""
    longs = set(long_texts)
    shorts = [text for text in corpus if text not in longs][::17][:130]
    return shorts + long_texts[:20]


def _embed(uri: str, texts: Sequence[str]) -> Vectors:
    engine = open_engine(uri)
    try:
        return engine.embed(list(texts))
    finally:
        engine.close()


@pytest.fixture(scope="module")
def reference_vectors(st_model_dir: Path, check_texts: list[str]) -> Vectors:
    """What a sentence-transformers user stored: unit vectors, texts cut at 256 tokens."""
    return _embed(f"st:{st_model_dir}", check_texts)


@pytest.fixture(scope="module")
def f16_vectors(gguf_f16: Path, check_texts: list[str]) -> Vectors:
    return _embed(f"llamacpp:{gguf_f16}", check_texts)


@pytest.fixture
def fill(new_store_uri: Callable[..., str], check_texts: list[str]) -> Callable[[Vectors], str]:
    """A fresh store of the test's kind holding ``check_texts`` with the given vectors."""

    def make(vectors: Vectors) -> str:
        return write_store(new_store_uri(), check_texts, vectors)

    return make


def check(store_uri: str, candidate: EmbeddingEngine | str, **thresholds: Any) -> CheckReport:
    engine = open_engine(candidate) if isinstance(candidate, str) else candidate
    store = open_store(store_uri)
    try:
        return run_check(
            store, engine, thresholds=Thresholds(**thresholds) if thresholds else THRESHOLDS, seed=1
        )
    finally:
        store.close()
        engine.close()


def causes(report: CheckReport) -> list[str]:
    return [finding["cause"] for finding in report.diagnosis]


def test_the_engine_that_wrote_the_store_is_approved(
    fill: Callable[[Vectors], str], f16_vectors: Vectors, gguf_f16: Path
) -> None:
    report = check(fill(f16_vectors), f"llamacpp:{gguf_f16}")
    assert (report.verdict, report.exit_code, causes(report)) == ("approve", 0, [])
    assert report.metrics["overlap_at_k"]["value"] == 1.0
    # Sampled without repeats from 105 records, 96 of them decide exactly (hypergeometric):
    # the check stops there instead of reading the store whole.
    assert report.bound is not None
    assert (report.bound["method"], report.bound["n"], report.bound["failures"]) == (
        "hypergeometric",
        96,
        0,
    )
    assert report.bound["share_below_threshold_upper"] <= 0.01


def test_truncation_is_diagnosed_and_the_suggested_setting_approves(
    fill: Callable[[Vectors], str], reference_vectors: Vectors, gguf_f16: Path
) -> None:
    uri = fill(reference_vectors)
    report = check(uri, f"llamacpp:{gguf_f16}")
    assert (report.verdict, report.exit_code, causes(report)) == (
        "fix_config",
        3,
        ["truncation_mismatch"],
    )
    finding = report.diagnosis[0]
    assert "max_tokens=256" in finding["suggestion"]
    # The guard re-ran the mismatching records with the suggested setting: all matched.
    remeasured = re.search(r"measured with max_tokens=256: (\d+) of (\d+) ", finding["evidence"])
    assert remeasured is not None and remeasured[1] == remeasured[2]

    fixed = check(uri, f"llamacpp:{gguf_f16}?max_tokens=256")
    assert (fixed.verdict, causes(fixed)) == ("approve", [])
    assert fixed.metrics["cosine"]["min"] >= 0.99999


def test_q4_0_needs_a_reindex(
    fill: Callable[[Vectors], str], reference_vectors: Vectors, gguf_q4_0: Path
) -> None:
    report = check(fill(reference_vectors), f"llamacpp:{gguf_q4_0}?max_tokens=256")
    assert (report.verdict, report.exit_code) == ("reindex", 1)
    assert report.bound is not None
    assert report.bound["share_below_threshold_lower"] > THRESHOLDS.allowed_share


def test_a_rotated_store_is_a_different_space(
    fill: Callable[[Vectors], str], f16_vectors: Vectors, gguf_f16: Path
) -> None:
    """A random orthogonal rotation keeps norms and neighbours but not directions, as a
    dropped projection layer does."""
    rng = np.random.default_rng(3)
    rotation, _ = np.linalg.qr(rng.normal(size=(f16_vectors.shape[1],) * 2))
    rotated = (f16_vectors @ rotation).astype(np.float32)
    report = check(fill(rotated), f"llamacpp:{gguf_f16}")
    assert (report.verdict, report.exit_code, causes(report)) == (
        "reindex",
        1,
        ["different_space"],
    )


class DamagedEngine:
    """A real llama.cpp engine whose output is damaged on purpose, since no real engine
    breaks on demand: ``damage(texts, vectors)`` returns the vectors to hand out."""

    def __init__(self, inner: EmbeddingEngine, damage: Callable[[Sequence[str], Vectors], Vectors]):
        self.inner = inner
        self.damage = damage
        self.uri = inner.uri
        self.options: EngineOptions = inner.options

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self.damage(texts, self.inner.embed(texts))

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def with_options(self, **changes: Any) -> DamagedEngine:
        return DamagedEngine(self.inner.with_options(**changes), self.damage)

    def close(self) -> None:
        self.inner.close()


def nan_for_some(texts: Sequence[str], vectors: Vectors) -> Vectors:
    damaged = vectors.copy()
    for i, text in enumerate(texts):
        if len(text) % 7 == 0:
            damaged[i] = np.nan
    return damaged


def one_vector_for_two_texts(texts: Sequence[str], vectors: Vectors) -> Vectors:
    """Texts that share their first word get the vector of the first such text."""
    damaged = vectors.copy()
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        key = text.split()[0] if text.split() else ""
        damaged[i] = vectors[first.setdefault(key, i)]
    return damaged


def noise_on_every_call(texts: Sequence[str], vectors: Vectors) -> Vectors:
    """Another few tenths of a percent off each vector on every call (cosine ~0.995)."""
    noise = np.random.default_rng().normal(scale=0.005, size=vectors.shape)
    return (vectors + noise).astype(np.float32)


def batch_leaks_into_each_vector(texts: Sequence[str], vectors: Vectors) -> Vectors:
    """A text's vector takes a tenth of its batch's mean, as attention leaking across
    padded inputs would: alone it is the real vector."""
    return (vectors + 0.1 * vectors.mean(axis=0)).astype(np.float32)


@pytest.mark.parametrize(
    ("damage", "cause"),
    [
        (nan_for_some, "nan_output"),
        (one_vector_for_two_texts, "collisions"),
        (noise_on_every_call, "nondeterministic"),
        (batch_leaks_into_each_vector, "batch_inconsistent"),
    ],
)
def test_a_broken_candidate_is_rejected(
    fill: Callable[[Vectors], str],
    f16_vectors: Vectors,
    gguf_f16: Path,
    damage: Callable[[Sequence[str], Vectors], Vectors],
    cause: str,
) -> None:
    engine = DamagedEngine(open_engine(f"llamacpp:{gguf_f16}"), damage)
    report = check(fill(f16_vectors), engine)
    assert (report.verdict, report.exit_code) == ("reject_candidate", 4)
    assert cause in causes(report)


def test_a_sound_candidate_is_not_embedded_again_in_a_batch(
    fill: Callable[[Vectors], str], f16_vectors: Vectors, gguf_f16: Path
) -> None:
    """Texts that get their batched vectors back one at a time were embedded twice alike:
    the self-check's second batch run is left out, and no finding is lost by it."""
    calls: list[int] = []

    def recorded(texts: Sequence[str], vectors: Vectors) -> Vectors:
        calls.append(len(texts))
        return vectors

    report = check(fill(f16_vectors), DamagedEngine(open_engine(f"llamacpp:{gguf_f16}"), recorded))
    assert (report.verdict, causes(report)) == ("approve", [])
    assert report.bound is not None
    rounds = 0
    while sum(calls[:rounds]) < report.bound["n"]:
        rounds += 1
    assert calls[rounds:] == [1] * 8, calls  # after the rounds, eight texts alone only


def test_an_empty_store_is_an_error(new_store_uri: Callable[..., str], gguf_f16: Path) -> None:
    uri = new_store_uri()
    store = open_store(uri)
    store.create(dims=384, distance="cosine")
    store.close()
    with pytest.raises(StoreError, match="empty"):
        check(uri, f"llamacpp:{gguf_f16}")


def test_the_setting_in_use_is_never_re_measured(gguf_f16: Path) -> None:
    """A mean-pooled GGUF (pooling from its metadata, not from the URI) is not asked to
    try pooling=mean again."""
    engine = open_engine(f"llamacpp:{gguf_f16}")
    try:
        current = effective_settings(engine)
    finally:
        engine.close()
    stored = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    moved = stored + np.random.default_rng(1).normal(scale=0.4, size=stored.shape)
    comparison = compare(stored, moved.astype(np.float32), None, "cosine")
    tried = settings_to_try(Evidence(comparison, 0.99, 8, 8, candidate_settings=current))
    assert current["pooling"] == "mean"
    assert {"pooling": "mean"} not in tried
    assert {"pooling": "cls"} in tried
