"""One run of one watch: the sample check and the population check.

The sample check re-embeds a seeded sample with the production engine and compares it
with the stored vectors, as `guard check` does, without the diagnosis: a monitor asks
"has anything changed?", and alerts only on evidence. The status is ``drift`` when even
the bound's *lower* share of records below ``min_cosine`` exceeds ``allowed_share``, or
overlap@k falls below ``min_overlap``; a small sample that cannot prove safety does not
alert (`guard check` proves safety, with as many rounds as it takes).

The population check compares the records written since the previous run with older
ones (guard.core.population). "Written since the previous run": with integer ids, the
ids above the largest id the previous run saw; with string ids (UUIDs), the ids not in
the set the previous runs saw, which costs a scan of every id each run. The first run
only takes that snapshot (a scan of every id, once).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from guard.cache import EmbeddingCache, cached, stats_of
from guard.checking.overlap import overlap_through_index
from guard.config import WatchConfig
from guard.core.cosines import compare
from guard.core.diagnosis import mixed_store
from guard.core.evidence import Evidence, RecordTimes
from guard.core.policy import Thresholds
from guard.core.population import PopulationDrift, population_drift
from guard.core.stats import bound
from guard.engines import EmbeddingEngine, open_engine
from guard.errors import GuardError, StoreError
from guard.logs import get_logger
from guard.monitor.history import History
from guard.monitor.results import SampleCheck, WatchRun, WatchStatus, Watermark
from guard.records import RecordId, StoreInfo, Vectors
from guard.stores import VectorStore, open_store
from guard.uri import redact

log = get_logger(__name__)

OVERLAP_QUERIES = 20
SCAN_BATCH = 1000


def run_watch(
    watch: WatchConfig,
    history: History,
    *,
    thresholds: Thresholds,
    population_sample: int,
    cache: EmbeddingCache | None = None,
) -> WatchRun:
    """Measure one watch; every failure becomes a run with status ``error``, never raises.

    With ``cache``, sampled texts embedded before under the same fingerprint (which
    holds the model file's sha256) are not embedded again."""
    started = datetime.now(UTC)
    seed = time.time_ns() % 2**31  # a fresh, recorded sample each run
    try:
        with open_store(watch.store) as store, cached(open_engine(watch.engine), cache) as engine:
            sample, new, population, watermark, from_cache = _measure(
                watch, history, store, engine, thresholds, population_sample, seed
            )
    except Exception as exc:  # a run's failure is recorded and alerted, never raised
        message = str(exc) if isinstance(exc, GuardError) else f"{type(exc).__name__}: {exc}"
        log.warning("monitor.run_failed", watch=watch.name, error=redact(message))
        return WatchRun(
            watch.name,
            redact(watch.store),
            redact(watch.engine),
            "error",
            started,
            datetime.now(UTC),
            seed,
            None,
            None,
            None,
            (),
            redact(message),
        )
    reasons = _reasons(sample, population, thresholds)
    status: WatchStatus = "drift" if reasons else "ok"
    return WatchRun(
        watch.name,
        redact(watch.store),
        redact(watch.engine),
        status,
        started,
        datetime.now(UTC),
        seed,
        sample,
        new,
        population,
        tuple(reasons),
        watermark=watermark,
        cache=from_cache,
    )


def _measure(
    watch: WatchConfig,
    history: History,
    store: VectorStore,
    engine: EmbeddingEngine,
    thresholds: Thresholds,
    population_sample: int,
    seed: int,
) -> tuple[SampleCheck, int | None, PopulationDrift | None, Watermark, dict[str, Any]]:
    """The sample check and the population check of one run, on open resources."""
    info = store.describe()
    if info.count == 0:
        raise StoreError("the store is empty", uri=store.uri)
    sample = sample_check(store, engine, info, thresholds, watch.sample, seed)
    new, population, watermark = population_check(
        store, history, watch.name, population_sample, seed
    )
    return sample, new, population, watermark, stats_of(engine).as_dict()


def sample_check(
    store: VectorStore,
    engine: EmbeddingEngine,
    info: StoreInfo,
    thresholds: Thresholds,
    size: int,
    seed: int,
) -> SampleCheck:
    """Re-embed a seeded sample of ``size`` records and compare with the stored vectors."""
    drawn = store.sample(size, seed=seed)
    usable = drawn.with_text()
    if len(usable) == 0:
        raise StoreError(f"none of the {len(drawn)} sampled records has text", uri=store.uri)
    vectors = engine.embed([text or "" for text in usable.texts])
    if vectors.shape[1] != info.dims:
        return SampleCheck(len(usable), len(usable), None, None, 1.0, 1.0, None, drifted=True)
    comparison = compare(usable.vectors, vectors, None, info.distance)
    failures = comparison.failures(thresholds.min_cosine)
    evidence = Evidence(
        comparison,
        thresholds.min_cosine,
        info.dims,
        info.dims,
        ids=usable.ids,
        times=RecordTimes.from_payloads(usable.payloads),
    )
    mixed = mixed_store(evidence)
    measured = bound(
        failures,
        len(usable),
        threshold=thresholds.min_cosine,
        allowed_share=thresholds.allowed_share,
        confidence=thresholds.confidence,
        # drawn without repeats from a store of known size: exact (hypergeometric)
        population=len(usable) if len(drawn) == info.count else info.count,
    )
    overlap = overlap_through_index(
        store, usable.vectors, vectors, thresholds.overlap_k, queries=OVERLAP_QUERIES
    )
    drifted = (
        measured.share_below_threshold_lower > thresholds.allowed_share
        or overlap is None
        or overlap < thresholds.min_overlap
    )
    return SampleCheck(
        n=len(usable),
        failures=failures,
        cosine_p1=comparison.cosine.p1,
        cosine_median=comparison.cosine.median,
        bound_upper=measured.share_below_threshold_upper,
        bound_lower=measured.share_below_threshold_lower,
        overlap=overlap,
        drifted=drifted,
        mixed_store=mixed.evidence if mixed else None,
    )


def population_check(
    store: VectorStore, history: History, watch: str, cap: int, seed: int
) -> tuple[int | None, PopulationDrift | None, Watermark]:
    """The number of records written since the previous run and, when there are enough,
    how their vectors compare with a sample of older ones; and the watermark that
    recording this run moves on to (nothing is written here)."""
    state = history.state(watch)
    if state.max_int_id is not None:
        new_ids, new_vectors, largest = _scan_after(store, state.max_int_id, cap, seed)
        watermark = Watermark(largest)
    else:
        seen = history.seen_ids(watch) if state.known else set()
        new_ids, new_vectors, all_int, largest_seen = _scan_unseen(store, seen, cap, seed)
        if all_int:  # from now on the cheap way: ids above the largest one seen
            watermark = Watermark(largest_seen)
        else:
            watermark = Watermark(None, tuple(str(i) for i in new_ids))
    if not state.known:
        return None, None, watermark
    if not new_ids:
        return 0, None, watermark
    fresh = set(new_ids)
    older = store.sample(cap + min(len(fresh), cap), seed=seed)
    keep = [i for i, record_id in enumerate(older.ids) if record_id not in fresh][:cap]
    drift = population_drift(older.vectors[keep], new_vectors, seed=seed)
    return len(new_ids), drift, watermark


def _scan_after(
    store: VectorStore, after: int, cap: int, seed: int
) -> tuple[list[RecordId], Vectors, int]:
    """Records with integer ids above ``after``: their ids, up to ``cap`` of their vectors
    (drawn at random when there are more), and the largest id."""
    ids: list[RecordId] = []
    kept: list[Vectors] = []
    largest = after
    for batch in store.scan(batch_size=SCAN_BATCH, after=after):
        ids.extend(batch.ids)
        kept.append(batch.vectors)
        largest = max([largest, *(int(i) for i in batch.ids)])
        kept = [_at_most(np.concatenate(kept), 2 * cap, seed)]
    return ids, _at_most(_stack(kept), cap, seed), largest


def _scan_unseen(
    store: VectorStore, seen: set[str], cap: int, seed: int
) -> tuple[list[RecordId], Vectors, bool, int | None]:
    """Records whose id is not in ``seen``; also whether every id is an integer, and the
    largest one if so."""
    ids: list[RecordId] = []
    kept: list[Vectors] = []
    all_int = True
    largest: int | None = None
    for batch in store.scan(batch_size=SCAN_BATCH):
        rows = [i for i, record_id in enumerate(batch.ids) if str(record_id) not in seen]
        for record_id in batch.ids:
            if isinstance(record_id, int):
                largest = record_id if largest is None else max(largest, record_id)
            else:
                all_int = False
        ids.extend(batch.ids[i] for i in rows)
        kept.append(batch.vectors[rows])
        kept = [_at_most(np.concatenate(kept), 2 * cap, seed)]
    return ids, _at_most(_stack(kept), cap, seed), all_int, largest


def _stack(parts: list[Vectors]) -> Vectors:
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _at_most(vectors: Vectors, n: int, seed: int) -> Vectors:
    if len(vectors) <= n:
        return vectors
    rows = np.random.default_rng(seed).choice(len(vectors), size=n, replace=False)
    return vectors[np.sort(rows)]


def _reasons(
    sample: SampleCheck, population: PopulationDrift | None, thresholds: Thresholds
) -> list[str]:
    reasons = []
    if sample.drifted:
        if sample.cosine_median is None:
            reasons.append("the engine's vectors have other dimensions than the stored ones")
        else:
            lower = sample.bound_lower or 0.0
            if lower > thresholds.allowed_share:
                reasons.append(
                    f"{sample.failures} of {sample.n} sampled records fall below cosine "
                    f"{thresholds.min_cosine:g} (at least {lower:.1%} of the store at "
                    f"{thresholds.confidence:.0%} confidence)"
                )
            if sample.overlap is not None and sample.overlap < thresholds.min_overlap:
                reasons.append(
                    f"overlap@{thresholds.overlap_k} is {sample.overlap:.3f}, "
                    f"below {thresholds.min_overlap:g}"
                )
            if sample.mixed_store:
                reasons.append(f"mixed_store: {sample.mixed_store}")
    if population is not None and population.drifted:
        reasons.append(
            f"the {population.current} records written since the previous run differ from "
            f"older ones: domain-classifier AUC {population.auc:.3f} > "
            f"{population.auc_threshold:.3f} (mean-vector cosine distance "
            f"{population.mean_distance:.3f})"
        )
    return reasons
