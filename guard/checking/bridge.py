"""Fitting a linear bridge from the candidate's space to the stored one, and judging it
on held-out records: the check's answer when another space or size is the mismatch."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guard.checking.overlap import OVERLAP_QUERIES, overlap_through_index
from guard.checking.rounds import embedded_up_to
from guard.core.bridge import KINDS, LinearMap, MapKind, Trial, fit, fitting_rows, judge, split
from guard.core.findings import Finding
from guard.core.policy import Thresholds, Verdict, bound_sentence
from guard.core.stats import plan_rounds
from guard.engines import EmbeddingEngine, bridgefile
from guard.logs import get_logger
from guard.records import RecordBatch, StoreInfo, Vectors
from guard.stores import VectorStore

log = get_logger(__name__)

# Before the full fit (three rows per parameter, then as many held out), an affine map
# is fitted on PROBE_ROWS_PER_PARAMETER rows per parameter and judged on PROBE_HELD_OUT
# more. A linear relation (a dropped projection layer) is recovered exactly there
# (measured on all-MiniLM-L6-v2 + Dense(384 -> 768): held-out median 1.000 on 600 rows),
# while a different model stays far off (the reference cut to 2 layers: 0.90), so a
# held-out median below min_cosine stops the bridge at a third of the full cost.
PROBE_ROWS_PER_PARAMETER = 1.5
PROBE_HELD_OUT = 100


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
) -> tuple[Verdict, tuple[Finding, ...], dict[str, Any] | None]:
    """Fit candidate -> stored maps on the sample's first rows, judge them on the rest.

    Only for a ``reindex`` that another space or size explains. The held-out part grows
    in rounds while the bound is undecided; the error budget is split over every
    (map, round) look. The first kind (simplest first) whose bound passes and whose
    bridged queries find the stored top-k through the store's index wins.
    """
    hopeless = [f for f in findings if f.role == "other_space"]
    if verdict.name != "reindex" or not hopeless or len(usable) < 4:
        return verdict, findings, None
    raw = candidate
    if candidate.options.normalize or candidate.options.bridge:  # a bridge sees raw output
        raw = candidate.with_options(normalize=None, bridge=None)
        embedded = embedded[:0]
    try:
        trials, winner, overlap = _fit_and_judge(store, usable, embedded, raw, info, thresholds)
    finally:
        if raw is not candidate:
            raw.close()
    best = winner or max(trials, key=lambda t: (float(t.summary.p1), float(t.summary.median)))
    figures = _figures(best, overlap if winner else None, thresholds)
    if winner is None:
        near = (
            f"; the best linear bridge ({_label(best)}, fitted on {best.fitted_on} records) "
            f"leaves {best.bound.failures} of {best.validated_on} held-out records below cosine "
            f"{thresholds.min_cosine:g} (median {best.summary.median:.3f}, p1 "
            f"{best.summary.p1:.3f}): no linear map explains the difference"
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
        f"{thresholds.overlap_k} {overlap:.3f}; {bound_sentence(winner.bound)} once bridged",
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
) -> tuple[list[Trial], Trial | None, float | None]:
    n = len(usable)
    fit_n = fitting_rows(embedded.shape[1] if len(embedded) else info.dims, n)
    hopeless, embedded = _probe(usable, embedded, candidate, info, thresholds, fit_n)
    if hopeless is not None:
        return [hopeless], None, None
    fit_rows, _ = split(n, fit_n)
    rounds = plan_rounds(fit_n, n - fit_n)
    looks = len(rounds) * len(KINDS)
    vectors = embedded_up_to(usable, embedded, candidate, fit_n + rounds[0])
    stored = usable.vectors.astype(np.float64)
    rescale = info.distance == "cosine"
    # Each map is fitted when first judged: a rotation that passes spares the affine fit.
    maps: dict[MapKind, LinearMap] = {}
    trials: list[Trial] = []
    for number, size in enumerate(rounds, start=1):
        vectors = embedded_up_to(usable, vectors, candidate, fit_n + size)
        held = np.arange(fit_n, fit_n + size, dtype=np.int64)
        undecided = False
        for index, kind in enumerate(KINDS):
            if kind not in maps:
                maps[kind] = fit(
                    kind,
                    vectors[fit_rows],
                    stored[fit_rows],
                    threshold=thresholds.min_cosine,
                    rescale_rows=rescale,
                )
            bridge = maps[kind]
            look = (number - 1) * len(KINDS) + index + 1
            trial = _judged(bridge, fit_n, held, vectors, stored, thresholds, look, looks)
            trials.append(trial)
            log.debug("check.bridge", kind=bridge.kind, n=size, decision=trial.bound.decision)
            if trial.bound.decision == "pass":
                overlap = overlap_through_index(
                    store,
                    usable.vectors[held[:OVERLAP_QUERIES]],
                    bridge.apply(vectors[held[:OVERLAP_QUERIES]]).astype(np.float32),
                    thresholds.overlap_k,
                )
                if overlap is not None and overlap >= thresholds.min_overlap:
                    return trials, trial, overlap
            undecided = undecided or trial.bound.decision == "continue"
        if not undecided:
            break
    return trials, None, None


def _probe(
    usable: RecordBatch,
    embedded: Vectors,
    candidate: EmbeddingEngine,
    info: StoreInfo,
    thresholds: Thresholds,
    fit_n: int,
) -> tuple[Trial | None, Vectors]:
    """The probe of the module's constants: its trial when the bridge is hopeless, else
    None (also when the sample is too small for a probe short of the full fit); and the
    candidate's vectors embedded so far, for the full fit to go on from."""
    vectors = embedded_up_to(usable, embedded, candidate, 1)
    probe_fit = math.ceil(PROBE_ROWS_PER_PARAMETER * (vectors.shape[1] + 1))
    if probe_fit >= fit_n or probe_fit + PROBE_HELD_OUT > len(usable):
        return None, vectors
    vectors = embedded_up_to(usable, vectors, candidate, probe_fit + PROBE_HELD_OUT)
    stored = usable.vectors[: probe_fit + PROBE_HELD_OUT].astype(np.float64)
    bridge = fit(
        "affine",
        vectors[:probe_fit],
        stored[:probe_fit],
        threshold=thresholds.min_cosine,
        rescale_rows=info.distance == "cosine",
    )
    held = np.arange(probe_fit, probe_fit + PROBE_HELD_OUT, dtype=np.int64)
    trial = _judged(bridge, probe_fit, held, vectors, stored, thresholds, 1, 1)
    median = float(trial.summary.median)
    log.debug("check.bridge_probe", fitted_on=probe_fit, median=median)
    return (trial if median < thresholds.min_cosine else None), vectors


def _judged(
    bridge: LinearMap,
    fitted_on: int,
    held: npt.NDArray[np.int64],
    vectors: Vectors,
    stored: npt.NDArray[np.float64],
    thresholds: Thresholds,
    look: int,
    looks: int,
) -> Trial:
    """``bridge`` judged on the ``held`` rows, look ``look`` of ``looks``."""
    return judge(
        bridge,
        fitted_on=fitted_on,
        held_out=held,
        candidate=vectors[held],
        stored=stored[held],
        threshold=thresholds.min_cosine,
        allowed_share=thresholds.allowed_share,
        confidence=thresholds.confidence,
        look=look,
        looks=looks,
    )


def _label(trial: Trial) -> str:
    params = ", ".join(f"{key} {value:.3g}" for key, value in trial.bridge.parameters.items())
    return f"{trial.bridge.kind} ({params})" if params else trial.bridge.kind


def _figures(trial: Trial, overlap: float | None, thresholds: Thresholds) -> dict[str, Any]:
    """The report's and the bridge file's account of one judged map."""
    summary = trial.summary
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
        "overlap_at_k": None if overlap is None else round(overlap, 4),
        "k": thresholds.overlap_k,
        "share_below_threshold_upper": trial.bound.share_below_threshold_upper,
        "failures": trial.bound.failures,
    }
