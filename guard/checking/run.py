"""One `guard check`: the imperative shell around the comparison core.

It draws the sample (sample.py), re-embeds in rounds until the bound decides
(rounds.py), self-checks the candidate, measures retrieval agreement through the
store's own index, re-measures mismatches with the settings the diagnosis asks for,
lets the policy decide, and tries a bridge where another space explains a re-index
(bridge.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from guard.cache import RERUN, SINGLE, EmbeddingCache, again, cached, stats_of
from guard.checking.bridge import try_bridge
from guard.checking.overlap import overlap_through_index
from guard.checking.report import CheckReport, build_report
from guard.checking.rounds import Measured, embedded_up_to, measure_in_rounds, none_yet, texts_of
from guard.checking.sample import DrawnSample, Timer, draw_sample
from guard.core.cosines import compare
from guard.core.diagnosis import (
    PROBE_RECORDS,
    diagnose,
    explains_every_mismatch,
    remeasure_rows,
    settings_to_try,
    worth_remeasuring,
)
from guard.core.evidence import Alternative, Evidence, RecordTimes
from guard.core.findings import Finding
from guard.core.policy import Thresholds, decide
from guard.core.selfcheck import agree, selfcheck
from guard.engines import EmbeddingEngine
from guard.errors import ConfigError
from guard.logs import get_logger
from guard.progress import Progress
from guard.records import StoreInfo, Vectors
from guard.stores import VectorStore

log = get_logger(__name__)

# Texts embedded one at a time to test batching (and, when they agree, determinism), and
# embedded again in a batch to test determinism when they do not.
RERUN_TEXTS = 16
SINGLE_TEXTS = 8
# Matching records re-measured per alternative setting as controls, after the
# mismatching ones (``remeasure_rows``: as many as an alternative needs to explain them).
ALTERNATIVE_CONTROLS = 8


def run_check(
    store: VectorStore,
    candidate: EmbeddingEngine,
    *,
    thresholds: Thresholds,
    seed: int,
    baseline: EmbeddingEngine | None = None,
    bridge_out: Path | None = None,
    cache: EmbeddingCache | None = None,
    strict: bool = False,
    progress: Progress | None = None,
) -> CheckReport:
    """Check ``candidate`` against the vectors in ``store``; the report holds the verdict.

    With ``cache``, vectors the candidate already made for the same texts under the same
    fingerprint are reused, and so are its token counts and self-check runs.

    When the verdict would be ``reindex`` for another space or size, a linear bridge is
    fitted and judged on held-out records; one that passes is written to ``bridge_out``
    (default under GUARD_HOME) and turns the verdict into ``fix_config``. ``strict``
    refuses a sample limit that can never approve the store (guard.checking.sample)."""
    timer = Timer()
    drawn = draw_sample(store, thresholds, seed, timer, strict=strict)
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
        progress=progress,
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
    timer: Timer | None = None,
    cache: EmbeddingCache | None = None,
    progress: Progress | None = None,
) -> CheckReport:
    """``run_check`` on a sample already drawn with the same ``thresholds`` and ``seed``.

    ``embedded`` holds the candidate's vectors of the first ``drawn.rounds[0]`` records
    when the caller has made them already (compare times that pass), so they are not
    embedded twice."""
    timer = timer or Timer()
    candidate = cached(candidate, cache)
    info, usable, rounds = drawn.info, drawn.usable, drawn.rounds
    with timer.phase("embed"):
        first = embedded_up_to(
            usable, none_yet(info) if embedded is None else embedded, candidate, rounds[0]
        )[: rounds[0]]
    with timer.phase("fingerprint"):  # hashes the model file once, for report and bridge
        fingerprint = candidate.fingerprint()
    if first.shape[1] != info.dims:
        findings = diagnose(Evidence(None, thresholds.min_cosine, info.dims, first.shape[1]))
        verdict = decide(None, findings, thresholds)
        with timer.phase("bridge"):
            verdict, findings, bridged = try_bridge(
                store, usable, first, candidate, info, thresholds, verdict, findings, bridge_out,
                fingerprint=fingerprint, population=drawn.plan.population,
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
        measured = measure_in_rounds(
            usable, first, drawn.plan, candidate, info, thresholds, progress
        )
    with timer.phase("selfcheck"):
        broken = _selfcheck(measured, candidate)
    with timer.phase("search"):
        overlap = overlap_through_index(
            store, measured.records.vectors, measured.vectors, thresholds.overlap_k
        )
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
            baseline_fingerprint = _baseline_agreement(cached(baseline, cache), measured, info)
    verdict = decide(measured.bound, findings, thresholds, overlap)
    with timer.phase("bridge"):
        verdict, findings, bridged = try_bridge(
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
            population=drawn.plan.population,
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


def _selfcheck(measured: Measured, candidate: EmbeddingEngine) -> tuple[Finding, ...]:
    """The candidate's own soundness: embed a few texts one at a time, and only when one
    of them moved, embed a few again in a batch to tell nondeterminism from batching.

    The first texts were embedded in batches during the rounds. A text that gets its
    batched vector back when embedded alone was embedded twice alike, so agreeing
    singles answer both questions and the second batch (most of the self-check's time)
    is spent only where it can change the finding. Through a cache these runs are kept
    under their own keys (cache.again): the first check embeds them afresh, and its
    rerun reaches the same outcome without the model.
    """
    texts = texts_of(measured.records, 0, len(measured.records))
    single = again(candidate, SINGLE)
    singles = np.concatenate([single.embed([text]) for text in texts[:SINGLE_TEXTS]])
    batched = measured.vectors[:SINGLE_TEXTS]
    rerun = None
    if not agree(singles, batched):
        rerun = (measured.vectors[:RERUN_TEXTS], again(candidate, RERUN).embed(texts[:RERUN_TEXTS]))
    return selfcheck(
        measured.vectors,
        texts,
        stored=measured.records.vectors,
        rerun=rerun,
        batching=(singles, batched),
    )


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
    evidence: Evidence, measured: Measured, candidate: EmbeddingEngine
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
    baseline: EmbeddingEngine, measured: Measured, info: StoreInfo
) -> dict[str, Any]:
    """The baseline's fingerprint, plus how well it reproduces the stored vectors: a
    baseline that does not is not the engine that wrote the store."""
    n = min(len(measured.records), 200)
    vectors = baseline.embed(texts_of(measured.records, 0, n))
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
