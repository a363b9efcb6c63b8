"""Failures a re-index must survive: stale leases, crashes inside cutover, rollback and
cleanup, and two switches of one job at once. Real state database, real stores."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg

from guard.reindex.jobs import load_job
from guard.reindex.state import connect
from guard.reindex.worker import Ledger


def _bare_job(conn: psycopg.Connection[Any], batches: int) -> uuid.UUID:
    job_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO guard_reindex_jobs (id, source_uri, target_uri, candidate_uri, fingerprint,"
        " fingerprint_hash, dims, distance, total_records, batch_size, max_attempts)"
        " VALUES (%s, 's', 't', 'c', '{}', 'h', 4, 'cosine', %s, 10, 3)",
        (job_id, batches * 10),
    )
    for seq in range(batches):
        conn.execute(
            "INSERT INTO guard_reindex_batches (job_id, seq, planned_records) VALUES (%s, %s, 10)",
            (job_id, seq),
        )
    return job_id


def test_a_lease_taken_over_cannot_be_settled_by_its_first_holder(state_dsn: str) -> None:
    """Worker A pauses past its lease, B takes the batch and gives it back, A leases it
    again: A's first, stale lease can neither finish nor fail the batch, and only the
    current lease's count is recorded."""
    with connect(state_dsn) as conn:
        job = load_job(conn, _bare_job(conn, 1).hex)
        a = Ledger(conn, job, "worker-a", lease_seconds=1)
        b = Ledger(conn, job, "worker-b", lease_seconds=30)
        stale = a.lease()
        assert stale is not None
        time.sleep(1.2)  # A is paused past its lease
        taken = b.lease()
        assert taken is not None and taken.seq == stale.seq
        assert not a.done(stale, 3, 0)  # B holds it now
        b.release_all()  # B stops (SIGTERM) and gives the batch back
        current = a.lease()  # A's reader, running again, takes the batch anew
        assert current is not None and current.seq == stale.seq
        assert not a.done(stale, 3, 0)
        a.fail(stale, "late failure of the stale lease")
        assert a.renew([stale.token]) == 0
        row = conn.execute(
            "SELECT status, attempts, last_error FROM guard_reindex_batches WHERE job_id = %s",
            (job.id,),
        ).fetchone()
        assert row is not None and (row[0], row[1]) == ("leased", 1)
        assert "stale" not in str(row[2])
        assert a.done(current, 10, 0)
        done = conn.execute(
            "SELECT status, written FROM guard_reindex_batches WHERE job_id = %s", (job.id,)
        ).fetchone()
    assert done == ("done", 10)
