"""``cutover``, ``rollback`` and ``cleanup``: move readers to the target in one atomic step,
move them back, and only on an explicit cleanup drop the data that is no longer live.

Qdrant readers must query through an alias: cutover points the alias at the target
collection. When the source URI names an alias, that alias is switched; when it names
a real collection, ``--alias NAME`` says which alias the application queries (it is
created if missing). pgvector tables are renamed in one transaction: the source becomes
``<table>__old_<jobid8>`` and the shadow table takes the source's name with everything
else the source had (names, foreign keys, triggers, grants, ...); the kept copy loses its
foreign keys, so no cascade from the live side changes it.

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
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from psycopg.types.json import Jsonb

from guard import faults
from guard.errors import ReindexError
from guard.logs import get_logger
from guard.reindex import parts, targets
from guard.reindex.jobs import Job, load_job
from guard.reindex.provenance import short_id, store_name
from guard.reindex.state import Conn, connect
from guard.stores import open_store

log = get_logger(__name__)


@dataclass(frozen=True)
class Switched:
    job_id: str
    state: str
    live: str  # what readers see now: alias -> collection, or table
    kept: str  # the data kept until cleanup, or dropped by it

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "live": self.live, "kept": self.kept}


def _with_name(uri: str, name: str) -> str:
    """The store URI naming another collection or table, every other part kept."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("qdrant+http", "qdrant+https"):
        return urlunsplit(parts._replace(path=f"/{name}"))
    key = "collection" if scheme == "qdrant+local" else "table"
    params = [(k, name if k == key else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit(parts._replace(query=urlencode(params, safe="/:@")))


def locations(job: Job) -> tuple[str, str]:
    """(source URI, target URI) where their data is now: after a cutover the source's
    name (alias or table) serves the target, and the old data has another name."""
    if job.state != "cut_over" or not job.cutover:
        return job.source_uri, job.target_uri
    old = _with_name(job.source_uri, job.cutover["old"])
    if job.cutover["kind"] == "pg_rename":
        return old, _with_name(job.source_uri, job.cutover["table"])
    return old, job.target_uri


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


def _begin(conn: Conn, job: Job, step: str, details: dict[str, Any] | None = None) -> None:
    """Record the intent of ``step`` (and the switch's details) before any store changes."""
    intent = {"step": step, "from": job.state}
    cursor = conn.execute(
        "UPDATE guard_reindex_jobs SET intent = %s, cutover = coalesce(%s, cutover)"
        " WHERE id = %s AND state = %s AND intent IS NULL",
        (Jsonb(intent), Jsonb(details) if details else None, job.id, job.state),
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
    details = job.cutover
    if not details:
        return False
    if details["kind"] == "qdrant_alias":
        points_at = targets.qdrant_alias_target(job.source_uri, details["alias"])
        if points_at == details["new"]:
            return True
        if points_at in (None, details["old"]):
            return False
        raise ReindexError(
            f"alias {details['alias']!r} points at {points_at!r}, neither the source "
            f"{details['old']!r} nor the target {details['new']!r}; fix it by hand",
            job_id=job.short,
        )
    served = targets.pg_oid(job.source_uri, details["schema"], details["table"])
    if served is not None and served == details.get("target_oid"):
        return True
    if served is not None and served == details.get("source_oid"):
        return False
    raise ReindexError(
        f"table {details['table']!r} is neither the source nor the target table this job "
        f"recorded; fix it by hand",
        job_id=job.short,
    )


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
    details = job.cutover or {}
    live_name, kept = ("new", "old") if job.state == "cut_over" else ("old", "new")
    if details.get("kind") == "qdrant_alias":
        live = f"alias {details['alias']} -> {details[live_name]}"
        return Switched(str(job.id), job.state, live, details[kept])
    kept_table = details["old"] if job.state == "cut_over" else details["shadow"]
    return Switched(str(job.id), job.state, details["table"], kept_table)


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
    from guard.reindex.verify import verify_job

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
            )  # the rows outside a re-indexed collection are copied again below
            if not check.ok:
                raise ReindexError(
                    "verify failed, not switching: " + "; ".join(check.reasons),
                    job_id=job.short,
                )
        if targets.is_qdrant(job.source_uri):
            details = _qdrant_cutover(job, alias)
            _begin(conn, job, "cutover", details)
            faults.step("cutover.after_intent")
            if parts.is_part(job.source_uri):
                parts.copy_others(job.source_uri, job.target_uri)
            targets.qdrant_switch(job.source_uri, details["alias"], details["new"])
        else:
            details = _pg_cutover(job)
            _begin(conn, job, "cutover", details)
            faults.step("cutover.after_intent")
            schema, table, old, shadow = (
                details["schema"], details["table"], details["old"], details["shadow"]
            )  # fmt: skip
            targets.pg_build_indexes(job.source_uri, schema, table, shadow)
            targets.pg_swap(job.source_uri, schema, table, shadow, old, _pg_part(job))
        faults.step("cutover.after_switch")
        _finish(conn, job, "cutover", "cut_over")
        switched = _switched(load_job(conn, job.id.hex))
    log.info("cutover done", job=job.short, live=switched.live)
    return switched


def _qdrant_cutover(job: Job, alias: str | None) -> dict[str, Any]:
    """Which alias to point at the target, and at what it points now (the source)."""
    name, new = store_name(job.source_uri), store_name(job.target_uri)
    points_at = targets.qdrant_alias_target(job.source_uri, name)
    if points_at is not None:  # the source URI names the alias the application queries
        if alias not in (None, name):
            raise ReindexError(
                f"the source {name!r} is itself an alias; leave out --alias", job_id=job.short
            )
        if points_at == new:
            raise ReindexError(
                f"alias {name!r} already points at the target {new!r}", job_id=job.short
            )
        return {"kind": "qdrant_alias", "alias": name, "old": points_at, "new": new}
    if alias is None:
        raise ReindexError(
            f"{name!r} is a real collection, not an alias, so readers cannot be switched "
            f"atomically; give --alias NAME, the alias your application queries (it will "
            f"point at {new!r}; rollback points it at {name!r})",
            job_id=job.short,
        )
    current = targets.qdrant_alias_target(job.source_uri, alias)
    if current not in (None, name):
        raise ReindexError(
            f"alias {alias!r} points at {current!r}, not the source {name!r}", job_id=job.short
        )
    return {"kind": "qdrant_alias", "alias": alias, "old": name, "new": new}


def _pg_cutover(job: Job) -> dict[str, Any]:
    schema, table, shadow = _pg_location(job)
    old = f"{table}__old_{short_id(job.id)}"
    source_oid = targets.pg_oid(job.source_uri, schema, table)
    target_oid = targets.pg_oid(job.source_uri, schema, shadow)
    if source_oid is None or target_oid is None:
        raise ReindexError(
            f"the table {table if source_oid is None else shadow!r} is missing", job_id=job.short
        )
    return {
        "kind": "pg_rename", "schema": schema, "table": table, "old": old, "shadow": shadow,
        "source_oid": source_oid, "target_oid": target_oid,
    }  # fmt: skip


def _pg_part(job: Job) -> parts.PgPart | None:
    """The selection of a job that re-indexes one collection (None: the whole table)."""
    return parts.pg_part(job.source_uri) if parts.is_part(job.source_uri) else None


def _pg_location(job: Job) -> tuple[str, str, str]:
    store = open_store(job.source_uri)
    try:
        info = store.describe()
    finally:
        store.close()
    schema = str(info.details.get("schema") or "public")
    return schema, store_name(job.source_uri), store_name(job.target_uri)


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
        details = job.cutover
        _begin(conn, job, "rollback")
        faults.step("rollback.after_intent")
        if details["kind"] == "qdrant_alias":
            if parts.is_part(job.source_uri):  # writes to the others since cutover stay
                old_uri, live_uri = locations(job)
                parts.copy_others(live_uri, old_uri)
            targets.qdrant_switch(job.source_uri, details["alias"], details["old"])
        else:
            schema, table, old, shadow = (
                details["schema"], details["table"], details["old"], details["shadow"]
            )  # fmt: skip
            targets.pg_swap(job.source_uri, schema, table, old, shadow, _pg_part(job))
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
        live, dropped = _cleanup_plan(job)
        if not job.intent:
            _begin(conn, job, "cleanup")
        faults.step("cleanup.after_intent")
        if targets.is_qdrant(job.source_uri):
            targets.qdrant_drop(job.source_uri, dropped)
        else:
            schema = job.cutover["schema"] if job.cutover else _pg_location(job)[0]
            keep = job.cutover["table"] if job.state == "cut_over" and job.cutover else None
            if targets.pg_oid(job.source_uri, schema, dropped) is not None:  # else: re-run
                targets.pg_drop(job.source_uri, schema, dropped, keep)
        faults.step("cleanup.after_drop")
        _finish(conn, job, "cleanup", "cleaned")
    log.info("cleanup done", job=job.short, dropped=dropped)
    return Switched(str(job.id), "cleaned", live, dropped)


def _cleanup_plan(job: Job) -> tuple[str, str]:
    """(what stays live, what to drop), after checking on the store itself that what is
    dropped is not served: the state database may be wrong, the store is not."""
    cut_over = job.state == "cut_over" and job.cutover is not None
    if job.cutover and _target_served(job) != cut_over:
        raise ReindexError(
            f"the job is {job.state} but the served name serves the "
            f"{'source' if cut_over else 'target'}; not dropping anything",
            job_id=job.short,
        )
    if cut_over and job.cutover:
        details = job.cutover
        live = details["new"] if details["kind"] == "qdrant_alias" else details["table"]
        dropped = details["old"]
    else:
        live, dropped = store_name(job.source_uri), store_name(job.target_uri)
    if targets.is_qdrant(job.source_uri):
        serving = sorted(
            a for a, c in targets.qdrant_aliases(job.source_uri).items() if c == dropped
        )
        if serving:
            raise ReindexError(
                f"alias {serving[0]!r} serves {dropped!r}; not dropping it", job_id=job.short
            )
    return live, dropped
