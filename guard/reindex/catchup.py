"""``guard reindex catch-up``: bring the target level with the source after the job ran.

The application kept writing to the source during the job. One merged pass over both
stores in id order finds what changed, by id set and text: ids only in the source are
embedded, ids only in the target are deleted, ids whose text differs from the target's
copy are re-embedded. Records already embedded from the same text are left alone (the
target holds only what the job's engine wrote), so running it twice costs a scan and no
embedding.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

from psycopg.types.json import Jsonb

from guard.engines import EmbeddingEngine, open_engine
from guard.errors import ReindexError
from guard.logs import get_logger
from guard.records import RecordBatch, RecordId, as_vectors
from guard.reindex.embedding import check_engine, embed_records
from guard.reindex.jobs import Job, load_job
from guard.reindex.ledger import RECORD_SKIP
from guard.reindex.provenance import has_text
from guard.state import Conn, connect
from guard.stores import VectorStore, open_reindex, open_store
from guard.streams import Row, merge, rows

log = get_logger(__name__)
SCAN_PAGE = 1000


@dataclass
class CatchUp:
    job_id: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0
    others_copied: int = 0  # rows outside a re-indexed collection copied again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        return _CatchUp(job, conn).run()


class _CatchUp:
    def __init__(self, job: Job, conn: Conn) -> None:
        self.job = job
        self.conn = conn
        self.result = CatchUp(str(job.id))
        self.pending: list[tuple[Row, bool]] = []  # (source row, already in the target)
        self.deletes: list[RecordId] = []

    def run(self) -> CatchUp:
        with ExitStack() as stack:
            source = stack.enter_context(open_store(self.job.source_uri))
            target = stack.enter_context(open_store(self.job.target_uri))
            engine = stack.enter_context(open_engine(self.job.candidate_uri))
            check_engine(self.job, engine)
            left = rows(source.scan(batch_size=SCAN_PAGE, with_payload=True))
            right = rows(target.scan(batch_size=SCAN_PAGE, with_payload=True))
            for src, tgt in merge(left, right):
                self._compare(src, tgt)
                if len(self.pending) >= self.job.batch_size:
                    self._embed(engine, target)
                if len(self.deletes) >= SCAN_PAGE:
                    self._delete(target)
            self._embed(engine, target)
            self._delete(target)
        with open_reindex(self.job.source_uri) as store:
            if store.selects_part():
                self.result.others_copied = store.copy_others(
                    self.job.source_uri, self.job.target_uri
                )
        log.info("catch-up done", job=self.job.short, **self.result.as_dict())
        return self.result

    def _compare(self, src: Row | None, tgt: Row | None) -> None:
        if src is None:
            assert tgt is not None
            self.deletes.append(tgt.id)
        elif not has_text(src.text):
            if tgt is not None:  # its text was removed: the old vector no longer describes it
                self.deletes.append(tgt.id)
            self.pending.append((src, tgt is not None))
        elif tgt is not None and tgt.text == src.text:
            self.result.unchanged += 1
        else:
            self.pending.append((src, tgt is not None))

    def _embed(self, engine: EmbeddingEngine, target: VectorStore) -> None:
        if not self.pending:
            return
        batch = RecordBatch(
            tuple(row.id for row, _ in self.pending),
            tuple(row.text for row, _ in self.pending),
            as_vectors([[0.0]] * len(self.pending)),
            tuple(dict(row.payload) for row, _ in self.pending),
        )
        existed = {row.id: present for row, present in self.pending}
        records, skipped = embed_records(engine, batch)
        target.upsert(records)
        for record_id in records.ids:
            if existed[record_id]:
                self.result.updated += 1
            else:
                self.result.inserted += 1
        self.result.skipped += len(skipped)
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(
                "DELETE FROM guard_reindex_skipped WHERE job_id = %s AND record_id = ANY(%s)",
                (self.job.id, [Jsonb(i) for i in records.ids]),
            )
            cursor.executemany(RECORD_SKIP, [skip.row(self.job.id) for skip in skipped])
        self.pending.clear()

    def _delete(self, target: VectorStore) -> None:
        if self.deletes:
            target.delete(self.deletes)
            self.result.deleted += len(self.deletes)
            self.deletes.clear()
