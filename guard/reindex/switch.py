"""``cutover``, ``rollback`` and ``cleanup``: move readers to the target in one atomic step,
move them back, and only on an explicit cleanup drop the data that is no longer live.

Qdrant readers must query through an alias: cutover points the alias at the target
collection. When the source URI names an alias, that alias is switched; when it names
a real collection, ``--alias NAME`` says which alias the application queries (it is
created if missing). pgvector tables are renamed in one transaction: the source becomes
``<table>__old_<jobid8>`` and the shadow table takes the source's name with everything
else the source had (names, foreign keys, triggers, grants, ...); the kept copy loses its
foreign keys, so no cascade from the live side changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from psycopg.types.json import Jsonb

from guard.errors import ReindexError
from guard.logs import get_logger
from guard.reindex import targets
from guard.reindex.jobs import Job, load_job
from guard.reindex.provenance import short_id, store_name
from guard.reindex.state import connect
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


def cutover(
    job_ref: str,
    *,
    alias: str | None = None,
    force: bool = False,
    accept_skipped: bool = False,
    dsn: str | None = None,
) -> Switched:
    """Switch readers to the target. Unless ``force``, verify first (batches done, ids and
    text hashes equal, sampled vectors right) and refuse on any finding."""
    from guard.reindex.verify import verify_job

    with connect(dsn) as conn:
        job = load_job(conn, job_ref)
    if job.state not in ("active", "rolled_back"):
        raise ReindexError(f"the job is {job.state}; nothing to cut over", job_id=job.short)
    if not force:
        check = verify_job(str(job.id), sample=32, accept_skipped=accept_skipped, dsn=dsn)
        if not check.ok:
            raise ReindexError(
                "verify failed, not switching: " + "; ".join(check.reasons), job_id=job.short
            )
    if targets.is_qdrant(job.source_uri):
        details = _qdrant_cutover(job, alias)
        live, kept = f"alias {details['alias']} -> {details['new']}", details["old"]
    else:
        details = _pg_cutover(job)
        live, kept = details["table"], details["old"]
    with connect(dsn) as conn:
        conn.execute(
            "UPDATE guard_reindex_jobs SET state = 'cut_over', cutover = %s WHERE id = %s",
            (Jsonb(details), job.id),
        )
    log.info("cutover done", job=job.short, live=live)
    return Switched(str(job.id), "cut_over", live, kept)


def _qdrant_cutover(job: Job, alias: str | None) -> dict[str, Any]:
    name, new = store_name(job.source_uri), store_name(job.target_uri)
    points_at = targets.qdrant_alias_target(job.source_uri, name)
    if points_at is not None:  # the source URI names the alias the application queries
        if alias not in (None, name):
            raise ReindexError(
                f"the source {name!r} is itself an alias; leave out --alias", job_id=job.short
            )
        alias, old = name, points_at
    else:
        if alias is None:
            raise ReindexError(
                f"{name!r} is a real collection, not an alias, so readers cannot be switched "
                f"atomically; give --alias NAME, the alias your application queries (it will "
                f"point at {new!r}; rollback points it at {name!r})",
                job_id=job.short,
            )
        current = targets.qdrant_alias_target(job.source_uri, alias)
        if current not in (None, name, new):
            raise ReindexError(
                f"alias {alias!r} points at {current!r}, neither the source nor the target",
                job_id=job.short,
            )
        old = name
    targets.qdrant_switch(job.source_uri, alias, new)
    return {"kind": "qdrant_alias", "alias": alias, "old": old, "new": new}


def _pg_cutover(job: Job) -> dict[str, Any]:
    schema, table, shadow = _pg_location(job)
    old = f"{table}__old_{short_id(job.id)}"
    targets.pg_build_indexes(job.source_uri, schema, table, shadow)
    targets.pg_swap(job.source_uri, schema, table, shadow, old)
    return {"kind": "pg_rename", "schema": schema, "table": table, "old": old, "shadow": shadow}


def _pg_location(job: Job) -> tuple[str, str, str]:
    store = open_store(job.source_uri)
    try:
        info = store.describe()
    finally:
        store.close()
    schema = str(info.details.get("schema") or "public")
    return schema, store_name(job.source_uri), store_name(job.target_uri)


def rollback(job_ref: str, *, dsn: str | None = None) -> Switched:
    """Switch readers back to the source data; the target stays until ``cleanup``."""
    with connect(dsn) as conn:
        job = load_job(conn, job_ref)
    if job.state != "cut_over" or not job.cutover:
        raise ReindexError(
            f"the job is {job.state}; only a cut-over job rolls back", job_id=job.short
        )
    details = job.cutover
    if details["kind"] == "qdrant_alias":
        targets.qdrant_switch(job.source_uri, details["alias"], details["old"])
        live, kept = f"alias {details['alias']} -> {details['old']}", details["new"]
    else:
        targets.pg_swap(
            job.source_uri, details["schema"], details["table"], details["old"], details["shadow"]
        )
        live, kept = details["table"], details["shadow"]
    with connect(dsn) as conn:
        conn.execute(
            "UPDATE guard_reindex_jobs SET state = 'rolled_back' WHERE id = %s", (job.id,)
        )
    log.info("rollback done", job=job.short, live=live)
    return Switched(str(job.id), "rolled_back", live, kept)


def cleanup(job_ref: str, *, dsn: str | None = None) -> Switched:
    """Drop what is not live: the old source after a cutover, else the target."""
    with connect(dsn) as conn:
        job = load_job(conn, job_ref)
    if job.state == "cleaned":
        raise ReindexError("the job is already cleaned up", job_id=job.short)
    qdrant = targets.is_qdrant(job.source_uri)
    if job.state == "cut_over" and job.cutover:
        details = job.cutover
        if qdrant:
            targets.qdrant_drop(job.source_uri, details["old"])
        else:
            targets.pg_drop(job.source_uri, details["schema"], details["old"], details["table"])
        live, dropped = details["table" if not qdrant else "new"], details["old"]
    else:
        live, dropped = store_name(job.source_uri), store_name(job.target_uri)
        if qdrant:
            targets.qdrant_drop(job.source_uri, dropped)
        else:
            schema, _, _ = _pg_location(job)
            targets.pg_drop(job.source_uri, schema, dropped, None)
    with connect(dsn) as conn:
        conn.execute("UPDATE guard_reindex_jobs SET state = 'cleaned' WHERE id = %s", (job.id,))
    log.info("cleanup done", job=job.short, dropped=dropped)
    return Switched(str(job.id), "cleaned", live, dropped)
