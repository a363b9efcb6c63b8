"""Population drift: are the records written lately from the same engine as the older ones?

The per-record check re-embeds texts and compares vectors one by one; it cannot see a
writer that uses another engine for new records only. This compares the two populations
of stored vectors as Evidently does for embeddings, with three measures:

- ``mean_distance``: cosine distance between the two mean vectors;
- ``drifted_share``: share of components whose 1-d Wasserstein distance, divided by the
  reference's standard deviation, exceeds ``component_threshold``;
- ``auc``: ROC AUC of a domain classifier (L2 logistic regression) told to tell the two
  apart, measured on a held-out half. 0.5 means indistinguishable.

The AUC decides: it exceeds ``auc_floor`` and its own noise (``z`` standard errors of
the AUC of indistinguishable populations of these sizes), so small windows need a
clearer signal. The other two are evidence. Pure numpy; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from guard.records import Vectors

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PopulationThresholds:
    """When two populations count as drifted apart (defaults follow Evidently's)."""

    auc_floor: float = 0.55
    z: float = 3.0
    component_threshold: float = 0.1
    min_records: int = 20


@dataclass(frozen=True)
class PopulationDrift:
    reference: int  # records in each population
    current: int
    mean_distance: float
    drifted_share: float
    auc: float
    auc_threshold: float
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def population_drift(
    reference: Vectors,
    current: Vectors,
    *,
    seed: int,
    thresholds: PopulationThresholds | None = None,
) -> PopulationDrift | None:
    """Compare ``current`` (new records) with ``reference`` (older ones); None when either
    side has fewer than ``min_records`` rows or the dimensions differ."""
    limits = thresholds or PopulationThresholds()
    if (
        min(len(reference), len(current)) < limits.min_records
        or reference.shape[1] != current.shape[1]
    ):
        return None
    ref = reference.astype(np.float64)
    cur = current.astype(np.float64)
    auc, held_ref, held_cur = domain_classifier_auc(ref, cur, seed=seed)
    threshold = max(limits.auc_floor, 0.5 + limits.z * null_auc_stderr(held_ref, held_cur))
    return PopulationDrift(
        reference=len(ref),
        current=len(cur),
        mean_distance=mean_vector_distance(ref, cur),
        drifted_share=drifted_component_share(ref, cur, limits.component_threshold),
        auc=auc,
        auc_threshold=threshold,
        drifted=auc > threshold,
    )


def mean_vector_distance(reference: Floats, current: Floats) -> float:
    """Cosine distance between the mean vectors (0 when either mean is zero)."""
    a, b = reference.mean(axis=0), current.mean(axis=0)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 0.0 if norms == 0.0 else float(1.0 - np.dot(a, b) / norms)


def drifted_component_share(reference: Floats, current: Floats, threshold: float) -> float:
    """Share of components whose normed 1-d Wasserstein distance exceeds ``threshold``.

    Both samples are compared on a common grid of quantiles, which is exact for equal
    sizes and a close approximation otherwise.
    """
    grid = (np.arange(256) + 0.5) / 256
    ref_q = np.quantile(reference, grid, axis=0)
    cur_q = np.quantile(current, grid, axis=0)
    distance = np.abs(ref_q - cur_q).mean(axis=0)
    scale = reference.std(axis=0)
    normed = distance / np.where(scale > 0, scale, 1.0)
    return float((normed > threshold).mean())


def domain_classifier_auc(
    reference: Floats, current: Floats, *, seed: int
) -> tuple[float, int, int]:
    """Held-out AUC of a classifier told reference (0) from current (1), and the sizes of
    the held-out halves. Each class is split in half; a balanced loss keeps unequal sizes
    from biasing it."""
    rng = np.random.default_rng(seed)
    ref = reference[rng.permutation(len(reference))]
    cur = current[rng.permutation(len(current))]
    r, c = len(ref) // 2, len(cur) // 2
    train_x = np.concatenate([ref[:r], cur[:c]])
    train_y = np.concatenate([np.zeros(r), np.ones(c)])
    test_x = np.concatenate([ref[r:], cur[c:]])
    test_y = np.concatenate([np.zeros(len(ref) - r), np.ones(len(cur) - c)])
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    weights = _logistic_regression((train_x - mean) / std, train_y)
    scores = ((test_x - mean) / std) @ weights[:-1] + weights[-1]
    return roc_auc(scores, test_y), len(ref) - r, len(cur) - c


def _logistic_regression(
    x: Floats, y: Floats, *, l2: float = 1.0, steps: int = 300, rate: float = 0.5
) -> Floats:
    """Weights (bias last) by gradient descent on the class-balanced, L2-penalised log loss."""
    n, dims = x.shape
    sample_weight = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max(n - y.sum(), 1))
    w = np.zeros(dims + 1)
    for _ in range(steps):
        z = np.clip(x @ w[:-1] + w[-1], -30, 30)
        error = (1.0 / (1.0 + np.exp(-z)) - y) * sample_weight
        grad = np.append(x.T @ error + l2 * w[:-1] / n, error.sum())
        w -= rate * grad
    return w


def roc_auc(scores: Floats, labels: Floats) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return 0.5
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    positive_ranks = ranks[labels == 1].sum()
    return float((positive_ranks - positives * (positives + 1) / 2.0) / (positives * negatives))


def null_auc_stderr(n_negative: int, n_positive: int) -> float:
    """Standard error of the AUC when both classes come from the same population
    (the Mann-Whitney U statistic's null variance, scaled)."""
    return math.sqrt((n_negative + n_positive + 1) / (12.0 * n_negative * n_positive))
