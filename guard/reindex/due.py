"""What the guard service calls on a timer: run the re-index jobs that are due.

A job is due when it is active, not paused, has batches left and its window (if any)
contains the current local time. Each run stops by itself when the window closes, the
job is paused or it is done, so a scheduler only has to call ``run_due_jobs`` every few
minutes (APScheduler's ``max_instances=1`` keeps calls from overlapping).
"""

from __future__ import annotations

import threading
from datetime import datetime

from guard.cache import EmbeddingCache
from guard.errors import GuardError
from guard.logs import get_logger
from guard.reindex.jobs import JOB_COLUMNS, Job
from guard.reindex.worker import WorkerResult, run_worker
from guard.state import connect

log = get_logger(__name__)


def due_jobs(*, now: datetime | None = None, dsn: str | None = None) -> list[Job]:
    """Active, unpaused jobs with batches left whose window contains ``now``."""
    moment = (now or datetime.now()).time()
    with connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM guard_reindex_jobs j"  # noqa: S608 - constant columns
            " WHERE state = 'active' AND NOT paused AND EXISTS (SELECT 1 FROM"
            " guard_reindex_batches b WHERE b.job_id = j.id AND b.status IN ('pending', 'leased'))"
            " ORDER BY created_at"
        ).fetchall()
    jobs = [Job.from_row(row) for row in rows]
    return [job for job in jobs if job.window is None or job.window.contains(moment)]


def run_due_jobs(
    *,
    lease_seconds: float = 60.0,
    dsn: str | None = None,
    stop: threading.Event | None = None,
    cache: EmbeddingCache | None = None,
) -> list[WorkerResult]:
    """Run each due job in turn until it stops; one job's failure does not stop the rest.
    Setting ``stop`` (the service's SIGTERM) ends the running job as SIGTERM ends
    `guard reindex run`, leases given back, and starts no other."""
    results = []
    for job in due_jobs(dsn=dsn):
        if stop is not None and stop.is_set():
            break
        try:
            results.append(
                run_worker(
                    str(job.id), lease_seconds=lease_seconds, dsn=dsn, stop=stop, cache=cache
                )
            )
        except GuardError as exc:
            log.error("scheduled re-index failed", job=job.short, error=str(exc))
    return results
