"""``cutover``, ``rollback`` and ``cleanup``: move readers to the target in one atomic step,
move them back, and only on an explicit cleanup drop the data that is no longer live.

How readers move is the store's (``guard.stores.ReindexStore``, one module per store in
adapters/): Qdrant points an alias at the target collection, pgvector renames the
tables in one transaction (the source's data is kept as ``<table>__old_<jobid8>``). This
module keeps the job's side: the switch's details the store planned are recorded in the
job before readers move, and read back by the store to settle, undo or clean up.

Crash safety: each command holds an advisory lock on the job in the state database for
its whole run (a second cutover, rollback or cleanup of the job fails at once), records
its intent before touching a store, and moves the job's state only by compare-and-set.
A run that finds an intent left by a crash settles it first by looking at what the
served name (alias or table) serves now, and cleanup refuses to drop anything that is
served, or anything at all while a switch is unsettled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from guard import faults
from guard.errors import ReindexError
from guard.logs import get_logger
from guard.reindex.jobs import Job, load_job
from guard.reindex.places import job_store
from guard.reindex.provenance import short_id
from guard.reindex.verify import verify_job
from guard.state import Conn, connect
from guard.stores import Switch

log = get_logger(__name__)


@dataclass(frozen=True)
class Switched:
    job_id: str
    state: str
    live: str  # what readers see now: alias -> collection, or table
    kept: str  # the data kept until cleanup, or dropped by it

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "live": self.live, "kept": self.kept}


@contextmanager
def _exclusive(job_ref: str, dsn: str | None) -> Iterator[tuple[Conn, Job]]:
    """The job, read after taking its advisory lock, which this connection holds until
    the command ends (or its process dies: the server releases it with the session)."""
    with connect(dsn) as conn:
        job = load_job(conn, job_ref)
        key = int.from_bytes(job.id.bytes[:8], "big", signed=True)
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not locked or not locked[0]:
            raise ReindexError(
                "another cutover, rollback or cleanup of this job is running; "
                "run again when it has ended",
                job_id=job.short,
            )
        try:
            yield conn, load_job(conn, job_ref)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _begin(conn: Conn, job: Job, step: str, details: Switch | None = None) -> None:
    """Record the intent of ``step`` (and the switch's details) before any store changes."""
    intent = {"step": step, "from": job.state}
    cursor = conn.execute(
        "UPDATE guard_reindex_jobs SET intent = %s, cutover = coalesce(%s, cutover)"
        " WHERE id = %s AND state = %s AND intent IS NULL",
        (Jsonb(intent), Jsonb(dict(details)) if details else None, job.id, job.state),
    )
    if cursor.rowcount != 1:
        raise ReindexError(
            f"the job is no longer {job.state} (another command changed it); not switching",
            job_id=job.short,
        )


def _finish(conn: Conn, job: Job, step: str, state: str) -> None:
    """Move the job to ``state`` and clear the intent, only if ``step`` is still pending."""
    cursor = conn.execute(
        "UPDATE guard_reindex_jobs SET state = %s, intent = NULL"
        " WHERE id = %s AND intent->>'step' = %s",
        (state, job.id, step),
    )
    if cursor.rowcount != 1:
        raise ReindexError(
            f"the job's {step} was settled by another command meanwhile", job_id=job.short
        )


def _target_served(job: Job) -> bool:
    """Whether the served name (alias or table) serves the target now, by looking at the
    store itself: the truth after a crash, whatever the state database says."""
    if not job.cutover:
        return False
    with job_store(job) as store:
        return store.serves_target(job.cutover)


def _settle(conn: Conn, job: Job) -> tuple[Job, str | None]:
    """Finish or undo a cutover or rollback a crash interrupted, by what is served now;
    returns the job as settled and the step it settled (None: nothing was pending)."""
    if not job.intent or job.intent["step"] == "cleanup":
        return job, None
    step = str(job.intent["step"])
    if _target_served(job):
        state = "cut_over"
    else:
        state = str(job.intent["from"]) if step == "cutover" else "rolled_back"
    _finish(conn, job, step, state)
    log.warning("interrupted switch settled", job=job.short, step=step, state=state)
    return load_job(conn, job.id.hex), step


def _switched(job: Job) -> Switched:
    """What readers see for a job just cut over or rolled back."""
    with job_store(job) as store:
        live, kept = store.shown(job.cutover or {}, cut_over=job.state == "cut_over")
    return Switched(str(job.id), job.state, live, kept)


def cutover(
    job_ref: str,
    *,
    alias: str | None = None,
    force: bool = False,
    accept_skipped: bool = False,
    dsn: str | None = None,
) -> Switched:
    """Switch readers to the target. Unless ``force``, verify first (batches done, ids and
    text hashes equal, sampled vectors right) and refuse on any finding. A cutover a
    crash interrupted after the switch is finished, before it is undone and redone."""
    with _exclusive(job_ref, dsn) as (conn, job):
        job, settled = _settle(conn, job)
        if settled == "cutover" and job.state == "cut_over":
            log.info("cutover done", job=job.short, finished_after_crash=True)
            return _switched(job)
        if job.state not in ("active", "rolled_back"):
            raise ReindexError(f"the job is {job.state}; nothing to cut over", job_id=job.short)
        if not force:
            check = verify_job(
                str(job.id), sample=32, accept_skipped=accept_skipped, others=False, dsn=dsn
            )  # the rows outside a re-indexed collection are copied again by the switch
            if not check.ok:
                raise ReindexError(
                    "verify failed, not switching: " + "; ".join(check.reasons),
                    job_id=job.short,
                )
        with job_store(job) as store:
            kept = f"{store.name()}__old_{short_id(job.id)}"
            details = store.plan_switch(job.target_uri, kept=kept, alias=alias)
            _begin(conn, job, "cutover", details)
            faults.step("cutover.after_intent")
            store.switch(details, to_target=True)
        faults.step("cutover.after_switch")
        _finish(conn, job, "cutover", "cut_over")
        switched = _switched(load_job(conn, job.id.hex))
    log.info("cutover done", job=job.short, live=switched.live)
    return switched


def rollback(job_ref: str, *, dsn: str | None = None) -> Switched:
    """Switch readers back to the source data; the target stays until ``cleanup``. A
    rollback a crash interrupted is finished, or redone when the switch never happened."""
    with _exclusive(job_ref, dsn) as (conn, job):
        job, settled = _settle(conn, job)
        if settled == "rollback" and job.state == "rolled_back":
            log.info("rollback done", job=job.short, finished_after_crash=True)
            return _switched(job)
        if job.state != "cut_over" or not job.cutover:
            raise ReindexError(
                f"the job is {job.state}; only a cut-over job rolls back", job_id=job.short
            )
        _begin(conn, job, "rollback")
        faults.step("rollback.after_intent")
        with job_store(job) as store:
            store.switch(job.cutover, to_target=False)
        faults.step("rollback.after_switch")
        _finish(conn, job, "rollback", "rolled_back")
        switched = _switched(load_job(conn, job.id.hex))
    log.info("rollback done", job=job.short, live=switched.live)
    return switched


def cleanup(job_ref: str, *, dsn: str | None = None) -> Switched:
    """Drop what is not live: the old source after a cutover, else the target. Refused
    while a cutover or rollback is unsettled, and for anything the served name serves."""
    with _exclusive(job_ref, dsn) as (conn, job):
        if job.state == "cleaned":
            raise ReindexError("the job is already cleaned up", job_id=job.short)
        if job.intent and job.intent["step"] != "cleanup":
            raise ReindexError(
                f"a {job.intent['step']} of this job was interrupted; run "
                f"`guard reindex {job.intent['step']}` again before cleaning up",
                job_id=job.short,
            )
        cut_over = job.state == "cut_over" and job.cutover is not None
        if job.cutover and _target_served(job) != cut_over:
            raise ReindexError(
                f"the job is {job.state} but the served name serves the "
                f"{'source' if cut_over else 'target'}; not dropping anything",
                job_id=job.short,
            )  # the state database may be wrong, the store is not
        with job_store(job) as store:
            live, dropped = store.plan_cleanup(job.cutover, job.target_uri, cut_over=cut_over)
            if not job.intent:
                _begin(conn, job, "cleanup")
            faults.step("cleanup.after_intent")
            store.drop(dropped, live=live if cut_over else None)
        faults.step("cleanup.after_drop")
        _finish(conn, job, "cleanup", "cleaned")
    log.info("cleanup done", job=job.short, dropped=dropped)
    return Switched(str(job.id), "cleaned", live, dropped)
