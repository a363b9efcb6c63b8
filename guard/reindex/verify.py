"""``guard reindex verify``: prove the target complete and right before anyone switches.

Three checks: every batch done; the target holds exactly the source ids, each with the
source's current text (the target's record is a copy of the source's, made when it was
embedded; one merged pass over both stores in id order, so memory does not grow with the
collection); and a random sample of target vectors equals fresh embeddings of their
texts by the candidate. Only this job's worker writes the target before cutover, with
the job's engine (a worker refuses another fingerprint), so the text decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from guard.engines import open_engine
from guard.hashing import text_sha256
from guard.records import RecordId
from guard.reindex.embedding import check_engine
from guard.reindex.jobs import Job, load_job
from guard.reindex.places import locations
from guard.reindex.provenance import has_text
from guard.state import Conn, connect
from guard.stores import open_reindex, open_store
from guard.streams import Row, id_key, merge, rows

SCAN_PAGE = 1000
# Stored vectors may be normalised by the store (Qdrant does for cosine) or pass through
# float16, and llama.cpp's quantised kernels move a vector by up to 2e-4 between a text
# embedded alone (catch-up) and in a batch (guard.core.selfcheck measures the same).
MIN_COSINE = 0.999
MAX_NORM_DIFF = 1e-3
EXAMPLES = 5


@dataclass
class Verification:
    job_id: str
    source_records: int = 0
    target_records: int = 0
    missing: list[RecordId] = field(default_factory=list)
    extra: list[RecordId] = field(default_factory=list)
    text_mismatch: list[RecordId] = field(default_factory=list)
    duplicates: list[RecordId] = field(default_factory=list)
    skipped: int = 0
    sampled: int = 0
    vector_mismatch: list[RecordId] = field(default_factory=list)
    other_records: int | None = None  # rows outside a re-indexed collection (None: whole)
    others_differ: list[RecordId] = field(default_factory=list)
    min_cosine: float | None = None
    pending: int | None = None  # records written since, left to cutover (None: not asked)
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "ok": self.ok,
            "source_records": self.source_records,
            "target_records": self.target_records,
            "skipped": self.skipped,
            "sampled": self.sampled,
            "min_cosine": self.min_cosine,
            "other_records": self.other_records,
            "pending": self.pending,
            "reasons": self.reasons,
            "examples": {
                name: [str(i) for i in ids[:EXAMPLES]]
                for name, ids in (
                    ("missing", self.missing),
                    ("extra", self.extra),
                    ("text_mismatch", self.text_mismatch),
                    ("duplicates", self.duplicates),
                    ("vector_mismatch", self.vector_mismatch),
                    ("others_differ", self.others_differ),
                )
                if ids
            },
        }


def _ordered(stream: Iterator[Row], duplicates: list[RecordId]) -> Iterator[Row]:
    """Pass rows through, recording ids that repeat or go backwards (a broken scan)."""
    previous: Row | None = None
    for row in stream:
        if previous is not None and id_key(row.id) <= id_key(previous.id):
            duplicates.append(row.id)
            continue
        previous = row
        yield row


def verify_job(
    job_ref: str,
    *,
    sample: int = 64,
    seed: int = 0,
    accept_skipped: bool = False,
    others: bool = True,
    pending: bool = False,
    dsn: str | None = None,
) -> Verification:
    """Check the target; for a job on one collection (``collection=``, ``filter=``), only
    its rows against the candidate and, unless ``others`` is False, every other row
    against the live table's, unchanged. With ``pending``, records the source gained,
    lost or changed since the last catch-up are counted, not failures (cutover takes
    them)."""
    with connect(dsn) as conn:
        job = load_job(conn, job_ref)
        result = Verification(str(job.id))
        _check_batches(conn, job, result)
        skip_hashes = {  # skipped id -> hash of the text it had then (None: no text)
            _key(row[0]): row[1]
            for row in conn.execute(
                "SELECT record_id, text_hash FROM guard_reindex_skipped WHERE job_id = %s",
                (job.id,),
            )
        }
    source_uri, target_uri = locations(job)
    _check_ids_and_hashes(job, source_uri, target_uri, skip_hashes, result, accept_skipped, pending)
    _check_vectors(job, target_uri, sample, seed, result)
    if others:
        _check_others(job, source_uri, target_uri, result)
    return result


def _check_others(job: Job, source_uri: str, target_uri: str, result: Verification) -> None:
    """The rows outside the selection must be the live rows as they are, not re-embedded."""
    with open_reindex(job.source_uri) as store:
        if not store.selects_part():
            return
        check = store.check_others(source_uri, target_uri)
    result.other_records = check.records
    result.others_differ = check.differ
    if check.count:
        result.reasons.append(
            f"{check.count} rows outside the selection differ from the live table's, e.g."
            f" {', '.join(map(str, check.differ))} (written during the job: run catch-up;"
            " cutover copies them again)"
        )


def _key(record_id: Any) -> tuple[int, int | str]:
    return id_key(record_id if isinstance(record_id, int) else str(record_id))


def _check_batches(conn: Conn, job: Job, result: Verification) -> None:
    counts: dict[str, int] = dict(
        conn.execute(
            "SELECT status, count(*) FROM guard_reindex_batches WHERE job_id = %s GROUP BY status",
            (job.id,),
        ).fetchall()
    )
    open_ = {str(k): int(v) for k, v in counts.items() if k != "done"}
    if open_:
        detail = ", ".join(f"{n} {status}" for status, n in sorted(open_.items()))
        result.reasons.append(f"batches not done: {detail}")


def _check_ids_and_hashes(
    job: Job,
    source_uri: str,
    target_uri: str,
    skip_hashes: dict[tuple[int, int | str], str | None],
    result: Verification,
    accept_skipped: bool,
    pending: bool,
) -> None:
    with open_store(source_uri) as source, open_store(target_uri) as target:
        left = _ordered(rows(source.scan(batch_size=SCAN_PAGE)), result.duplicates)
        right = _ordered(
            rows(target.scan(batch_size=SCAN_PAGE, with_payload=True)), result.duplicates
        )
        for src, tgt in merge(left, right):
            result.source_records += src is not None
            result.target_records += tgt is not None
            if tgt is None:
                assert src is not None
                key = id_key(src.id)
                text_now = text_sha256(str(src.text)) if has_text(src.text) else None
                if key in skip_hashes and skip_hashes[key] == text_now:
                    result.skipped += 1  # skipped for the text it still has
                else:
                    result.missing.append(src.id)
            elif src is None:
                result.extra.append(tgt.id)
            else:
                if not has_text(src.text) or tgt.text != src.text:
                    result.text_mismatch.append(src.id)
    written_since = (result.missing, result.extra, result.text_mismatch)
    if pending:
        result.pending = sum(map(len, written_since))
    for ids, what in (
        *(
            ()
            if pending
            else (
                (result.missing, "source records missing from the target"),
                (result.extra, "target records not in the source (run catch-up)"),
                (result.text_mismatch, "records whose source text changed (run catch-up)"),
            )
        ),
        (result.duplicates, "ids repeated or out of order in a scan"),
    ):
        if ids:
            result.reasons.append(f"{len(ids)} {what}, e.g. {', '.join(map(str, ids[:EXAMPLES]))}")
    if result.skipped and not accept_skipped:
        result.reasons.append(
            f"{result.skipped} source records were skipped and are not in the target "
            "(status gives their reasons; accept them with --accept-skipped)"
        )


def _check_vectors(job: Job, target_uri: str, sample: int, seed: int, result: Verification) -> None:
    if sample <= 0 or result.target_records == 0:
        return
    with open_store(target_uri) as target, open_engine(job.candidate_uri) as engine:
        check_engine(job, engine)
        sampled = target.sample(sample, seed=seed)
        drawn = sampled.take([i for i, text in enumerate(sampled.texts) if has_text(text)])
        fresh = engine.embed([str(text) for text in drawn.texts])
    stored = drawn.vectors
    norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1)
    cosines = np.einsum("ij,ij->i", stored, fresh) / np.where(norms > 0, norms, 1.0)
    same_norm = np.ones(len(cosines), dtype=bool)
    if job.distance != "cosine":  # only cosine lets a store rescale what it keeps
        ratio = np.linalg.norm(stored, axis=1) / np.maximum(np.linalg.norm(fresh, axis=1), 1e-12)
        same_norm = np.abs(ratio - 1.0) <= MAX_NORM_DIFF
    bad = (cosines < MIN_COSINE) | ~same_norm
    result.sampled = len(drawn)
    result.min_cosine = float(cosines.min()) if len(cosines) else None
    result.vector_mismatch = [drawn.ids[i] for i in np.flatnonzero(bad)]
    if result.vector_mismatch:
        result.reasons.append(
            f"{len(result.vector_mismatch)} of {result.sampled} sampled target vectors differ "
            f"from fresh candidate embeddings (min cosine {result.min_cosine:.6f})"
        )
