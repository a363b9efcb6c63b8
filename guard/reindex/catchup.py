"""Carrying writes from the live data into the copy that must follow it.

``guard reindex catch-up`` brings the target level with the source after the job ran
(the application kept writing to the source); cutover does the same for the last writes
while writers wait, and rollback carries the writes made since cutover back into the
kept copy, embedded with the baseline. The store says what differs (``changes``: by id,
text and payload; pgvector joins the two tables on the server, Qdrant scans both): new
and edited records are embedded, records gone from the live side are deleted. Records
already embedded from the same text are left alone, so running it twice costs a
comparison and no embedding.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb

from guard.core.cosines import rowwise_cosine
from guard.engines import EmbeddingEngine, open_engine
from guard.errors import ReindexError
from guard.logs import get_logger
from guard.records import Changes, RecordBatch, RecordId, as_vectors
from guard.reindex.embedding import check_engine, embed_records
from guard.reindex.jobs import Job, load_job
from guard.reindex.ledger import RECORD_SKIP, Skip
from guard.reindex.provenance import has_text
from guard.state import Conn, connect
from guard.stores import open_reindex, open_store

log = get_logger(__name__)
REPAIR_GRACE = 0.5  # seconds for the writes that waited for a switch's lock to land
SAME_SPACE = 0.999  # a stored vector this close to the engine's embedding is its


@dataclass
class CatchUp:
    job_id: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    others_copied: int = 0  # rows outside a re-indexed collection copied again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __add__(self, other: CatchUp) -> CatchUp:
        return CatchUp(self.job_id, *(getattr(self, f) + getattr(other, f) for f in _COUNTS))


_COUNTS = ("inserted", "updated", "deleted", "skipped", "others_copied")


def catch_up(job_ref: str, *, dsn: str | None = None) -> CatchUp:
    with connect(dsn) as conn:
        job = load_job(conn, job_ref)
        if job.state not in ("active", "rolled_back"):
            raise ReindexError(
                f"the job is {job.state}; catch-up runs before cutover (or after a rollback)",
                job_id=job.short,
            )
        row = conn.execute(
            "SELECT count(*) FROM guard_reindex_batches WHERE job_id = %s AND status <> 'done'",
            (job.id,),
        ).fetchone()
        if row and row[0]:
            raise ReindexError(
                f"{row[0]} batches are not done; finish `guard reindex run` first",
                job_id=job.short,
            )
        with ExitStack() as stack:
            engine = stack.enter_context(open_engine(job.candidate_uri))
            check_engine(job, engine)
            result = carry(job, engine, job.source_uri, job.target_uri, skips_to=conn)
        with open_reindex(job.source_uri) as store:
            if store.selects_part():
                result.others_copied = store.copy_others(job.source_uri, job.target_uri)
    log.info("catch-up done", job=job.short, **result.as_dict())
    return result


def changes(job: Job, live_uri: str, into_uri: str) -> Changes:
    """How the copy at ``into_uri`` differs from the live data at ``live_uri``."""
    with open_reindex(job.source_uri) as store:
        return store.changes(live_uri, into_uri)


def carry(
    job: Job,
    engine: EmbeddingEngine | None,
    live_uri: str,
    into_uri: str,
    *,
    found: Changes | None = None,
    skips_to: Conn | None = None,
) -> CatchUp:
    """Make ``into_uri`` follow ``live_uri``: the added and edited records embedded by
    ``engine`` and written, the gone ones deleted. ``found``: the changes, when the
    caller has just compared; ``skips_to``: record skipped records in the job's ledger.
    ``engine`` may be None only when nothing was added or edited."""
    found = found if found is not None else changes(job, live_uri, into_uri)
    result = CatchUp(str(job.id))
    existed = set(found.edited)
    wanted = [*found.added, *found.edited]
    with open_store(live_uri) as live, open_store(into_uri) as into:
        deletes: list[RecordId] = list(found.gone)
        for start in range(0, len(wanted), job.batch_size):
            chunk = wanted[start : start + job.batch_size]
            assert engine is not None, "records to embed and no engine"
            batch = live.fetch(chunk, with_payload=True)
            records, skipped = embed_records(engine, batch)
            into.upsert(records)
            written = set(records.ids)
            result.inserted += len(written - existed)
            result.updated += len(written & existed)
            result.skipped += len(skipped)
            # Gone meanwhile, or left without text or vector: the old copy no longer
            # describes what is live.
            deletes += [i for i in chunk if i in existed and i not in written]
            if skips_to is not None:
                _record_skips(skips_to, job, records.ids, skipped)
        if deletes:
            into.delete(deletes)
        result.deleted = len(deletes)
    return result


def _record_skips(conn: Conn, job: Job, written: tuple[RecordId, ...], skipped: list[Skip]) -> None:
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(
            "DELETE FROM guard_reindex_skipped WHERE job_id = %s AND record_id = ANY(%s)",
            (job.id, [Jsonb(i) for i in written]),
        )
        cursor.executemany(RECORD_SKIP, [skip.row(job.id) for skip in skipped])


def repair(
    job: Job, engine: EmbeddingEngine, live_uri: str, kept_uri: str, *, grace: float = REPAIR_GRACE
) -> int:
    """After a switch: the writes that waited for its lock were embedded before it, by
    the engine the application was served then (``guard serve --follow`` moves when the
    lock is taken; a write embedded just before and sent just after lands in the wrong
    space). Once they have landed (``grace``), every record written since the switch
    (what differs from the kept copy, equal to the live data at the switch) whose vector
    is not ``engine``'s embedding of its text is rewritten, where it still holds that
    text. Returns how many."""
    time.sleep(grace)
    found = changes(job, live_uri, kept_uri)
    wanted = [*found.added, *found.edited]
    repaired = 0
    with open_store(live_uri) as live, open_reindex(job.source_uri) as store:
        for start in range(0, len(wanted), job.batch_size):
            batch = live.fetch(wanted[start : start + job.batch_size])
            keep = [i for i, text in enumerate(batch.texts) if has_text(text)]
            batch = batch.take(keep)
            if not len(batch):
                continue
            fresh = engine.embed([str(text) for text in batch.texts])
            cosines, _ = rowwise_cosine(batch.vectors, fresh)
            wrong = [int(i) for i in np.flatnonzero(cosines < SAME_SPACE)]
            if wrong:
                stale = batch.take(wrong)
                repaired += store.repair(
                    live_uri, RecordBatch(stale.ids, stale.texts, as_vectors(fresh[wrong]))
                )
    if repaired:
        log.warning("writes embedded before the switch repaired", job=job.short, count=repaired)
    return repaired
