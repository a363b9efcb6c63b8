"""The guard as a library: what each command does, callable from a pipeline.

Each function takes what its command takes (URIs as strings, paths, numbers), opens its
stores, engines and cache in one ``ExitStack`` and closes them however it ends, and
returns the result object its command renders. Errors are the package's own tree
(``guard.errors``): a pipeline catches ``GuardError`` and reads ``exit_code``.

Heavy modules are imported inside the functions, so ``import guard`` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guard.errors import ConfigError
from guard.progress import Progress
from guard.reindex.patience import DEFAULT_MAX_OUTAGE_S

if TYPE_CHECKING:
    from guard.cache import EmbeddingCache
    from guard.checking.report import CheckReport
    from guard.comparing.report import CompareReport
    from guard.config import CacheConfig
    from guard.reindex.catchup import CatchUp
    from guard.reindex.plan import Plan
    from guard.reindex.ray_actors import RayRunResult
    from guard.reindex.status import JobStatus
    from guard.reindex.switch import Switched
    from guard.reindex.verify import Verification
    from guard.reindex.worker import WorkerResult


def check(
    store: str,
    candidate: str,
    *,
    baseline: str | None = None,
    config: str | Path | None = None,
    sample: int | None = None,
    seed: int | None = None,
    queries: str | Path | None = None,
    thresholds: Mapping[str, Any] | None = None,
    bridge_out: str | Path | None = None,
    cache: bool = True,
    progress: Progress | None = None,
) -> CheckReport:
    """Is switching ``store``'s engine to ``candidate`` safe without re-indexing?

    ``config`` is a guard.toml whose ``[thresholds]`` and ``[cache]`` tables apply;
    ``thresholds`` overrides single thresholds by name (``min_cosine``, ...); ``sample``
    is the most records to re-embed (``max_sample``). ``queries`` (a JSONL file of
    ``{"query": ..., "relevant": [ids]}``) adds recall as stored against recall after
    the switch, and needs ``baseline``. The report's ``verdict`` and ``exit_code`` are
    those of ``guard check``.
    """
    from guard.checking.retrieval import check_retrieval, load_queries
    from guard.checking.run import run_check
    from guard.config import load_config, thresholds_from
    from guard.engines import open_engine
    from guard.stores import open_store

    settings = load_config(Path(config) if config is not None else None)
    overrides = dict(thresholds or {})
    if sample is not None:
        overrides["max_sample"] = sample
    limits = thresholds_from(overrides, base=thresholds_from(settings.thresholds))
    asked = load_queries(Path(queries)) if queries is not None else None
    if asked is not None and baseline is None:
        raise ConfigError("--queries needs --baseline: recall as stored is the baseline's")
    with ExitStack() as stack:
        embeddings = _cache(stack, settings.cache, enabled=cache)
        target = stack.enter_context(open_store(store))
        engine = stack.enter_context(open_engine(candidate))
        reference = stack.enter_context(open_engine(baseline)) if baseline else None
        report = run_check(
            target,
            engine,
            thresholds=limits,
            seed=seed or 0,
            baseline=reference,
            bridge_out=Path(bridge_out) if bridge_out is not None else None,
            cache=embeddings,
            strict=True,
            progress=progress,
        )
        if asked is not None and reference is not None:
            report = check_retrieval(
                target, engine, reference, report, asked, thresholds=limits, seed=seed or 0
            )
        return report


def compare(
    store: str,
    candidates: Sequence[str],
    *,
    baseline: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    k: int = 10,
    queries: str | Path | None = None,
    subcorpus: int = 1000,
    cache: bool = True,
    progress: Progress | None = None,
) -> CompareReport:
    """Rank ``candidates`` on one sample of ``store``: loads, verdict, speed, memory and
    retrieval quality, as ``guard compare`` does."""
    from guard.comparing.run import run_compare
    from guard.config import CacheConfig, thresholds_from
    from guard.core.policy import Thresholds
    from guard.engines import open_engine
    from guard.stores import open_store

    if isinstance(candidates, str):
        raise ConfigError("candidates is a list of engine URIs, not one string")
    overrides: dict[str, int] = {"overlap_k": k}
    if sample is not None:  # a sample below the first round's size is the first round
        overrides |= {
            "max_sample": sample,
            "initial_sample": min(sample, Thresholds().initial_sample),
        }
    asked = None
    if queries is not None:
        from guard.checking.retrieval import load_queries

        asked = load_queries(Path(queries))
    with ExitStack() as stack:
        embeddings = _cache(stack, CacheConfig(), enabled=cache)
        target = stack.enter_context(open_store(store))
        reference = stack.enter_context(open_engine(baseline)) if baseline else None
        return run_compare(
            target,
            list(candidates),
            thresholds=thresholds_from(overrides),
            seed=seed,
            baseline=reference,
            cache=embeddings,
            queries=asked,
            distractors=subcorpus,
            strict=True,
            progress=progress,
        )


def plan(
    store: str | None = None,
    candidate: str | None = None,
    *,
    from_report: str | Path | None = None,
    batch_size: int = 1000,
    window: str | None = None,
    max_rate: float | None = None,
    max_attempts: int = 5,
    baseline: str | None = None,
) -> Plan:
    """Record a re-index job, cut the source into batches and create the empty target;
    the plan's ``job_id`` names the job for the other steps. The source is only read."""
    from guard.reindex.plan import plan_job

    return plan_job(
        store=store,
        candidate=candidate,
        report=Path(from_report) if from_report is not None else None,
        batch_size=batch_size,
        window=window,
        max_rate=max_rate,
        max_attempts=max_attempts,
        baseline=baseline,
    )


def run(
    job_id: str,
    *,
    lease_seconds: float = 60.0,
    config: str | Path | None = None,
    cache: bool = True,
    progress: Progress | None = None,
    max_outage: float = DEFAULT_MAX_OUTAGE_S,
) -> WorkerResult:
    """Work on the job until it is done, paused or outside its window; safe to kill and
    call again, here or on any other machine sharing the state database. A store or
    state database gone mid-run is waited for up to ``max_outage`` seconds, then
    ``StoreUnreachable`` or ``StateUnreachable``."""
    from guard.config import load_config
    from guard.reindex.worker import run_worker

    settings = load_config(Path(config) if config is not None else None)
    with ExitStack() as stack:
        embeddings = _cache(stack, settings.cache, enabled=cache)
        return run_worker(
            job_id,
            lease_seconds=lease_seconds,
            cache=embeddings,
            progress=progress,
            max_outage=max_outage,
        )


def run_ray(
    job_id: str,
    *,
    address: str,
    actors: int,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    lease_seconds: float = 60.0,
    progress: Progress | None = None,
    max_outage: float = DEFAULT_MAX_OUTAGE_S,
) -> RayRunResult:
    """``run`` as ``actors`` Ray actors on the cluster at ``address`` (``auto``,
    ``local`` or ``ray://HOST:PORT``; the ``ray`` extra), on the same ledger as plain
    workers. The actors embed afresh: the embedding cache is a file of this machine."""
    from guard.reindex.ray_actors import run_on_ray

    return run_on_ray(
        job_id,
        address=address,
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
        lease_seconds=lease_seconds,
        progress=progress,
        max_outage=max_outage,
    )


def status(job_id: str) -> JobStatus:
    """Progress, rate, ETA and skipped records by reason."""
    from guard.reindex.status import job_status

    return job_status(job_id)


def pause(job_id: str) -> str:
    """Stop the job's workers before their next chunk; ``resume`` lets them go on."""
    from guard.reindex.status import set_paused

    return set_paused(job_id, True)


def resume(job_id: str) -> str:
    """Let the job's workers go on (failed batches get a fresh set of attempts)."""
    from guard.reindex.status import set_paused

    return set_paused(job_id, False)


def verify(
    job_id: str, *, sample: int = 64, seed: int = 0, accept_skipped: bool = False
) -> Verification:
    """Whether the target is complete and right (``.ok``), with what is not."""
    from guard.reindex.verify import verify_job

    return verify_job(job_id, sample=sample, seed=seed, accept_skipped=accept_skipped)


def catch_up(job_id: str) -> CatchUp:
    """Carry inserts, text edits and deletes made in the source since the run into the
    target."""
    from guard.reindex.catchup import catch_up as run_catch_up

    return run_catch_up(job_id)


def cutover(
    job_id: str,
    *,
    alias: str | None = None,
    force: bool = False,
    accept_skipped: bool = False,
    max_pending: int = 10_000,
) -> Switched:
    """Verify, then move readers to the target in one atomic step, with the writes made
    since the last catch-up (at most ``max_pending``) re-embedded while writers wait."""
    from guard.reindex.switch import cutover as run_cutover

    return run_cutover(
        job_id, alias=alias, force=force, accept_skipped=accept_skipped, max_pending=max_pending
    )


def rollback(
    job_id: str,
    *,
    baseline: str | None = None,
    discard_writes: bool = False,
    max_pending: int = 10_000,
) -> Switched:
    """Move readers back to the source's data, kept since the cutover, with the writes
    made since re-embedded by the baseline engine (``baseline``, else the job's)."""
    from guard.reindex.switch import rollback as run_rollback

    return run_rollback(
        job_id, baseline=baseline, discard_writes=discard_writes, max_pending=max_pending
    )


def cleanup(job_id: str) -> Switched:
    """Drop the data no reader is served any more (the old source after a cutover, the
    target after a rollback)."""
    from guard.reindex.switch import cleanup as run_cleanup

    return run_cleanup(job_id)


def _cache(stack: ExitStack, settings: CacheConfig, *, enabled: bool) -> EmbeddingCache | None:
    from guard.cache import open_cache

    embeddings = open_cache(settings, no_cache=not enabled)
    return stack.enter_context(embeddings) if embeddings is not None else None
