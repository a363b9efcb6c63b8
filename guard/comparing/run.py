"""`guard compare`: several candidate engines judged on one shared sample of a store.

The store is sampled once (``guard.checking.sample.draw_sample``); each candidate in turn is
warmed up (which loads it), timed on the first round's texts, and checked by
``guard.check.check_drawn`` on that same sample, reusing the timed vectors, so the
verdict is exactly the one `guard check` gives. A candidate that does not load, or
fails midway, becomes a row with its reason; the others go on. ``guard.core.ranking``
orders the rows and decides the exit code.

Speed: texts and tokens per second of one ``embed`` call over the first round's texts,
after a warm-up call on a few of them; candidates run one after another in this process.
Memory: the rise of this process's resident-set high-water mark (``VmHWM``) over its
resident set (``VmRSS``) just before the candidate loaded; the mark is reset through
``/proc/self/clear_refs`` first (Linux), so the figure is what this candidate added at
its peak, model and working buffers together. Elsewhere it is None.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from guard.cache import CachedEngine, EmbeddingCache, cached
from guard.checking.retrieval import (
    SUBCORPUS_DISTRACTORS,
    Context,
    QuerySet,
    judged,
    measure,
    prepare,
    synthetic_queries,
)
from guard.checking.run import check_drawn
from guard.checking.sample import DrawnSample, draw_sample
from guard.comparing.report import CandidateRow, CompareReport, Speed, build_compare_report
from guard.core.policy import Thresholds
from guard.engines import EmbeddingEngine, open_engine
from guard.errors import ConfigError, EngineError
from guard.logs import get_logger
from guard.progress import Progress
from guard.stores import VectorStore

log = get_logger(__name__)

# Texts embedded once before timing: loads the model and warms its buffers.
WARMUP_TEXTS = 8
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def run_compare(
    store: VectorStore,
    candidates: Sequence[str],
    *,
    thresholds: Thresholds,
    seed: int,
    baseline: EmbeddingEngine | None = None,
    cache: EmbeddingCache | None = None,
    queries: QuerySet | None = None,
    distractors: int = SUBCORPUS_DISTRACTORS,
    strict: bool = False,
    progress: Progress | None = None,
) -> CompareReport:
    """Judge every candidate URI on one draw from ``store``; the report is ranked.

    With ``cache``, each check and the retrieval measurement read through it; the timed
    pass never does (speed is the engine's), but its vectors go into the cache. Without
    one, the run uses its own in a temporary folder, so the sub-corpus is not embedded
    a second time where the check already embedded it.

    Retrieval quality is measured on ``queries``, or on queries derived from the
    sample's texts (``synthetic``); the re-index sub-corpus holds ``distractors`` of the
    sample's records. Candidate URIs that cannot even be parsed (unknown scheme, bad
    option) are a ConfigError before anything is measured; failures to load are rows.
    ``strict`` refuses a sample limit that can never approve (guard.checking.sample)."""
    engines = _open_all(candidates)
    scratch = None
    if cache is None:  # this run's own: retrieval reuses the vectors each check made
        scratch = tempfile.TemporaryDirectory(prefix="guard-compare-")
        cache = EmbeddingCache(Path(scratch.name) / "run.sqlite")
    try:
        drawn = draw_sample(store, thresholds, seed, strict=strict)
        if baseline is not None:  # loaded now, so no candidate's memory figure holds it
            baseline.embed(_first_texts(drawn)[:1])
        context = prepare(
            store,
            drawn.info,
            queries or synthetic_queries(drawn.usable),
            k=thresholds.overlap_k,
            seed=seed,
            baseline=baseline,
            pool=drawn.usable,
            distractors=distractors,
        )
        rows = []
        for number, engine in enumerate(engines, start=1):
            # closed after its row, so the next candidate's memory starts from here
            with engine:
                named = _prefixed(progress, f"{number}/{len(engines)} {engine.uri}")
                rows.append(
                    _measure(
                        store, drawn, engine, thresholds, seed, baseline, cache, context, named
                    )
                )
    finally:
        for engine in engines:
            engine.close()
        if scratch is not None:
            cache.close()
            scratch.cleanup()
    return build_compare_report(drawn, rows, thresholds=thresholds, seed=seed, context=context)


def _open_all(candidates: Sequence[str]) -> list[EmbeddingEngine]:
    engines: list[EmbeddingEngine] = []
    try:
        for uri in candidates:
            engines.append(open_engine(uri))
    except Exception:
        for engine in engines:
            engine.close()
        raise
    return engines


def _first_texts(drawn: DrawnSample) -> list[str]:
    """The first round's texts: the same for every candidate, and timed for each."""
    return [text or "" for text in drawn.usable.texts[: drawn.rounds[0]]]


def _prefixed(progress: Progress | None, prefix: str) -> Progress | None:
    """Each candidate's progress lines, named."""
    if progress is None:
        return None
    report = progress
    return lambda line: report(f"{prefix}: {line}")


def _measure(
    store: VectorStore,
    drawn: DrawnSample,
    engine: EmbeddingEngine,
    thresholds: Thresholds,
    seed: int,
    baseline: EmbeddingEngine | None,
    cache: EmbeddingCache | None,
    context: Context,
    progress: Progress | None = None,
) -> CandidateRow:
    """One candidate's row: load, speed, the check on the shared sample, retrieval."""
    texts = _first_texts(drawn)
    base = _reset_peak_rss()
    try:
        engine.embed(texts[:WARMUP_TEXTS])
    except (EngineError, ConfigError) as exc:
        log.info("compare.not_loaded", candidate=engine.uri, error=str(exc))
        return CandidateRow.not_loaded(engine.uri, str(exc))
    speed: Speed | None = None
    try:
        started = time.perf_counter()
        vectors = engine.embed(texts)
        seconds = time.perf_counter() - started
        tokens = sum(engine.count_tokens(texts))
        speed = Speed(
            texts=len(texts),
            tokens=tokens,
            seconds=seconds,
            model_bytes=_model_bytes(engine),
            peak_rss_added_bytes=None,
        )
        if cache is not None:
            CachedEngine(engine, cache).remember(texts, vectors)
        report = check_drawn(
            store,
            drawn,
            engine,
            thresholds=thresholds,
            seed=seed,
            baseline=baseline,
            embedded=vectors,
            cache=cache,
            progress=progress,
        )
        bridge = report.bridge or {}
        measured = measure(
            context,
            cached(engine, cache),
            corpus_vectors=vectors,
            fitted_bridge=bridge.get("path") if bridge.get("passed") else None,
        )
        report = judged(report, measured, context.queries, thresholds)
    except (EngineError, ConfigError) as exc:
        log.info("compare.failed", candidate=engine.uri, error=str(exc))
        return CandidateRow.failed(engine.uri, str(exc), speed)
    speed = replace(speed, peak_rss_added_bytes=_rss_added(base))
    log.info("compare.judged", candidate=engine.uri, verdict=report.verdict)
    return CandidateRow.judged(engine.uri, report, speed, measured.figures())


def _model_bytes(engine: EmbeddingEngine) -> int | None:
    """Bytes of the model file or folder of a local engine; None for served models."""
    path = getattr(engine, "path", None)
    if not isinstance(path, Path):
        return None
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def _status_bytes(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def _reset_peak_rss() -> int | None:
    """Reset the high-water mark to the current resident set; that set, or None where
    the mark cannot be reset."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def _rss_added(base: int | None) -> int | None:
    peak = _status_bytes("VmHWM")
    if base is None or peak is None:
        return None
    return max(0, peak - base)
