"""Retrieval quality: recall@k, MRR@k and nDCG@k over queries with known relevant ids.

Pure: the shell ranks (through the store's index, or ``exact_top_k`` on a sub-corpus)
and hands over the ranked ids per query. Each figure comes with a percentile bootstrap
interval over queries (``scipy.stats.bootstrap``), seeded, so the same seed gives the
same interval. Relevance is
binary; recall@k divides by the number of relevant ids, nDCG@k by the best DCG that
``min(k, relevant)`` hits could reach.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import bootstrap

Floats = npt.NDArray[np.float64]

# Resamples of the bootstrap; 2,000 keep the interval's ends stable to about 0.005.
BOOTSTRAP_RESAMPLES = 2000
INTERVAL = 0.95
METRICS = ("recall_at_k", "mrr_at_k", "ndcg_at_k")


@dataclass(frozen=True)
class Scores:
    """Per-query values of each metric, in query order."""

    recall: Floats
    reciprocal_rank: Floats
    ndcg: Floats

    def __len__(self) -> int:
        return len(self.recall)

    def by_metric(self) -> dict[str, Floats]:
        return {
            "recall_at_k": self.recall,
            "mrr_at_k": self.reciprocal_rank,
            "ndcg_at_k": self.ndcg,
        }


@dataclass(frozen=True)
class Figure:
    """A metric's mean over queries and its bootstrap interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Quality:
    """The three figures of one way of searching, over ``queries`` queries."""

    queries: int
    recall: Figure
    mrr: Figure
    ndcg: Figure

    def as_dict(self) -> dict[str, float | int | list[float]]:
        """The compare contract's ``{recall_at_k, mrr_at_k, ndcg_at_k}`` plus ``*_ci``."""
        out: dict[str, float | int | list[float]] = {}
        for name, figure in zip(METRICS, (self.recall, self.mrr, self.ndcg), strict=True):
            out[name] = round(figure.value, 4)
            out[f"{name}_ci"] = [round(figure.low, 4), round(figure.high, 4)]
        out["queries"] = self.queries
        return out


def score(
    ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Sequence[Hashable]], k: int
) -> Scores:
    """Each query's recall@k, reciprocal rank within k, and nDCG@k.

    :raises ValueError: the lists differ in length, k < 1, or a query has no relevant id.
    """
    if len(ranked) != len(relevant):
        raise ValueError("one ranking per query is needed")
    if k < 1:
        raise ValueError("k must be at least 1")
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    recall, rr, ndcg = (np.zeros(len(ranked)) for _ in range(3))
    for i, (ids, wanted) in enumerate(zip(ranked, relevant, strict=True)):
        targets = set(wanted)
        if not targets:
            raise ValueError(f"query {i} has no relevant id")
        hits = np.array([item in targets for item in list(ids)[:k]], dtype=bool)
        recall[i] = hits.sum() / len(targets)
        first = np.flatnonzero(hits)
        rr[i] = 1.0 / (first[0] + 1) if first.size else 0.0
        ideal = discounts[: min(k, len(targets))].sum()
        ndcg[i] = discounts[: hits.size][hits].sum() / ideal
    return Scores(recall, rr, ndcg)


def _means(*samples: Floats, axis: int = -1) -> Floats:
    """Each sample's mean along ``axis``, stacked (the bootstrap's vectorized statistic)."""
    return np.stack([sample.mean(axis=axis) for sample in samples])


def _recall_ratio(switch: Floats, stored: Floats, axis: int = -1) -> Floats:
    """Mean recall (switch) over mean recall (as stored); 1 where the stored mean is 0."""
    over, under = switch.mean(axis=axis), stored.mean(axis=axis)
    ratio: Floats = np.divide(over, under, out=np.ones_like(over), where=under > 0)
    return ratio


def quality(
    scores: Scores, *, seed: int, resamples: int = BOOTSTRAP_RESAMPLES, interval: float = INTERVAL
) -> Quality:
    """Means over queries with percentile bootstrap intervals (same seed, same interval).

    The three metrics are resampled together (paired: the same queries in each resample).

    :raises ValueError: no queries.
    """
    if len(scores) == 0:
        raise ValueError("no queries to measure")
    samples = (scores.recall, scores.reciprocal_rank, scores.ndcg)
    values = _means(*samples)
    if len(scores) == 1:  # every resample is the one query: a point interval
        low = high = values
    else:
        result = bootstrap(
            samples,
            _means,
            n_resamples=resamples,
            vectorized=True,
            paired=True,
            confidence_level=interval,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval
    return Quality(
        len(scores),
        *(
            Figure(float(v), float(lo), float(hi))
            for v, lo, hi in zip(values, low, high, strict=True)
        ),
    )


def recall_ratio_lower(
    switch: Scores,
    stored: Scores,
    *,
    seed: int,
    confidence: float = INTERVAL,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> float | None:
    """One-sided lower confidence bound of mean recall (switch) over mean recall (as
    stored), from a paired percentile bootstrap over the same queries. None when the
    stored recall is zero (no ratio to speak of).

    :raises ValueError: the two were not scored on the same queries.
    """
    if len(switch) != len(stored) or len(stored) == 0:
        raise ValueError("both sides must be scored on the same, non-empty queries")
    if stored.recall.sum() == 0:
        return None
    if len(stored) == 1:  # every resample is the one query
        return float(_recall_ratio(switch.recall, stored.recall))
    result = bootstrap(
        (switch.recall, stored.recall),
        _recall_ratio,
        n_resamples=resamples,
        vectorized=True,
        paired=True,
        confidence_level=confidence,
        alternative="greater",
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low)


def exact_top_k(
    queries: npt.ArrayLike, corpus: npt.ArrayLike, k: int, distance: str
) -> npt.NDArray[np.int64]:
    """Row indices of ``corpus`` nearest to each query, best first (brute force).

    Cosine ranks by cosine, dot by inner product, l2/l1 by the smallest distance; ties
    go to the lower row, so the result is reproducible."""
    q = np.asarray(queries, dtype=np.float64)
    c = np.asarray(corpus, dtype=np.float64)
    if distance == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    if distance in ("cosine", "dot"):
        closeness = q @ c.T
    elif distance == "l2":
        closeness = -((q**2).sum(1)[:, None] - 2.0 * q @ c.T + (c**2).sum(1)[None, :])
    elif distance == "l1":
        closeness = -np.abs(q[:, None, :] - c[None, :, :]).sum(axis=2)
    else:
        raise ValueError(f"unknown distance {distance!r}")
    order = np.argsort(-closeness, axis=1, kind="stable")
    return order[:, : min(k, c.shape[0])].astype(np.int64)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
# A synthetic query needs some words to stand for its record.
MIN_QUERY_WORDS = 4


def first_sentence(text: str) -> str | None:
    """The first sentence of a record, when it is a proper query: at least a few words
    and not the whole record (a query equal to its record measures nothing)."""
    flat = " ".join(text.split())
    head = _SENTENCE_END.split(flat, maxsplit=1)[0]
    if len(head.split()) < MIN_QUERY_WORDS or len(head) >= len(flat):
        return None
    return head
