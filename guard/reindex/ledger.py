"""The batch ledger: a worker leases batches, renews, settles and gives them back, each
call matched on its lease token, so a worker whose lease was taken over changes nothing;
records left out are written with the reason.

Every call may be made again after a lost connection (guard.reindex.patience) without
doing its work twice: a lease is asked for under a token chosen before the first try,
so a retry finds the lease an unanswered try took, and ``done`` recognises a batch its
own earlier try finished.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from guard.errors import ReindexError
from guard.records import RecordId
from guard.reindex.jobs import Job
from guard.state import Conn

MAX_BACKOFF_S = 300


@dataclass(frozen=True)
class Lease:
    """One leased batch; ``token`` tells this lease from any later lease of the same batch,
    by this worker or another, so only the current holder can settle it."""

    token: uuid.UUID
    seq: int
    after: RecordId | None
    last: RecordId | None


@dataclass(frozen=True)
class Skip:
    """A source record left out of the target: why, and the hash of the text it had then
    (None: it had none), so verify accepts the skip only while the source still has it."""

    record_id: RecordId
    reason: str  # no_text, too_long, embed_failed, invalid_vector
    detail: str
    text_hash: str | None

    def row(self, job_id: uuid.UUID) -> tuple[Any, ...]:
        return (job_id, Jsonb(self.record_id), self.reason, self.detail, self.text_hash)


RECORD_SKIP = (
    "INSERT INTO guard_reindex_skipped (job_id, record_id, reason, detail, text_hash)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (job_id, record_id)"
    " DO UPDATE SET reason = excluded.reason, detail = excluded.detail,"
    " text_hash = excluded.text_hash, recorded_at = now()"
)


class Ledger:
    """The batch bookkeeping of one worker, on one state-database connection (one per
    thread: psycopg connections serialise their users). With ``reconnect``, a connection
    that was lost (or ``drop``ped) is replaced on the next call."""

    def __init__(
        self,
        conn: Conn,
        job: Job,
        worker: str,
        lease_seconds: float,
        *,
        reconnect: Callable[[], Conn] | None = None,
    ) -> None:
        self._conn = conn
        self._reconnect = reconnect
        self.job = job
        self.worker = worker
        self.lease_seconds = lease_seconds

    @property
    def conn(self) -> Conn:
        if self._conn.closed and self._reconnect is not None:
            self._conn = self._reconnect()
        return self._conn

    def drop(self) -> None:
        """Close the connection (after an error that broke it): the next call reconnects."""
        with suppress(psycopg.Error):
            self._conn.close()

    def close(self) -> None:
        self.drop()

    def lease(self, token: uuid.UUID | None = None) -> Lease | None:
        """Take the next pending batch, or one whose lease expired; expired leases count
        as attempts, so a batch that keeps killing its worker ends up failed. A second
        call with the same ``token`` returns the lease the first one took, if it did."""
        token = token or uuid.uuid4()
        conn = self.conn  # one connection for the transaction
        with conn.transaction():
            taken = conn.execute(
                "SELECT seq, after_id, last_id, lease_token FROM guard_reindex_batches"
                " WHERE job_id = %s AND lease_token = %s AND status = 'leased'",
                (self.job.id, token),
            ).fetchone()
            if taken is not None:
                return Lease(taken[3], int(taken[0]), taken[1], taken[2])
            conn.execute(
                "UPDATE guard_reindex_batches SET status = 'failed', attempts = attempts + 1,"
                " last_error = 'lease of ' || lease_owner || ' expired; attempts exhausted',"
                " lease_owner = NULL, lease_expires_at = NULL"
                " WHERE job_id = %s AND status = 'leased' AND lease_expires_at < now()"
                " AND attempts + 1 >= %s",
                (self.job.id, self.job.max_attempts),
            )
            row = conn.execute(
                "WITH next AS (SELECT seq FROM guard_reindex_batches"
                "  WHERE job_id = %(job)s AND ((status = 'pending' AND next_attempt_at <= now())"
                "   OR (status = 'leased' AND lease_expires_at < now()))"
                "  ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " UPDATE guard_reindex_batches b SET"
                "  attempts = b.attempts + (b.status = 'leased')::int,"
                "  last_error = CASE WHEN b.status = 'leased'"
                "   THEN 'lease of ' || b.lease_owner || ' expired' ELSE b.last_error END,"
                "  status = 'leased', lease_owner = %(me)s, lease_token = %(token)s,"
                "  lease_expires_at = now() + make_interval(secs => %(secs)s)"
                " FROM next WHERE b.job_id = %(job)s AND b.seq = next.seq"
                " RETURNING b.seq, b.after_id, b.last_id, b.lease_token",
                {
                    "job": self.job.id,
                    "me": self.worker,
                    "token": token,
                    "secs": self.lease_seconds,
                },
            ).fetchone()
        return None if row is None else Lease(row[3], int(row[0]), row[1], row[2])

    def renew(self, tokens: Collection[uuid.UUID]) -> int:
        """Extend the leases still held under ``tokens``; one taken over is not extended."""
        cursor = self.conn.execute(
            "UPDATE guard_reindex_batches"
            " SET lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE job_id = %s AND lease_token = ANY(%s) AND status = 'leased'",
            (self.lease_seconds, self.job.id, list(tokens)),
        )
        return cursor.rowcount

    def done(self, lease: Lease, written: int, skipped: int) -> bool:
        """Mark a batch done (``lease_owner`` stays, saying who did it); False when the
        lease was lost, even if the batch came back to this worker under a later lease."""
        conn = self.conn
        cursor = conn.execute(
            "UPDATE guard_reindex_batches SET status = 'done', written = %s, skipped = %s,"
            " done_at = now(), lease_expires_at = NULL"
            " WHERE job_id = %s AND seq = %s AND lease_token = %s AND status = 'leased'",
            (written, skipped, self.job.id, lease.seq, lease.token),
        )
        if cursor.rowcount == 1:
            return True
        # A try whose answer was lost with the connection may have finished it already.
        finished = conn.execute(
            "SELECT 1 FROM guard_reindex_batches"
            " WHERE job_id = %s AND seq = %s AND lease_token = %s AND status = 'done'",
            (self.job.id, lease.seq, lease.token),
        ).fetchone()
        return finished is not None

    def fail(self, lease: Lease, error: str) -> None:
        """Count a failed attempt: retry later with exponential backoff, or give up. A
        lease already lost counts nothing: the batch belongs to its current holder."""
        self.conn.execute(
            "UPDATE guard_reindex_batches SET attempts = attempts + 1, last_error = %s,"
            " status = CASE WHEN attempts + 1 >= %s THEN 'failed' ELSE 'pending' END,"
            " next_attempt_at = now() + make_interval(secs => least(%s, 2 ^ attempts)),"
            " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
            " WHERE job_id = %s AND seq = %s AND lease_token = %s AND status = 'leased'",
            (error[:2000], self.job.max_attempts, MAX_BACKOFF_S, self.job.id, lease.seq,
             lease.token),
        )  # fmt: skip

    def pace(self, records: int) -> float:
        """Take the job's next ``records / max_rate`` seconds and return how long to wait
        until they begin (0 without a limit). One clock in the state database for every
        worker and Ray actor of the job, so ``--max-rate`` bounds the job, not each
        worker; the wait is measured on the database's clock, so the workers' clocks
        need not agree. Time not used (a pause, an idle job) is not saved up."""
        if not self.job.max_rate or records <= 0:
            return 0.0
        row = self.conn.execute(
            "UPDATE guard_reindex_jobs SET rate_next_at = greatest(rate_next_at,"
            " clock_timestamp()) + make_interval(secs => %(records)s / max_rate)"
            " WHERE id = %(job)s AND max_rate IS NOT NULL"
            " RETURNING extract(epoch FROM rate_next_at - clock_timestamp())"
            " - %(records)s / max_rate",
            {"job": self.job.id, "records": records},
        ).fetchone()
        return max(0.0, float(row[0])) if row else 0.0

    def release_all(self) -> None:
        """Give back every lease still held, so a restart need not wait for expiry."""
        self.conn.execute(
            "UPDATE guard_reindex_batches SET status = 'pending', lease_owner = NULL,"
            " lease_token = NULL, lease_expires_at = NULL"
            " WHERE job_id = %s AND lease_owner = %s AND status = 'leased'",
            (self.job.id, self.worker),
        )

    def skip(self, records: Sequence[Skip]) -> None:
        if not records:
            return
        with self.conn.cursor() as cursor:
            cursor.executemany(RECORD_SKIP, [skip.row(self.job.id) for skip in records])

    def mark_started(self) -> None:
        self.conn.execute(
            "UPDATE guard_reindex_jobs SET started_at = coalesce(started_at, now()) WHERE id = %s",
            (self.job.id,),
        )

    def mark_finished(self) -> None:
        self.conn.execute(
            "UPDATE guard_reindex_jobs SET finished_at = coalesce(finished_at, now())"
            " WHERE id = %s",
            (self.job.id,),
        )

    def control(self) -> tuple[bool, str]:
        """(paused, state) as they are now: the operator may change them at any moment."""
        row = self.conn.execute(
            "SELECT paused, state FROM guard_reindex_jobs WHERE id = %s", (self.job.id,)
        ).fetchone()
        if row is None:
            raise ReindexError("the job was deleted while running", job_id=self.job.short)
        return bool(row[0]), str(row[1])

    def open_batches(self) -> tuple[int, int]:
        """(batches not yet done or failed, batches failed)."""
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE status IN ('pending', 'leased')),"
            " count(*) FILTER (WHERE status = 'failed')"
            " FROM guard_reindex_batches WHERE job_id = %s",
            (self.job.id,),
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)
