"""Fitting a linear bridge from the candidate's space to the stored one, and judging it
on held-out records: the check's answer when another space or size is the mismatch.

The looks follow ``plan_bridge`` (guard.core.bridge), decided before anything is
embedded for the bridge: a small fit, a small held-out look that can only stop a
hopeless bridge, then larger looks only while the bound can still pass."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from guard.checking.overlap import OVERLAP_QUERIES, overlap_through_index
from guard.checking.rounds import embedded_up_to
from guard.core.bridge import BridgePlan, LinearMap, MapKind, Trial, fit, judge, plan_bridge
from guard.core.findings import Finding
from guard.core.policy import Thresholds, Verdict, bound_sentence
from guard.engines import EmbeddingEngine, bridgefile
from guard.logs import get_logger
from guard.records import RecordBatch, StoreInfo, Vectors
from guard.stores import VectorStore

log = get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the bridge phase did: every map judged, the winner and its overlap@k, the
    plan, the looks taken, the records it embedded itself, and why it stopped:
    ``too_small`` (nothing fitted), ``ruled_out``, ``passed`` or ``undecided``."""

    trials: tuple[Trial, ...]
    plan: BridgePlan
    looks_taken: int
    embedded: int
    stopped: str
    reason: str
    winner: Trial | None = None
    overlap: float | None = None


def try_bridge(
    store: VectorStore,
    usable: RecordBatch,
    embedded: Vectors,
    candidate: EmbeddingEngine,
    info: StoreInfo,
    thresholds: Thresholds,
    verdict: Verdict,
    findings: tuple[Finding, ...],
    out: Path | None,
    *,
    fingerprint: dict[str, Any],
    population: int | None,
) -> tuple[Verdict, tuple[Finding, ...], dict[str, Any] | None]:
    """Fit candidate -> stored maps on the sample's first rows, judge them on the next.

    Only for a ``reindex`` that another space or size explains. The candidate's vectors
    the check already made (``embedded``) are the first fitting rows, so they are not
    made twice. The first kind (simplest first) whose bound passes and whose bridged
    queries find the stored top-k through the store's index wins. ``population``: the
    store's size the check's own bound used (None: only estimated).
    """
    hopeless = [f for f in findings if f.role == "other_space"]
    if verdict.name != "reindex" or not hopeless or len(usable) < 4:
        return verdict, findings, None
    raw = candidate
    if candidate.options.normalize or candidate.options.bridge:  # a bridge sees raw output
        raw = candidate.with_options(normalize=None, bridge=None)
        embedded = embedded[:0]
    try:
        outcome = _fit_and_judge(store, usable, embedded, raw, info, thresholds, population)
    finally:
        if raw is not candidate:
            raw.close()
    log.info(
        "check.bridge_done",
        stopped=outcome.stopped,
        looks=outcome.looks_taken,
        embedded=outcome.embedded,
    )
    winner = outcome.winner
    best = winner or max(
        outcome.trials,
        key=lambda t: (float(t.summary.p1), float(t.summary.median)),
        default=None,
    )
    figures = _figures(best, outcome, thresholds)
    if winner is None:
        near = (
            f"; no linear bridge was fitted: {outcome.reason}"
            if best is None
            else f"; the best linear bridge ({_label(best)}, fitted on {best.fitted_on} "
            f"records) leaves {best.held_out_failures} of {best.validated_on} held-out records "
            f"below cosine {thresholds.min_cosine:g} (median {best.summary.median:.3f}, p1 "
            f"{best.summary.p1:.3f}): {outcome.reason}"
        )
        hopeless_now = tuple(
            replace(f, evidence=f.evidence + near) if f.role == "other_space" else f
            for f in findings
        )
        return (
            _restated(verdict, hopeless_now),
            hopeless_now,
            {"path": None, "passed": False, **figures},
        )
    path = bridgefile.save(
        winner.bridge,
        out,
        fitted_between={
            "candidate": fingerprint,
            "store": {"uri": store.uri, "dims": info.dims, "distance": info.distance},
        },
        validation=figures,
    )
    finding = Finding(
        "projection_mismatch",
        f"a {_label(winner)} map fitted on {winner.fitted_on} sampled records brings "
        f"{winner.validated_on} held-out ones to cosine min {winner.summary.min:.4f}, p1 "
        f"{winner.summary.p1:.4f}, median {winner.summary.median:.4f} and overlap@"
        f"{thresholds.overlap_k} {outcome.overlap or 0.0:.3f}; "
        f"{bound_sentence(winner.bound)} once bridged",
        f"add bridge={path} to the candidate URI",
        {"bridge": str(path)},
        True,
    )
    kept = (*tuple(f for f in findings if f.role != "other_space"), finding)
    return (
        Verdict.of("fix_config", f"projection_mismatch: {finding.suggestion}"),
        kept,
        {"path": str(path), "passed": True, **figures},
    )


def _restated(verdict: Verdict, findings: tuple[Finding, ...]) -> Verdict:
    """The same verdict, its reasons restated from the amended findings."""
    reasons = [f.reason for f in findings if f.role == "other_space"]
    return Verdict.of(verdict.name, *reasons)


def _fit_and_judge(
    store: VectorStore,
    usable: RecordBatch,
    embedded: Vectors,
    candidate: EmbeddingEngine,
    info: StoreInfo,
    thresholds: Thresholds,
    population: int | None,
) -> Outcome:
    """The plan's looks in order, each kind's map fitted once per fit size (cheapest
    kind first). A kind whose bound fails is dropped; the bridge stops when none is
    left, when one passes (and its overlap@k holds), or when the plan is spent."""
    reused = len(embedded)
    vectors = embedded if reused else embedded_up_to(usable, embedded, candidate, 1)
    plan = plan_bridge(
        len(usable),
        vectors.shape[1],
        allowed_share=thresholds.allowed_share,
        confidence=thresholds.confidence,
        population=population,
    )
    trials: list[Trial] = []

    def outcome(taken: int, stopped: str, reason: str, winner: Trial | None = None,
                overlap: float | None = None) -> Outcome:  # fmt: skip
        made = max(0, len(vectors) - reused)
        return Outcome(tuple(trials), plan, taken, made, stopped, reason, winner, overlap)

    if not plan.looks:
        return outcome(0, "too_small", plan.reason)
    stored = usable.vectors.astype(np.float64)
    rescale = info.distance == "cosine"
    maps: dict[tuple[MapKind, int], LinearMap] = {}
    kinds = list(plan.kinds)
    for number, look in enumerate(plan.looks, start=1):
        vectors = embedded_up_to(usable, vectors, candidate, look.rows)
        for kind in tuple(kinds):
            if (kind, look.fit) not in maps:
                maps[kind, look.fit] = fit(
                    kind,
                    vectors[: look.fit],
                    stored[: look.fit],
                    threshold=thresholds.min_cosine,
                    rescale_rows=rescale,
                )
            trial = judge(
                maps[kind, look.fit],
                plan=plan,
                look=number,
                candidate=vectors,
                stored=stored,
                threshold=thresholds.min_cosine,
            )
            trials.append(trial)
            decision = trial.bound.decision
            log.debug("check.bridge", kind=kind, fit=look.fit, n=look.held_out, decision=decision)
            if decision == "fail":
                kinds.remove(kind)
            elif decision == "pass":
                held = trial.held_out[:OVERLAP_QUERIES]
                overlap = overlap_through_index(
                    store,
                    usable.vectors[held],
                    trial.bridge.apply(vectors[held]).astype(np.float32),
                    thresholds.overlap_k,
                )
                if overlap is not None and overlap >= thresholds.min_overlap:
                    return outcome(number, "passed", "it passed", trial, overlap)
        if not kinds:
            return outcome(
                number,
                "ruled_out",
                f"at look {number} of {len(plan.looks)} ({look.fit} fitted, "
                f"{look.held_out} held out) the bound rules out every map",
            )
    return outcome(
        len(plan.looks), "undecided", f"all {len(plan.looks)} looks left the bound undecided"
    )


def _label(trial: Trial) -> str:
    params = ", ".join(f"{key} {value:.3g}" for key, value in trial.bridge.parameters.items())
    return f"{trial.bridge.kind} ({params})" if params else trial.bridge.kind


def _figures(trial: Trial | None, outcome: Outcome, thresholds: Thresholds) -> dict[str, Any]:
    """The report's and the bridge file's account of the best judged map (nulls when
    nothing was fitted), and of what the bridge phase did."""
    done = {
        "looks": [
            {"fit": look.fit, "held_out": look.held_out, "approve_alpha": look.approve_alpha}
            for look in outcome.plan.looks
        ],
        "looks_taken": outcome.looks_taken,
        "embedded": outcome.embedded,
        "stopped": outcome.stopped,
        "stop_reason": outcome.reason,
    }
    if trial is None:
        return {
            "kind": None,
            "parameters": {},
            "input_dims": None,
            "output_dims": None,
            "fitted_on": 0,
            "validated_on": 0,
            "held_out_cosine": None,
            "overlap_at_k": None,
            "k": thresholds.overlap_k,
            "share_below_threshold_upper": None,
            "failures": None,
            "method": None,
            **done,
        }
    summary = trial.summary
    won = outcome.overlap is not None and trial is outcome.winner
    overlap = round(outcome.overlap, 4) if won and outcome.overlap is not None else None
    return {
        "kind": trial.bridge.kind,
        "parameters": dict(trial.bridge.parameters),
        "input_dims": trial.bridge.input_dims,
        "output_dims": trial.bridge.output_dims,
        "fitted_on": trial.fitted_on,
        "validated_on": trial.validated_on,
        "held_out_cosine": {
            "min": round(summary.min, 6),
            "p1": round(summary.p1, 6),
            "median": round(summary.median, 6),
        },
        "overlap_at_k": overlap,
        "k": thresholds.overlap_k,
        "share_below_threshold_upper": trial.bound.share_below_threshold_upper,
        "failures": trial.held_out_failures,
        "method": trial.bound.method,
        **done,
    }
