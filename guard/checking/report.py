"""The report of one ``guard check``: the object, its builder and its JSON.

``CheckReport.to_dict`` holds exactly the fields design.md lists; their names are a
contract with CI pipelines and runbooks. The renderings for people (terminal, Markdown,
HTML) live in guard.checking.render.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from guard.core.cosines import Comparison, Summary
from guard.core.findings import Finding
from guard.core.policy import Thresholds, Verdict, bound_sentence, undecided_sentence
from guard.core.stats import Bound
from guard.records import StoreInfo
from guard.uri import redact
from guard.version import __version__

# Cosine bands of the histogram: narrow near 1, where engines that agree differ.
COSINE_BANDS: tuple[float, ...] = (-1.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)


@dataclass(frozen=True)
class CheckReport:
    """One check's outcome; JSON-ready values only (``None`` where not measured).

    The fields are the JSON's, in its order, but for ``reasons``."""

    verdict: str
    exit_code: int
    store: dict[str, Any]
    candidate: dict[str, Any]
    baseline: dict[str, Any] | None
    sample: dict[str, Any]
    thresholds: dict[str, Any]
    metrics: dict[str, Any]
    bound: dict[str, Any] | None
    diagnosis: list[dict[str, str]]
    timing: dict[str, float]
    guard_version: str
    # The fitted bridge when one was tried: its figures, and its file when it passed.
    bridge: dict[str, Any] | None = None
    # Vectors taken from the embedding cache: {enabled, hits, misses}.
    cache: dict[str, Any] | None = None
    # Retrieval quality on queries (check --queries): as stored, switch, their ratio.
    retrieval: dict[str, Any] | None = None
    # Why the policy decided as it did; shown by the renderers, not part of the JSON.
    reasons: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The design.md fields, in their documented order: every field but ``reasons``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reasons"}


def build_report(
    *,
    verdict: Verdict,
    store: StoreInfo,
    candidate: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    thresholds: Thresholds,
    comparison: Comparison | None,
    bound: Bound | None,
    findings: Sequence[Finding],
    seed: int,
    sample_method: str,
    overlap: float | None,
    timing: Mapping[str, float],
    bridge: Mapping[str, Any] | None = None,
    cache: Mapping[str, Any] | None = None,
) -> CheckReport:
    """Assemble the report from the core's values; ``comparison`` and ``bound`` are None
    when the dimensions differ."""
    return CheckReport(
        verdict=verdict.name,
        exit_code=verdict.exit_code,
        store={
            "uri": redact(store.uri),
            "count": store.count,
            "dims": store.dims,
            "distance": store.distance,
            "layout": store.layout,
        },
        candidate=_fingerprint(candidate),
        baseline=_fingerprint(baseline) if baseline is not None else None,
        sample={
            "size": comparison.n if comparison is not None else 0,
            "seed": seed,
            "rounds": bound.rounds if bound is not None else 0,
            "records_without_text": store.records_without_text,
            "method": sample_method,
        },
        thresholds=thresholds.as_dict(),
        metrics=_metrics(comparison, overlap, thresholds.overlap_k),
        bound=_bound(bound),
        diagnosis=[f.as_dict() for f in findings],
        timing={key: round(float(value), 3) for key, value in timing.items()},
        guard_version=__version__,
        bridge=dict(bridge) if bridge is not None else None,
        cache=dict(cache) if cache is not None else None,
        reasons=verdict.reasons,
    )


def to_json(report: CheckReport) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False)


def _num(value: float) -> float | None:
    """JSON has no NaN: unmeasurable values become null."""
    return round(float(value), 6) if math.isfinite(value) else None


def _summary(s: Summary) -> dict[str, float | None]:
    """Every field of the summary (min, p1, p5, median, mean), rounded."""
    return {f.name: _num(getattr(s, f.name)) for f in fields(s)}


def _metrics(comparison: Comparison | None, overlap: float | None, k: int) -> dict[str, Any]:
    overlap_at_k = {"k": k, "value": _num(overlap) if overlap is not None else None}
    if comparison is None:
        return {
            "cosine": None,
            "norm_ratio": None,
            "overlap_at_k": overlap_at_k,
            "by_length": [],
            "histogram": None,
        }
    counts, _ = np.histogram(comparison.cosines, bins=COSINE_BANDS)
    return {
        "cosine": _summary(comparison.cosine),
        "norm_ratio": _summary(comparison.norm_ratio),
        "overlap_at_k": overlap_at_k,
        "by_length": [
            {
                "tokens": b.label,
                "count": b.count,
                "min": _num(b.min) if b.min is not None else None,
                "median": _num(b.median) if b.median is not None else None,
            }
            for b in comparison.by_length
        ],
        "histogram": {"edges": list(COSINE_BANDS), "counts": [int(c) for c in counts]},
    }


def _bound(bound: Bound | None) -> dict[str, Any] | None:
    """Not the dataclass's order: the JSON's puts the shares right after the confidence,
    and adds the decision and the sentence."""
    if bound is None:
        return None
    return {
        "confidence": bound.confidence,
        "share_below_threshold_upper": bound.share_below_threshold_upper,
        "share_below_threshold_lower": bound.share_below_threshold_lower,
        "threshold": bound.threshold,
        "allowed_share": bound.allowed_share,
        "n": bound.n,
        "failures": bound.failures,
        "rounds": bound.rounds,
        "planned_rounds": bound.planned_rounds,
        "exact": bound.exact,
        "method": bound.method,
        "looks": [
            {"n": look.n, "approve_alpha": look.approve_alpha, "reject_alpha": look.reject_alpha}
            for look in bound.looks
        ],
        "decision": bound.decision,
        "sample_to_decide": bound.sample_to_decide(),
        "statement": (
            undecided_sentence(bound) if bound.decision == "continue" else bound_sentence(bound)
        ),
    }


def _fingerprint(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to print: string values go through the URI redactor."""
    return {
        key: redact(value) if isinstance(value, str) else value for key, value in values.items()
    }
