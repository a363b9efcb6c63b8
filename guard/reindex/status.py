"""``guard reindex status``, ``pause`` and ``resume``: a job's progress read from its
batch ledger, and the flag workers check between batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from guard.errors import ReindexError
from guard.logs import get_logger
from guard.reindex.jobs import load_job
from guard.state import connect
from guard.uri import redact

log = get_logger(__name__)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str
    paused: bool
    source: str
    target: str
    records: int
    batches: dict[str, int]  # by status
    written: int
    skipped: int
    rate: float | None  # records per second since the first batch was done
    eta_seconds: float | None
    skipped_by_reason: dict[str, int]
    failed_batches: list[dict[str, Any]]
    window: str | None
    max_rate: float | None

    @property
    def done(self) -> int:
        return self.written + self.skipped

    @property
    def complete(self) -> bool:
        total = sum(self.batches.values())
        return total > 0 and self.batches.get("done", 0) == total

    def as_dict(self) -> dict[str, Any]:
        # The fields in order, except that the batches (and whether all are done) follow
        # written and skipped; rate and ETA rounded.
        fields = asdict(self)
        batches = {"batches": fields.pop("batches"), "complete": self.complete}
        items = list(fields.items())
        at = list(fields).index("skipped") + 1
        return dict([*items[:at], *batches.items(), *items[at:]]) | {
            "rate": None if self.rate is None else round(self.rate, 2),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
        }


def job_status(job_ref: str, *, dsn: str | None = None) -> JobStatus:
    with connect(dsn) as conn:
        job = load_job(conn, job_ref)
        by_status: dict[str, int] = dict(
            conn.execute(
                "SELECT status, count(*) FROM guard_reindex_batches WHERE job_id = %s"
                " GROUP BY status",
                (job.id,),
            ).fetchall()
        )
        written, skipped, planned_left, last_done = conn.execute(
            "SELECT coalesce(sum(written), 0), coalesce(sum(skipped), 0),"
            " coalesce(sum(planned_records) FILTER (WHERE status <> 'done'), 0),"
            " max(done_at)"
            " FROM guard_reindex_batches WHERE job_id = %s",
            (job.id,),
        ).fetchone() or (0, 0, 0, None)
        reasons: dict[str, int] = dict(
            conn.execute(
                "SELECT reason, count(*) FROM guard_reindex_skipped WHERE job_id = %s"
                " GROUP BY reason ORDER BY reason",
                (job.id,),
            ).fetchall()
        )
        failed = [
            {"batch": seq, "attempts": attempts, "error": error}
            for seq, attempts, error in conn.execute(
                "SELECT seq, attempts, last_error FROM guard_reindex_batches"
                " WHERE job_id = %s AND status = 'failed' ORDER BY seq",
                (job.id,),
            ).fetchall()
        ]
    done = int(written) + int(skipped)
    rate: float | None = None
    if job.started_at is not None and last_done is not None and done:
        span = (last_done - job.started_at).total_seconds()
        rate = done / span if span > 0 else None
    eta: float | None = None
    if not planned_left:
        eta = 0.0
    elif rate:
        eta = int(planned_left) / rate
    return JobStatus(
        job_id=str(job.id),
        state=job.state,
        paused=job.paused,
        source=redact(job.source_uri),
        target=redact(job.target_uri),
        records=job.total_records,
        batches={str(k): int(v) for k, v in by_status.items()},
        written=int(written),
        skipped=int(skipped),
        rate=rate,
        eta_seconds=eta,
        skipped_by_reason={str(k): int(v) for k, v in reasons.items()},
        failed_batches=failed,
        window=str(job.window) if job.window else None,
        max_rate=job.max_rate,
    )


def set_paused(job_ref: str, paused: bool, *, dsn: str | None = None) -> str:
    """Pause or resume; running workers see it before their next chunk. Resuming also
    gives failed batches a fresh set of attempts."""
    with connect(dsn) as conn, conn.transaction():
        job = load_job(conn, job_ref)
        if job.state != "active":
            raise ReindexError(
                f"the job is {job.state}; only an active job pauses", job_id=job.short
            )
        conn.execute("UPDATE guard_reindex_jobs SET paused = %s WHERE id = %s", (paused, job.id))
        if not paused:
            conn.execute(
                "UPDATE guard_reindex_batches SET status = 'pending', attempts = 0,"
                " next_attempt_at = now() WHERE job_id = %s AND status = 'failed'",
                (job.id,),
            )
    log.info("re-index paused" if paused else "re-index resumed", job=str(job.id))
    return str(job.id)
