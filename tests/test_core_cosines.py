"""guard.core.cosines: per-record cosines, norm ratios, summaries, buckets, overlap@k."""

from __future__ import annotations

import math

import numpy as np
import pytest

from guard.core.cosines import (
    Comparison,
    DimensionMismatch,
    LengthBucket,
    Summary,
    compare,
    overlap_at_k,
    rowwise_cosine,
)


def _unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_cosine_and_norm_ratio_per_record() -> None:
    """Row i of each side is compared with row i of the other, nothing else."""
    stored = np.array([[1, 0], [0, 2], [3, 4]], dtype=np.float32)
    candidate = np.array([[1, 1], [0, 1], [-3, -4]], dtype=np.float32)

    result = compare(stored, candidate, [1, 2, 3], "cosine")

    assert result.cosines.tolist() == pytest.approx([1 / math.sqrt(2), 1.0, -1.0])
    assert result.norm_ratios.tolist() == pytest.approx([math.sqrt(2), 0.5, 1.0])
    assert result.n == 3
    assert result.distance == "cosine"


def test_identical_vectors_agree_to_float_precision() -> None:
    stored = _unit_rows(50, 384)

    result = compare(stored, stored.copy(), np.full(50, 10), "dot")

    assert result.cosine.min > 1 - 1e-9
    assert result.norm_ratio.min == pytest.approx(1.0, abs=1e-9)
    assert result.failures(0.999999) == 0


def test_summary_matches_numpy_percentiles() -> None:
    values = np.linspace(0.0, 1.0, 201)

    summary = Summary.of(values)

    assert summary == Summary(
        min=0.0,
        p1=float(np.percentile(values, 1)),
        p5=float(np.percentile(values, 5)),
        median=0.5,
        mean=pytest.approx(0.5),
    )


def test_undefined_rows_count_as_mismatches() -> None:
    """A zero or NaN vector has no direction: cosine 0.0, norm ratio NaN unless finite."""
    stored = np.array([[1, 0], [1, 0], [1, 0], [0, 0]], dtype=np.float32)
    candidate = np.array([[1, 0], [0, 0], [np.nan, 1], [1, 0]], dtype=np.float32)

    result = compare(stored, candidate, None, "cosine")

    assert result.cosines.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert result.norm_ratios[:2].tolist() == [1.0, 0.0]
    assert np.isnan(result.norm_ratios[2:]).all()
    assert result.below(0.5).tolist() == [False, True, True, True]
    assert result.failures(0.5) == 3
    assert result.norm_ratio.median == 0.5  # over the finite ratios only


def test_by_length_buckets_count_min_and_median() -> None:
    stored = _unit_rows(6, 8)
    candidate = stored.copy()
    candidate[4] = -candidate[4]  # the 300-token record points the other way
    tokens = [10, 64, 65, 200, 300, 300]

    result = compare(stored, candidate, tokens, "cosine")

    assert [(b.label, b.count) for b in result.by_length] == [
        ("<=64", 2),
        ("65-128", 1),
        ("129-256", 1),
        ("257-512", 2),
        (">512", 0),
    ]
    assert result.by_length[3].min == pytest.approx(-1.0)
    assert result.by_length[3].median == pytest.approx(0.0)
    assert result.by_length[4] == LengthBucket(low=513, high=None, count=0, min=None, median=None)


def test_without_token_counts_there_are_no_buckets() -> None:
    stored = _unit_rows(3, 4)

    assert compare(stored, stored, None, "l2").by_length == ()


def test_arrays_are_read_only() -> None:
    stored = _unit_rows(3, 4)
    result = compare(stored, stored, [1, 2, 3], "cosine")

    with pytest.raises(ValueError, match="read-only"):
        result.cosines[0] = 0.0
    assert isinstance(result, Comparison)


def test_dimension_mismatch_is_its_own_error() -> None:
    with pytest.raises(DimensionMismatch) as caught:
        compare(_unit_rows(3, 384), _unit_rows(3, 768), None, "cosine")

    assert (caught.value.stored_dims, caught.value.candidate_dims) == (384, 768)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("stored", "candidate", "tokens", "message"),
    [
        (np.ones((3, 4)), np.ones((2, 4)), None, "3 stored vectors but 2"),
        (np.ones((0, 4)), np.ones((0, 4)), None, "sample is empty"),
        (np.ones((2, 4)), np.ones((2, 4)), [1, 2, 3], "expected 2 token counts"),
        (np.ones((2, 4)), np.ones((2, 4)), [1, -2], "non-negative integers"),
        (np.ones((2, 4)), np.ones((2, 4)), [1.5, 2.0], "non-negative integers"),
    ],
)
def test_bad_inputs_are_rejected(
    stored: np.ndarray, candidate: np.ndarray, tokens: list[float] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compare(stored, candidate, tokens, "cosine")


def test_rowwise_cosine_rejects_different_shapes() -> None:
    with pytest.raises(ValueError, match="shapes"):
        rowwise_cosine(np.ones((2, 3)), np.ones((3, 3)))


def test_overlap_at_k_is_the_mean_shared_fraction() -> None:
    stored = [[1, 2, 3, 4], ["a", "b", "c", "d"]]
    candidate = [[4, 3, 2, 1], ["a", "x", "y", "z"]]

    assert overlap_at_k(stored, candidate, 4) == pytest.approx((1.0 + 0.25) / 2)
    assert overlap_at_k(stored, candidate, 2) == pytest.approx((0.0 + 0.5) / 2)


def test_overlap_at_k_scores_short_lists_against_their_length() -> None:
    """A store with fewer than k records returns shorter lists: full agreement is 1.0."""
    assert overlap_at_k([[1, 2]], [[2, 1]], 10) == 1.0


@pytest.mark.parametrize(
    ("stored", "candidate", "k", "message"),
    [
        ([[1]], [[1], [2]], 10, "1 stored result lists but 2"),
        ([], [], 10, "no top-k lists"),
        ([[]], [[1]], 10, "returned no neighbours"),
        ([[1]], [[1]], 0, "at least 1"),
    ],
)
def test_overlap_at_k_rejects_unusable_lists(
    stored: list[list[int]], candidate: list[list[int]], k: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        overlap_at_k(stored, candidate, k)
