"""`guard check`: the imperative shell around the comparison core.

It reads the store, drives the engines, and hands plain arrays to guard.core: sample,
re-embed in rounds until the bound decides, self-check the candidate, measure retrieval
agreement through the store's own index, re-measure mismatches with the settings the
diagnosis asks for, and let the policy decide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from guard import bridgefile
from guard.cache import EmbeddingCache, bare, cached, stats_of
from guard.core.bridge import (
    KINDS,
    LinearMap,
    MapKind,
    Trial,
    fit,
    fitting_rows,
    judge,
    split,
)
from guard.core.compare import Comparison, compare, overlap_at_k
from guard.core.diagnosis import (
    PROBE_RECORDS,
    Alternative,
    Evidence,
    Finding,
    RecordTimes,
    diagnose,
    explains_every_mismatch,
    remeasure_rows,
    settings_to_try,
    worth_remeasuring,
)
from guard.core.policy import Thresholds, Verdict, bound_sentence, decide
from guard.core.selfcheck import selfcheck
from guard.core.stats import Bound, bound, plan_rounds
from guard.engines import EmbeddingEngine
from guard.errors import ConfigError, StoreError
from guard.logs import get_logger
from guard.records import RecordBatch, StoreInfo, Vectors
from guard.report import CheckReport, build_report
from guard.stores import VectorStore

log = get_logger(__name__)

# Texts embedded a second time to test determinism, and one at a time to test batching.
RERUN_TEXTS = 16
SINGLE_TEXTS = 8
# Sampled records whose top-k is compared through the store's index.
OVERLAP_QUERIES = 50
# Matching records re-measured per alternative setting as controls, after the
# mismatching ones (``remeasure_rows``: as many as an alternative needs to explain them).
ALTERNATIVE_CONTROLS = 8


@dataclass
class _Timer:
    """Wall time per phase, for the report's `timing`."""

    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    def totals(self) -> dict[str, float]:
        return {**self.phases, "total": time.perf_counter() - self.started}


@dataclass(frozen=True)
class _Measured:
    """The rounds' outcome: the comparison and bound of everything embedded so far."""

    records: RecordBatch
    vectors: Vectors
    comparison: Comparison
    bound: Bound


@dataclass(frozen=True)
class DrawnSample:
    """One draw from the store, which checks can share: ``guard compare`` draws once and
    judges every candidate on the same records.

    ``info`` counts the sampled records without text; ``usable`` are those with text, in
    the draw's random order; ``rounds`` are the cumulative round sizes over ``usable``.
    """

    info: StoreInfo
    method: str
    usable: RecordBatch
    census: bool
    rounds: tuple[int, ...]


def draw_sample(
    store: VectorStore, thresholds: Thresholds, seed: int, timer: _Timer | None = None
) -> DrawnSample:
    """Describe the store and draw the check's sample; an empty store, or a sample
    without any text, is a StoreError."""
    timer = timer or _Timer()
    with timer.phase("describe"):
        info = store.describe()
    if info.count == 0:
        raise StoreError("the store is empty: there is nothing to compare", uri=store.uri)
    with timer.phase("sample"):
        drawn = store.sample(thresholds.max_sample, seed=seed)
    usable = drawn.with_text()
    if len(usable) == 0:
        raise StoreError(
            f"none of the {len(drawn)} sampled records has text in {info.text_field!r} "
            "(set text_field= on the store URI)",
            uri=store.uri,
        )
    census = len(drawn) == info.count
    log.info("check.sampled", store=store.uri, drawn=len(drawn), with_text=len(usable))
    rounds = plan_rounds(
        thresholds.initial_sample, thresholds.max_sample, len(usable) if census else None
    )
    return DrawnSample(
        info=_with_sampled_without_text(info, len(drawn) - len(usable)),
        method=drawn.method,
        usable=usable,
        census=census,
        rounds=tuple(min(size, len(usable)) for size in rounds),
    )


def run_check(
    store: VectorStore,
    candidate: EmbeddingEngine,
    *,
    thresholds: Thresholds,
    seed: int,
    baseline: EmbeddingEngine | None = None,
    bridge_out: Path | None = None,
    cache: EmbeddingCache | None = None,
) -> CheckReport:
    """Check ``candidate`` against the vectors in ``store``; the report holds the verdict.

    With ``cache``, vectors the candidate already made for the same texts under the same
    fingerprint are reused; the self-checks always embed afresh.

    When the verdict would be ``reindex`` for another space or size, a linear bridge is
    fitted and judged on held-out records; one that passes is written to ``bridge_out``
    (default under GUARD_HOME) and turns the verdict into ``fix_config``."""
    timer = _Timer()
    drawn = draw_sample(store, thresholds, seed, timer)
    return check_drawn(
        store,
        drawn,
        candidate,
        thresholds=thresholds,
        seed=seed,
        baseline=baseline,
        bridge_out=bridge_out,
        timer=timer,
        cache=cache,
    )


def check_drawn(
    store: VectorStore,
    drawn: DrawnSample,
    candidate: EmbeddingEngine,
    *,
    thresholds: Thresholds,
    seed: int,
    baseline: EmbeddingEngine | None = None,
    bridge_out: Path | None = None,
    embedded: Vectors | None = None,
    timer: _Timer | None = None,
    cache: EmbeddingCache | None = None,
) -> CheckReport:
    """``run_check`` on a sample already drawn with the same ``thresholds`` and ``seed``.

    ``embedded`` holds the candidate's vectors of the first ``drawn.rounds[0]`` records
    when the caller has made them already (compare times that pass), so they are not
    embedded twice."""
    timer = timer or _Timer()
    candidate = cached(candidate, cache)
    info, usable, rounds = drawn.info, drawn.usable, drawn.rounds
    with timer.phase("embed"):
        first = _embedded_up_to(
            usable, _none_yet(info) if embedded is None else embedded, candidate, rounds[0]
        )[: rounds[0]]
    with timer.phase("fingerprint"):  # hashes the model file once, for report and bridge
        fingerprint = candidate.fingerprint()
    if first.shape[1] != info.dims:
        findings = diagnose(Evidence(None, thresholds.min_cosine, info.dims, first.shape[1]))
        verdict = decide(None, findings, thresholds)
        with timer.phase("bridge"):
            verdict, findings, bridged = _bridge(
                store, usable, first, candidate, info, thresholds, verdict, findings, bridge_out,
                fingerprint=fingerprint,
            )  # fmt: skip
        return build_report(
            verdict=verdict,
            store=info,
            candidate=fingerprint,
            baseline=baseline.fingerprint() if baseline else None,
            thresholds=thresholds,
            comparison=None,
            bound=None,
            findings=findings,
            seed=seed,
            sample_method=drawn.method,
            overlap=None,
            timing=timer.totals(),
            bridge=bridged,
            cache=stats_of(candidate).as_dict(),
        )

    with timer.phase("embed"):
        measured = _measure_in_rounds(
            usable, first, rounds, candidate, info, thresholds, drawn.census
        )
    with timer.phase("selfcheck"):
        broken = _selfcheck(measured, bare(candidate))
    with timer.phase("search"):
        overlap = _overlap(store, measured, thresholds.overlap_k)
    with timer.phase("diagnosis"):
        evidence = Evidence(
            measured.comparison,
            thresholds.min_cosine,
            info.dims,
            measured.vectors.shape[1],
            selfcheck=broken,
            candidate_settings=effective_settings(candidate),
            ids=measured.records.ids,
            times=RecordTimes.from_payloads(measured.records.payloads),
        )
        findings = diagnose(_with_alternatives(evidence, measured, candidate))
    baseline_fingerprint = None
    if baseline is not None:
        with timer.phase("baseline"):
            baseline_fingerprint = _baseline_agreement(baseline, measured, info)
    verdict = decide(measured.bound, findings, thresholds, overlap)
    with timer.phase("bridge"):
        verdict, findings, bridged = _bridge(
            store,
            usable,
            measured.vectors,
            candidate,
            info,
            thresholds,
            verdict,
            findings,
            bridge_out,
            fingerprint=fingerprint,
        )
    log.info("check.verdict", verdict=verdict.name, store=store.uri, candidate=candidate.uri)
    return build_report(
        verdict=verdict,
        store=info,
        candidate=fingerprint,
        baseline=baseline_fingerprint,
        thresholds=thresholds,
        comparison=measured.comparison,
        bound=measured.bound,
        findings=findings,
        seed=seed,
        sample_method=drawn.method,
        overlap=overlap,
        timing=timer.totals(),
        bridge=bridged,
        cache=stats_of(candidate).as_dict(),
    )


def _none_yet(info: StoreInfo) -> Vectors:
    """No vectors yet: zero rows (of the store's width, until the candidate says)."""
    return np.empty((0, info.dims), dtype=np.float32)


def _texts(records: RecordBatch, start: int, stop: int) -> list[str]:
    return [text or "" for text in records.texts[start:stop]]


def _with_sampled_without_text(info: StoreInfo, missing: int) -> StoreInfo:
    """The report's sample section counts the sampled records that had no text."""
    return replace(info, records_without_text=missing)


def _measure_in_rounds(
    usable: RecordBatch,
    first: Vectors,
    rounds: Sequence[int],
    candidate: EmbeddingEngine,
    info: StoreInfo,
    thresholds: Thresholds,
    census: bool,
) -> _Measured:
    """Embed round after round until the bound decides or the sample is spent."""
    vectors = first
    tokens = np.asarray(candidate.count_tokens(_texts(usable, 0, rounds[0])), dtype=np.int64)
    for number, size in enumerate(rounds, start=1):
        if size > len(vectors):
            more = _texts(usable, len(vectors), size)
            vectors = np.concatenate([vectors, candidate.embed(more)])
            tokens = np.concatenate([tokens, np.asarray(candidate.count_tokens(more), np.int64)])
        comparison = compare(usable.vectors[:size], vectors, tokens, info.distance)
        current = bound(
            comparison.failures(thresholds.min_cosine),
            size,
            threshold=thresholds.min_cosine,
            allowed_share=thresholds.allowed_share,
            confidence=thresholds.confidence,
            rounds=number,
            planned_rounds=len(rounds),
            population=len(usable) if census else None,
        )
        log.debug(
            "check.round",
            round=number,
            n=size,
            failures=current.failures,
            upper=current.share_below_threshold_upper,
            decision=current.decision,
        )
        if current.decision != "continue":
            break
    return _Measured(usable.take(range(len(vectors))), vectors, comparison, current)


def _selfcheck(measured: _Measured, candidate: EmbeddingEngine) -> tuple[Finding, ...]:
    """The candidate's own soundness: re-run a few texts, and embed a few one at a time.

    The first texts were embedded in batches during the rounds, so they are both the
    first run and the batched run.
    """
    texts = _texts(measured.records, 0, len(measured.records))
    rerun = candidate.embed(texts[:RERUN_TEXTS])
    singles = np.concatenate([candidate.embed([text]) for text in texts[:SINGLE_TEXTS]])
    return selfcheck(
        measured.vectors,
        texts,
        stored=measured.records.vectors,
        rerun=(measured.vectors[:RERUN_TEXTS], rerun),
        batching=(singles, measured.vectors[:SINGLE_TEXTS]),
    )


def _overlap(store: VectorStore, measured: _Measured, k: int) -> float | None:
    """Top-k through the store's index with the stored vector, then the candidate's.

    Records whose candidate vector has no direction (NaN, zero) are left out: stores
    refuse such queries, and the self-checks already report them.
    """
    norms = np.linalg.norm(measured.vectors, axis=1)
    usable = np.flatnonzero(np.isfinite(norms) & (norms > 0))[:OVERLAP_QUERIES]
    if usable.size == 0:
        return None
    stored_topk = store.search(measured.records.vectors[usable], k)
    candidate_topk = store.search(measured.vectors[usable], k)
    return overlap_at_k(stored_topk, candidate_topk, k)


def effective_settings(candidate: EmbeddingEngine) -> dict[str, Any]:
    """The candidate's settings as they act, so the diagnosis never re-measures the one
    in use: the URI's options, and the pooling the engine reports in its fingerprint
    (llama.cpp reads it from the GGUF metadata when the URI leaves it to the model)."""
    settings = candidate.options.vector_settings()
    pooling = candidate.fingerprint().get("settings", {}).get("pooling")
    if pooling in ("mean", "cls", "last"):
        settings["pooling"] = pooling
    return {key: value for key, value in settings.items() if value not in (None, "")}


def _with_alternatives(
    evidence: Evidence, measured: _Measured, candidate: EmbeddingEngine
) -> Evidence:
    """Re-measure the mismatching records with each setting the diagnosis wants tried,
    until one explains every mismatch; a setting that fixes none of the first
    ``PROBE_RECORDS`` (the shortest of them) is not re-measured on the rest."""
    wanted = settings_to_try(evidence)
    if not wanted:
        return evidence
    mismatching = remeasure_rows(evidence)
    matching = np.setdiff1d(np.arange(len(measured.records)), evidence.mismatching())
    rows = np.concatenate([mismatching, matching[:ALTERNATIVE_CONTROLS]])
    texts = [measured.records.texts[i] or "" for i in rows]
    stored = measured.records.vectors[rows]
    probe = min(PROBE_RECORDS, len(mismatching))
    alternatives = []
    for setting in wanted:
        try:
            engine = candidate.with_options(**setting)
        except ConfigError:  # e.g. pooling on an HTTP engine: the server decides it
            continue
        try:
            vectors = engine.embed(texts[:probe])
            if vectors.shape[1] != stored.shape[1]:
                continue
            tried = Alternative.measure(setting, rows[:probe], stored[:probe], vectors)
            if worth_remeasuring(tried, evidence) and probe < len(rows):
                vectors = np.concatenate([vectors, engine.embed(texts[probe:])])
                tried = Alternative.measure(setting, rows, stored, vectors)
        finally:
            engine.close()
        alternatives.append(tried)
        if explains_every_mismatch(tried, evidence):
            break
    return replace(evidence, alternatives=tuple(alternatives))


def _baseline_agreement(
    baseline: EmbeddingEngine, measured: _Measured, info: StoreInfo
) -> dict[str, Any]:
    """The baseline's fingerprint, plus how well it reproduces the stored vectors: a
    baseline that does not is not the engine that wrote the store."""
    n = min(len(measured.records), 200)
    vectors = baseline.embed(_texts(measured.records, 0, n))
    fingerprint = dict(baseline.fingerprint())
    if vectors.shape[1] != info.dims:
        fingerprint["agreement_with_stored"] = None
        return fingerprint
    agreement = compare(measured.records.vectors[:n], vectors, None, info.distance).cosine
    fingerprint["agreement_with_stored"] = {
        "records": n,
        "cosine_min": round(agreement.min, 6),
        "cosine_median": round(agreement.median, 6),
    }
    return fingerprint


_BRIDGEABLE = frozenset({"different_space", "dimension_mismatch"})


def _bridge(
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
    hopeless = [f for f in findings if f.cause in _BRIDGEABLE]
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
            replace(f, evidence=f.evidence + near) if f.cause in _BRIDGEABLE else f
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
    kept = (*tuple(f for f in findings if f.cause not in _BRIDGEABLE), finding)
    return (
        Verdict.of("fix_config", f"projection_mismatch: {finding.suggestion}"),
        kept,
        {"path": str(path), "passed": True, **figures},
    )


def _restated(verdict: Verdict, findings: tuple[Finding, ...]) -> Verdict:
    """The same verdict, its reasons restated from the amended findings."""
    reasons = [f"{f.cause}: {f.evidence}" for f in findings if f.cause in _BRIDGEABLE]
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
    fit_rows, _ = split(n, fit_n)
    rounds = plan_rounds(fit_n, n - fit_n)
    looks = len(rounds) * len(KINDS)
    vectors = _embedded_up_to(usable, embedded, candidate, fit_n + rounds[0])
    stored = usable.vectors.astype(np.float64)
    rescale = info.distance == "cosine"
    # Each map is fitted when first judged: a rotation that passes spares the affine fit.
    maps: dict[MapKind, LinearMap] = {}
    trials: list[Trial] = []
    for number, size in enumerate(rounds, start=1):
        vectors = _embedded_up_to(usable, vectors, candidate, fit_n + size)
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
            trial = judge(
                bridge,
                fitted_on=fit_n,
                held_out=held,
                candidate=vectors[held],
                stored=stored[held],
                threshold=thresholds.min_cosine,
                allowed_share=thresholds.allowed_share,
                confidence=thresholds.confidence,
                look=(number - 1) * len(KINDS) + index + 1,
                looks=looks,
            )
            trials.append(trial)
            log.debug("check.bridge", kind=bridge.kind, n=size, decision=trial.bound.decision)
            if trial.bound.decision == "pass":
                queries = held[:OVERLAP_QUERIES]
                bridged = bridge.apply(vectors[queries]).astype(np.float32)
                overlap = overlap_at_k(
                    store.search(usable.vectors[queries], thresholds.overlap_k),
                    store.search(bridged, thresholds.overlap_k),
                    thresholds.overlap_k,
                )
                if overlap >= thresholds.min_overlap:
                    return trials, trial, overlap
            undecided = undecided or trial.bound.decision == "continue"
        if not undecided:
            break
    return trials, None, None


def _embedded_up_to(
    usable: RecordBatch, vectors: Vectors, candidate: EmbeddingEngine, size: int
) -> Vectors:
    """The candidate's vectors of the sample's first ``size`` records, embedding the rest."""
    size = min(size, len(usable))
    if len(vectors) >= size:
        return vectors
    more = candidate.embed(_texts(usable, len(vectors), size))
    return more if len(vectors) == 0 else np.concatenate([vectors, more])


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
