"""``guard reindex plan``: measure the candidate, cut the source into keyset batches,
record the job and create its empty target (no job is left without a target)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb

from guard import faults
from guard.core.cosines import rowwise_cosine
from guard.engines import EmbeddingEngine, open_engine
from guard.errors import ConfigError, ReindexError, TextTooLongError
from guard.hashing import fingerprint_sha256
from guard.logs import get_logger
from guard.records import RecordId
from guard.reindex.provenance import Window, has_text, short_id
from guard.secrets import strip
from guard.state import Conn, connect
from guard.stores import VectorStore, open_reindex, open_store
from guard.uri import redact

log = get_logger(__name__)


RATE_SAMPLE = 32  # texts embedded at plan time to measure the engine's rate


DEFAULT_MAX_ATTEMPTS = 5
BASELINE_SAMPLE = 16  # stored records a baseline must reproduce
BASELINE_MIN_COSINE = 0.99


@dataclass(frozen=True)
class Plan:
    job_id: str
    source: str  # redacted
    target: str  # redacted
    records: int
    batches: int
    dims: int
    distance: str
    measured_rate: float  # texts per second, measured at plan time
    estimated_seconds: float
    window: str | None
    max_rate: float | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        # The fields in order, except that the target comes before the source.
        first = {"job_id": self.job_id, "target": self.target}
        return (
            first
            | asdict(self)
            | {
                "measured_rate": round(self.measured_rate, 2),
                "estimated_seconds": round(self.estimated_seconds, 1),
            }
        )


def read_report(path: Path) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(store URI, candidate fingerprint, verdict) from a ``guard check`` JSON report."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the check report {path}: {exc}") from exc
    if not isinstance(report, dict):
        raise ConfigError(f"{path} is not a guard check JSON report")
    store = report.get("store")
    uri = store.get("uri") if isinstance(store, dict) else None
    candidate = report.get("candidate")
    verdict = report.get("verdict")
    return (
        uri if isinstance(uri, str) else None,
        candidate if isinstance(candidate, dict) else None,
        verdict if isinstance(verdict, str) else None,
    )


def plan_job(
    *,
    store: str | None,
    candidate: str | None,
    report: Path | None = None,
    batch_size: int = 1000,
    window: str | None = None,
    max_rate: float | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    baseline: str | None = None,
    dsn: str | None = None,
) -> Plan:
    """Record a job, cut the source ids into keyset batches and create the empty target.

    The source is only read. Flags win over the report; a report's candidate fingerprint
    must match the candidate given, so a job never embeds with an engine nobody checked.
    ``baseline`` (the engine the stored vectors were made with) is checked against them:
    rollback re-embeds the writes made since cutover with it, and ``serve --follow``
    serves it until the cutover.
    """
    notes: list[str] = []
    report_fingerprint: dict[str, Any] | None = None
    if report is not None:
        report_store, report_fingerprint, verdict = read_report(report)
        store = store or report_store
        if verdict and verdict != "reindex":
            notes.append(f"the report's verdict is {verdict!r}, not 'reindex'")
        if report_store and "***" in report_store and store == report_store:
            raise ConfigError(
                "the report holds the store URI without its password; pass --store, or give "
                "the password through the environment (PGPASSWORD)"
            )
    if not store:
        raise ConfigError("give the store with --store or --from-report")
    if not candidate:
        raise ConfigError("give the candidate engine URI with --candidate")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    if max_rate is not None and max_rate <= 0:
        raise ConfigError(f"--max-rate must be positive, not {max_rate}")
    if max_attempts < 1:
        raise ConfigError(f"--max-attempts must be at least 1, not {max_attempts}")
    parsed_window = Window.parse(window) if window else None

    job_id = uuid.uuid4()
    with ExitStack() as stack:
        reindex = stack.enter_context(open_reindex(store))
        target = reindex.renamed(f"{reindex.name()}__{short_id(job_id)}")
        source_store = stack.enter_context(open_store(store))
        engine = stack.enter_context(open_engine(candidate))
        info = source_store.describe()
        if info.count == 0:
            raise ReindexError(f"the source store is empty: {redact(store)}")
        fingerprint = engine.fingerprint()
        if report_fingerprint is not None and fingerprint_sha256(
            report_fingerprint
        ) != fingerprint_sha256(fingerprint):
            raise ConfigError(
                "the candidate's fingerprint differs from the one in the report; "
                "check this candidate first"
            )
        dims, rate = _measure(engine, source_store)
        if baseline:
            check_baseline(baseline, source_store)
        part = reindex.selects_part()
        if part:
            _refuse_other_dims(info.dims, dims)
        notes += reindex.switch_notes() + _secret_notes(store, candidate)
        with connect(dsn) as conn:
            batches = _insert_job(
                conn, job_id, strip(store), strip(target), strip(candidate), fingerprint,
                dims, info.distance, batch_size, max_attempts, parsed_window, max_rate, rate,
                _cut(source_store, batch_size), strip(baseline) if baseline else None,
            )  # fmt: skip
            try:
                faults.step("plan.create_target")
                reindex.create_target(target, dims=dims, info=info)
                if part:
                    copied = reindex.copy_others(store, target)
                    notes.append(
                        f"{copied} rows outside the selection copied into the target unchanged;"
                        " cutover copies those written meanwhile again"
                    )
            except BaseException:  # any failure, Ctrl-C too: no job without a target
                conn.execute("DELETE FROM guard_reindex_jobs WHERE id = %s", (job_id,))
                raise
            total = conn.execute(
                "SELECT total_records FROM guard_reindex_jobs WHERE id = %s", (job_id,)
            ).fetchone()
    records = int(total[0]) if total else 0
    effective = min(rate, max_rate) if max_rate else rate
    plan = Plan(
        job_id=str(job_id),
        source=redact(store),
        target=redact(target),
        records=records,
        batches=batches,
        dims=dims,
        distance=info.distance,
        measured_rate=rate,
        estimated_seconds=records / effective if effective > 0 else float("inf"),
        window=str(parsed_window) if parsed_window else None,
        max_rate=max_rate,
        notes=notes,
    )
    log.info("re-index planned", job=plan.job_id, target=plan.target, records=records)
    return plan


def _refuse_other_dims(source_dims: int, candidate_dims: int) -> None:
    """The rows outside a re-indexed selection keep their vectors, so the candidate must
    make vectors of their size (a Qdrant collection has one size per vector, and a typed
    pgvector column too)."""
    if source_dims != candidate_dims:
        raise ConfigError(
            f"the candidate makes {candidate_dims}-dimensional vectors and the stored ones have"
            f" {source_dims}: one collection of a shared table or collection can only be"
            " re-indexed by an engine of the same size (the others keep their vectors);"
            " write the collection to a store of its own"
        )


def _secret_notes(store: str, candidate: str) -> list[str]:
    """Where later commands find the secrets the state database does not keep."""
    notes = []
    if strip(store) != store:
        notes.append(
            "the store URI's password is not kept: give it to run, verify, catch-up and"
            " cutover through the environment (PGPASSWORD or ~/.pgpass)"
        )
    if strip(candidate) != candidate:
        notes.append(
            "the candidate URI's secret is not kept: give the key through the environment"
            " variable named by api_key_env="
        )
    return notes


def _measure(engine: EmbeddingEngine, store: VectorStore) -> tuple[int, float]:
    """(candidate dims, texts per second) on a few stored texts, after one warm-up call."""
    texts = [t for t in store.sample(RATE_SAMPLE, seed=0).texts if t is not None and has_text(t)]
    if not texts:
        raise ReindexError("no stored record has text to embed; nothing to re-index")
    texts = _accepted(engine, texts)
    if not texts:
        raise ReindexError(
            "the candidate refuses every sampled text as over its token limit (truncate=false)"
        )
    dims = int(engine.embed(texts[:1]).shape[1])
    started = time.perf_counter()
    engine.embed(texts)
    elapsed = time.perf_counter() - started
    return dims, len(texts) / elapsed if elapsed > 0 else float("inf")


def check_baseline(baseline: str, store: VectorStore) -> None:
    """Refuse a baseline that does not make the stored vectors: rollback would write its
    vectors next to them, in another space. Compared on a few stored texts."""
    sample = store.sample(BASELINE_SAMPLE, seed=1)
    keep = [i for i, text in enumerate(sample.texts) if has_text(text)]
    if not keep:
        return
    drawn = sample.take(keep)
    with open_engine(baseline) as engine:
        fresh = engine.embed([str(text) for text in drawn.texts])
    if fresh.shape[1] != drawn.vectors.shape[1]:
        raise ConfigError(
            f"the baseline makes {fresh.shape[1]}-dimensional vectors and the stored ones have"
            f" {drawn.vectors.shape[1]}: it is not the engine they were made with"
        )
    median = float(np.median(rowwise_cosine(drawn.vectors, fresh)[0]))
    if median < BASELINE_MIN_COSINE:
        raise ConfigError(
            f"the baseline does not reproduce the stored vectors (median cosine {median:.3f}"
            f" on {len(keep)} records, {BASELINE_MIN_COSINE} needed): it is not the engine"
            " they were made with"
        )


def _accepted(engine: EmbeddingEngine, texts: list[str]) -> list[str]:
    """The texts the engine embeds: with truncate=false it refuses long ones, which the
    workers will skip as ``too_long``, and which must not stop the plan."""
    if engine.options.truncate:
        return texts
    kept = []
    for text in texts:
        try:
            engine.embed([text])
        except TextTooLongError:
            continue
        kept.append(text)
    return kept


def _cut(store: VectorStore, batch_size: int) -> Iterator[tuple[RecordId | None, int]]:
    """(after_id, planned records) of each batch: one pass over the ids, a cut every
    ``batch_size`` ids. The last batch is open-ended, so records inserted above the
    highest id during the job are still covered."""
    after: RecordId | None = None
    count = 0
    for page in store.scan(batch_size=min(batch_size, 1000)):
        for record_id in page.ids:
            count += 1
            if count == batch_size:
                yield after, count
                after, count = record_id, 0
    if count:
        yield after, count


def _insert_job(
    conn: Conn,
    job_id: uuid.UUID,
    source: str,
    target: str,
    candidate: str,
    fingerprint: dict[str, Any],
    dims: int,
    distance: str,
    batch_size: int,
    max_attempts: int,
    window: Window | None,
    max_rate: float | None,
    rate: float,
    cuts: Iterator[tuple[RecordId | None, int]],
    baseline: str | None,
) -> int:
    """The job row and its batches in one transaction; returns the number of batches."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO guard_reindex_jobs (id, source_uri, target_uri, candidate_uri,"
            " fingerprint, fingerprint_hash, dims, distance, total_records, batch_size,"
            " max_attempts, window_start, window_end, max_rate, measured_rate, baseline_uri)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, %s, %s, %s, %s, %s, %s, %s)",
            (
                job_id, source, target, candidate, Jsonb(fingerprint),
                fingerprint_sha256(fingerprint), dims, distance, batch_size, max_attempts,
                window.start if window else None, window.end if window else None,
                max_rate, rate, baseline,
            ),
        )  # fmt: skip
        bounds: list[tuple[RecordId | None, int]] = list(cuts)
        rows = []
        for seq, (after, planned) in enumerate(bounds):
            last = bounds[seq + 1][0] if seq + 1 < len(bounds) else None
            rows.append((job_id, seq, _json(after), _json(last), planned))
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO guard_reindex_batches (job_id, seq, after_id, last_id,"
                " planned_records) VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
        conn.execute(
            "UPDATE guard_reindex_jobs SET total_records = %s WHERE id = %s",
            (sum(planned for _, planned in bounds), job_id),
        )
    return len(bounds)


def _json(record_id: RecordId | None) -> Jsonb | None:
    return None if record_id is None else Jsonb(record_id)
