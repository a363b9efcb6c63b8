"""Per-record agreement between the stored vectors and the candidate's vectors.

The shell samples records, embeds their texts with the candidate and hands both arrays
here, row i of each belonging to the same record. Everything the diagnosis and the
policy need is computed once, into a frozen ``Comparison``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guard.records import Distance, RecordId, as_vectors

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

# Token-length buckets (inclusive bounds; None = open): the usual truncation limits of
# embedding models sit on these edges, so a truncation mismatch shows as one bucket
# falling away from the others.
LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (0, 64),
    (65, 128),
    (129, 256),
    (257, 512),
    (513, None),
)


class DimensionMismatch(ValueError):
    """The two sides have different dimensions: no per-record comparison exists.

    The shell is expected to notice this first (``StoreInfo.dims`` against the
    candidate's output) and go straight to the ``dimension_mismatch`` diagnosis.
    """

    def __init__(self, stored_dims: int, candidate_dims: int) -> None:
        super().__init__(
            f"stored vectors have {stored_dims} dimensions, the candidate's {candidate_dims}"
        )
        self.stored_dims = stored_dims
        self.candidate_dims = candidate_dims


@dataclass(frozen=True)
class Summary:
    """Where the bulk and the tail of a per-record metric lie."""

    min: float
    p1: float
    p5: float
    median: float
    mean: float

    @classmethod
    def of(cls, values: Floats) -> Summary:
        """Summary of the finite values; all NaN when there are none."""
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan)
        p1, p5, median = np.percentile(finite, [1, 5, 50])
        return cls(float(finite.min()), float(p1), float(p5), float(median), float(finite.mean()))


@dataclass(frozen=True)
class LengthBucket:
    """Cosine fidelity of the records whose token count lies in ``[low, high]``."""

    low: int
    high: int | None  # None: no upper bound
    count: int
    min: float | None  # None when the bucket is empty
    median: float | None

    @property
    def label(self) -> str:
        if self.low == 0 and self.high is not None:
            return f"<={self.high}"
        if self.high is None:
            return f">{self.low - 1}"
        return f"{self.low}-{self.high}"


@dataclass(frozen=True, eq=False)
class Comparison:
    """Stored versus candidate vectors of the same sampled records, row by row.

    ``cosines[i]`` is 0.0 where either vector of record i is zero or not finite: such a
    record has no direction, so it counts as a mismatch at any threshold. ``norm_ratios``
    is |candidate| / |stored|, NaN where that is undefined. Arrays are read-only.
    """

    cosines: Floats
    norm_ratios: Floats
    stored_norms: Floats
    candidate_norms: Floats
    token_counts: Ints | None  # None when the engine cannot count tokens
    distance: Distance
    cosine: Summary
    norm_ratio: Summary
    by_length: tuple[LengthBucket, ...]  # empty without token counts

    @property
    def n(self) -> int:
        return int(self.cosines.size)

    def below(self, threshold: float) -> Mask:
        """Which records fall below the per-record cosine threshold."""
        mask: Mask = self.cosines < threshold
        return mask

    def failures(self, threshold: float) -> int:
        return int(np.count_nonzero(self.below(threshold)))


def rowwise_cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[Floats, Mask]:
    """Cosine of each row of ``a`` with the same row of ``b``, and where it is defined.

    Computed in float64: the engines that agree do so to 1e-6 and float32 dot products
    over a few thousand dimensions would blur that. Undefined rows get cosine 0.0.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"cannot compare arrays of shapes {x.shape} and {y.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        nx = np.linalg.norm(x, axis=1)
        ny = np.linalg.norm(y, axis=1)
        defined = np.isfinite(nx) & np.isfinite(ny) & (nx > 0) & (ny > 0)
        dots = np.einsum("ij,ij->i", np.where(defined[:, None], x, 0.0), y)
    cosines = np.zeros(x.shape[0], dtype=np.float64)
    cosines[defined] = np.clip(dots[defined] / (nx[defined] * ny[defined]), -1.0, 1.0)
    return cosines, defined


def compare(
    stored: npt.ArrayLike,
    candidate: npt.ArrayLike,
    token_counts: npt.ArrayLike | None,
    distance: Distance,
) -> Comparison:
    """Compare the candidate's vectors with the stored ones, record by record.

    :raises DimensionMismatch: the two sides have different dimensions.
    :raises ValueError: shapes disagree otherwise, or there is nothing to compare.
    """
    s = as_vectors(stored)
    c = as_vectors(candidate)
    if s.shape[1] != c.shape[1]:
        raise DimensionMismatch(s.shape[1], c.shape[1])
    if s.shape[0] != c.shape[0]:
        raise ValueError(f"{s.shape[0]} stored vectors but {c.shape[0]} candidate vectors")
    if s.shape[0] == 0:
        raise ValueError("nothing to compare: the sample is empty")
    tokens = _token_counts(token_counts, s.shape[0])

    cosines, _ = rowwise_cosine(s, c)
    with np.errstate(invalid="ignore", over="ignore"):
        stored_norms = np.linalg.norm(s.astype(np.float64), axis=1)
        candidate_norms = np.linalg.norm(c.astype(np.float64), axis=1)
    ratios = np.full(s.shape[0], np.nan)
    ratio_defined = np.isfinite(stored_norms) & np.isfinite(candidate_norms) & (stored_norms > 0)
    ratios[ratio_defined] = candidate_norms[ratio_defined] / stored_norms[ratio_defined]

    for array in (cosines, ratios, stored_norms, candidate_norms, tokens):
        if array is not None:
            array.setflags(write=False)
    return Comparison(
        cosines=cosines,
        norm_ratios=ratios,
        stored_norms=stored_norms,
        candidate_norms=candidate_norms,
        token_counts=tokens,
        distance=distance,
        cosine=Summary.of(cosines),
        norm_ratio=Summary.of(ratios),
        by_length=_by_length(cosines, tokens) if tokens is not None else (),
    )


def overlap_at_k(
    stored_topk: Sequence[Sequence[RecordId]],
    candidate_topk: Sequence[Sequence[RecordId]],
    k: int,
) -> float:
    """Mean share of each query's stored top-k that the candidate's top-k also finds.

    Both lists come from the store's own index: for each sampled record, a search with
    its stored vector and a search with the candidate's vector. A query whose stored
    list is shorter than k (a tiny store) is scored against the length it has.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if len(stored_topk) != len(candidate_topk):
        raise ValueError(
            f"{len(stored_topk)} stored result lists but {len(candidate_topk)} candidate lists"
        )
    shares = []
    for expected, got in zip(stored_topk, candidate_topk, strict=True):
        wanted = set(expected[:k])
        if not wanted:
            raise ValueError("a stored top-k list is empty: the store returned no neighbours")
        shares.append(len(wanted & set(got[:k])) / len(wanted))
    if not shares:
        raise ValueError("no top-k lists to compare")
    return float(np.mean(shares))


def _token_counts(token_counts: npt.ArrayLike | None, n: int) -> Ints | None:
    if token_counts is None:
        return None
    tokens = np.asarray(token_counts)
    if tokens.shape != (n,):
        raise ValueError(f"expected {n} token counts, got shape {tokens.shape}")
    if tokens.size and (not np.issubdtype(tokens.dtype, np.integer) or tokens.min() < 0):
        raise ValueError("token counts must be non-negative integers")
    return tokens.astype(np.int64)


def _by_length(cosines: Floats, tokens: Ints) -> tuple[LengthBucket, ...]:
    buckets = []
    for low, high in LENGTH_BUCKETS:
        inside = tokens >= low
        if high is not None:
            inside &= tokens <= high
        values = cosines[inside]
        buckets.append(
            LengthBucket(
                low=low,
                high=high,
                count=int(values.size),
                min=float(values.min()) if values.size else None,
                median=float(np.median(values)) if values.size else None,
            )
        )
    return tuple(buckets)
