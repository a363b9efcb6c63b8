"""``cutover``, ``rollback`` and ``cleanup``: move readers to the target in one atomic step,
move them back, and only on an explicit cleanup drop the data that is no longer live.

How readers move is the store's (``guard.stores.ReindexStore``, one module per store in
adapters/): Qdrant points an alias at the target collection, pgvector renames the
tables in one transaction (the source's data is kept as ``<table>__old_<jobid8>``). This
module keeps the job's side: the switch's details the store planned are recorded in the
job before readers move, and read back by the store to settle, undo or clean up.

Live writes: the application may keep writing through a switch. Cutover carries the
writes made since the last catch-up into the target itself, while writers are held off
(pgvector: the live table locked against writes inside the switch's transaction; Qdrant:
just before the alias moves), and refuses, before holding anyone, when more than
``max_pending`` records changed. Rollback carries the writes made since cutover back into
the kept copy the same way, embedded with the job's baseline engine (the one the original
vectors were made with); without one it refuses when anything changed, unless told to
discard those writes.

Crash safety: each command holds an advisory lock on the job in the state database for
its whole run (a second cutover, rollback or cleanup of the job fails at once), records
its intent before touching a store, and moves the job's state only by compare-and-set.
A run that finds an intent left by a crash settles it first by looking at what the
served name (alias or table) serves now, and cleanup refuses to drop anything that is
served, or anything at all while a switch is unsettled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from guard import faults
from guard.engines import EmbeddingEngine, open_engine
from guard.errors import ConfigError, ReindexError
from guard.logs import get_logger
from guard.records import Changes
from guard.reindex.catchup import CatchUp, carry, changes, repair
from guard.reindex.embedding import check_engine
from guard.reindex.jobs import Job, load_job
from guard.reindex.places import job_store, locations
from guard.reindex.plan import check_baseline
from guard.reindex.provenance import short_id
from guard.reindex.verify import verify_job
from guard.secrets import strip
from guard.state import Conn, connect
from guard.stores import Switch, open_store

log = get_logger(__name__)
DEFAULT_MAX_PENDING = 10_000  # records a switch may have to carry over
# Writers wait while the last records are re-embedded under the switch's lock: carry
# ahead until at most HELD_CARRY are left (a fraction of a second of one CPU core), in at
# most AHEAD_ROUNDS rounds, or until STALLED_ROUNDS rounds in a row leave no fewer.
HELD_CARRY = 8
AHEAD_ROUNDS = 20
STALLED_ROUNDS = 2


@dataclass(frozen=True)
class Switched:
    job_id: str
    state: str
    live: str  # what readers see now: alias -> collection, or table
    kept: str  # the data kept until cleanup, or dropped by it
    carried: CatchUp | None = None  # the last writes the switch carried over
    repaired: int = 0  # writes embedded before the switch, landed after it, re-embedded
    held: int = 0  # records carried over while writers waited

    def as_dict(self) -> dict[str, Any]:
        carried = self.carried.as_dict() if self.carried else None
        return {
            "job_id": self.job_id, "state": self.state, "live": self.live, "kept": self.kept,
            "carried": carried, "repaired": self.repaired, "held": self.held,
        }  # fmt: skip


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


def _switched(job: Job, last: _LastWrites | None = None, repaired: int = 0) -> Switched:
    """What readers see for a job just cut over or rolled back."""
    with job_store(job) as store:
        live, kept = store.shown(job.cutover or {}, cut_over=job.state == "cut_over")
    if last is None:
        return Switched(str(job.id), job.state, live, kept)
    return Switched(str(job.id), job.state, live, kept, last.carried, repaired, last.held)


@dataclass
class _LastWrites:
    """A switch's ``settle`` step, run while writers are held off: compare once more,
    refuse above ``max_pending``, and carry what changed into the copy readers move to.
    ``engine`` None: only deletes may be carried (they need no embedding); ``discard``:
    nothing is carried."""

    job: Job
    engine: EmbeddingEngine | None
    live_uri: str
    into_uri: str
    max_pending: int
    accept_skipped: bool = True
    skips_to: Conn | None = None
    discard: bool = False
    intents: Conn | None = None  # where the switch's intent is recorded
    carried: CatchUp | None = None  # carried ahead, then under the lock
    held: int = 0  # of them, carried while writers waited

    def ahead(self) -> None:
        faults.step("switch.carrying_ahead")
        if self.engine is None or self.discard:
            return
        self.carried = _carry_ahead(
            self.job, self.engine, self.live_uri, self.into_uri, skips_to=self.skips_to
        )

    def __call__(self) -> None:
        started = time.monotonic()
        try:
            self._carry_last()
        finally:
            log.info(
                "writers held",
                job=self.job.short,
                records=self.held,
                seconds=round(time.monotonic() - started, 3),
            )

    def _carry_last(self) -> None:
        if self.intents is not None:  # `guard serve --follow` moves to the new engine now:
            self.intents.execute(  # writes it embeds wait for the lock, then land behind it
                "UPDATE guard_reindex_jobs SET intent = intent || '{\"writers_held\": true}'"
                " WHERE id = %s AND intent IS NOT NULL",
                (self.job.id,),
            )
        found = changes(self.job, self.live_uri, self.into_uri)
        _refuse_pending(self.job, found, self.max_pending)
        if self.discard:
            return
        self.held = len(found)
        if self.engine is None and (found.added or found.edited):
            raise ReindexError(
                f"{len(found)} records changed meanwhile ({found.describe()}) and there is"
                " no engine to embed them with; not switching",
                job_id=self.job.short,
            )
        held = carry(
            self.job, self.engine, self.live_uri, self.into_uri, found=found,
            skips_to=self.skips_to,
        )  # fmt: skip
        self.carried = self.carried + held if self.carried else held
        if self.carried.skipped and not self.accept_skipped:
            raise ReindexError(
                f"{self.carried.skipped} records written since the last catch-up have no text"
                " or were refused by the engine; not switching (--accept-skipped leaves them"
                " out of the target)",
                job_id=self.job.short,
            )


def _carry_ahead(
    job: Job,
    engine: EmbeddingEngine,
    live_uri: str,
    into_uri: str,
    *,
    skips_to: Conn | None = None,
) -> CatchUp | None:
    """Carry the writes made since the last catch-up before holding anyone, round after
    round while what is left shrinks (the pre-copy of a live migration): writers then
    wait only for the last few records, written during the last round, to be re-embedded
    under the switch's lock, never for everything since the last catch-up."""
    carried, stalled = None, 0
    found = changes(job, live_uri, into_uri)  # afresh: the engine took a while to load
    for round_ in range(1, AHEAD_ROUNDS + 1):
        if len(found) <= HELD_CARRY:
            break
        started = time.monotonic()
        step = carry(job, engine, live_uri, into_uri, found=found, skips_to=skips_to)
        carried = carried + step if carried else step
        left = changes(job, live_uri, into_uri)
        log.info(
            "carried ahead of the switch",
            job=job.short,
            round=round_,
            carried=len(found),
            left=len(left),
            seconds=round(time.monotonic() - started, 2),
        )
        stalled = stalled + 1 if len(left) >= len(found) else 0
        if stalled == STALLED_ROUNDS:
            break  # the application writes as fast as this engine embeds
        found = left
    return carried


def _refuse_pending(job: Job, found: Changes, max_pending: int) -> None:
    if len(found) > max_pending:
        raise ReindexError(
            f"{len(found)} records changed ({found.describe()}), more than --max-pending"
            f" {max_pending} to re-embed while writers wait: run `guard reindex catch-up"
            f" {job.short}` first (or raise --max-pending)",
            job_id=job.short,
        )


def _switch(conn: Conn, job: Job, step: str, move: Callable[[], None]) -> None:
    """Run a store's switch; a refusal (nothing moved: the switch's transaction rolled
    back, or the alias never moved) clears the intent, so nothing is left to settle."""
    try:
        move()
    except ReindexError:
        conn.execute(
            "UPDATE guard_reindex_jobs SET intent = NULL WHERE id = %s AND intent->>'step' = %s",
            (job.id, step),
        )
        raise


def cutover(
    job_ref: str,
    *,
    alias: str | None = None,
    force: bool = False,
    accept_skipped: bool = False,
    max_pending: int = DEFAULT_MAX_PENDING,
    dsn: str | None = None,
) -> Switched:
    """Switch readers to the target. Unless ``force``, verify first (batches done, the
    target's records right) and refuse on any finding. The writes made since the last
    catch-up are carried into the target while writers are held off, at most
    ``max_pending`` of them. A cutover a crash interrupted after the switch is finished,
    before it is undone and redone."""
    if max_pending < 0:
        raise ConfigError(f"--max-pending must be 0 or more, not {max_pending}")
    with _exclusive(job_ref, dsn) as (conn, job):
        job, settled = _settle(conn, job)
        if settled == "cutover" and job.state == "cut_over":
            log.info("cutover done", job=job.short, finished_after_crash=True)
            return _switched(job)
        if job.state not in ("active", "rolled_back"):
            raise ReindexError(f"the job is {job.state}; nothing to cut over", job_id=job.short)
        if not force:
            # Writes since the last catch-up are pending, not failures: taken below. So
            # are the rows outside a re-indexed collection.
            check = verify_job(
                str(job.id), sample=32, accept_skipped=accept_skipped, others=False,
                pending=True, dsn=dsn,
            )  # fmt: skip
            if not check.ok:
                raise ReindexError(
                    "verify failed, not switching: " + "; ".join(check.reasons),
                    job_id=job.short,
                )
        found = changes(job, job.source_uri, job.target_uri)
        _refuse_pending(job, found, max_pending)
        with ExitStack() as stack:
            # The engine loads before writers are held off, never while they wait.
            engine = stack.enter_context(open_engine(job.candidate_uri))
            check_engine(job, engine)
            store = stack.enter_context(job_store(job))
            kept = f"{store.name()}__old_{short_id(job.id)}"
            details = store.plan_switch(job.target_uri, kept=kept, alias=alias)
            last = _LastWrites(
                job, engine, job.source_uri, job.target_uri, max_pending,
                accept_skipped=accept_skipped, skips_to=conn, intents=conn,
            )  # fmt: skip
            _begin(conn, job, "cutover", details)
            faults.step("cutover.after_intent")
            _switch(
                conn, job, "cutover", lambda: store.switch(details, to_target=True, settle=last)
            )
            faults.step("cutover.after_switch")
            _finish(conn, job, "cutover", "cut_over")
            job = load_job(conn, job.id.hex)
            source_data, target_data = locations(job)
            repaired = repair(job, engine, target_data, source_data)
        switched = _switched(job, last, repaired)
    log.info("cutover done", job=job.short, live=switched.live, carried=_counts(last.carried))
    return switched


def rollback(
    job_ref: str,
    *,
    baseline: str | None = None,
    discard_writes: bool = False,
    max_pending: int = DEFAULT_MAX_PENDING,
    dsn: str | None = None,
) -> Switched:
    """Switch readers back to the source data; the target stays until ``cleanup``. The
    writes made since cutover are carried back into the kept copy, embedded with the
    baseline (``baseline``, else the job's): without one a rollback refuses when anything
    changed, unless ``discard_writes``. A rollback a crash interrupted is finished, or
    redone when the switch never happened."""
    if max_pending < 0:
        raise ConfigError(f"--max-pending must be 0 or more, not {max_pending}")
    with _exclusive(job_ref, dsn) as (conn, job):
        job, settled = _settle(conn, job)
        if settled == "rollback" and job.state == "rolled_back":
            log.info("rollback done", job=job.short, finished_after_crash=True)
            return _switched(job)
        if job.state != "cut_over" or not job.cutover:
            raise ReindexError(
                f"the job is {job.state}; only a cut-over job rolls back", job_id=job.short
            )
        kept_uri, live_uri = locations(job)  # the source's data now has the kept name
        found = changes(job, live_uri, kept_uri)
        baseline_uri = None if discard_writes else baseline or job.baseline_uri
        if (found.added or found.edited) and not baseline_uri and not discard_writes:
            raise ReindexError(
                f"{len(found)} records changed since cutover ({found.describe()}) and the job"
                " has no baseline engine to re-embed them for the kept copy: give --baseline"
                " ENGINE (the engine the original vectors were made with), or"
                " --discard-writes to lose them",
                job_id=job.short,
            )
        _refuse_pending(job, found, max_pending)
        with ExitStack() as stack:
            engine = None
            if baseline_uri:
                if baseline:
                    with open_store(kept_uri) as kept_store:
                        check_baseline(baseline, kept_store)
                    conn.execute(
                        "UPDATE guard_reindex_jobs SET baseline_uri = %s WHERE id = %s",
                        (strip(baseline), job.id),
                    )
                engine = stack.enter_context(open_engine(baseline_uri))
            store = stack.enter_context(job_store(job))
            last = _LastWrites(
                job, engine, live_uri, kept_uri, max_pending, discard=discard_writes,
                intents=conn,
            )  # fmt: skip
            _begin(conn, job, "rollback")
            faults.step("rollback.after_intent")
            switch = job.cutover
            _switch(
                conn, job, "rollback", lambda: store.switch(switch, to_target=False, settle=last)
            )
            faults.step("rollback.after_switch")
            _finish(conn, job, "rollback", "rolled_back")
            job = load_job(conn, job.id.hex)
            repaired = repair(job, engine, job.source_uri, job.target_uri) if engine else 0
        switched = _switched(job, last, repaired)
    if discard_writes and found:
        log.warning("rollback discarded writes", job=job.short, changes=found.describe())
    log.info("rollback done", job=job.short, live=switched.live, carried=_counts(last.carried))
    return switched


def _counts(carried: CatchUp | None) -> dict[str, int] | None:
    if carried is None:
        return None
    return {k: v for k, v in carried.as_dict().items() if k != "job_id"}


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
