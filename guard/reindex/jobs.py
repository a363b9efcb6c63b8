"""A re-index job's row in the state database, and reading it by id or id prefix.

A job stores its URIs without their passwords (``guard.secrets.strip``): the state
database is read by every worker and operator. Workers on any machine reconnect with the
secret from their environment (``PGPASSWORD`` or ``~/.pgpass``, ``api_key_env=``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from guard.errors import ConfigError, ReindexError
from guard.reindex.provenance import Window
from guard.state import Conn

JOB_COLUMNS = (
    "id, created_at, source_uri, target_uri, candidate_uri, fingerprint_hash, dims, distance,"
    " total_records, batch_size, max_attempts, window_start, window_end, max_rate,"
    " measured_rate, paused, state, cutover, started_at, finished_at, intent, baseline_uri"
)


@dataclass(frozen=True)
class Job:
    """A job row. ``source_uri``, ``target_uri`` and ``candidate_uri`` are stored
    without passwords (jobs planned before that may hold some): print them redacted."""

    id: uuid.UUID
    created_at: datetime
    source_uri: str
    target_uri: str
    candidate_uri: str
    fingerprint_hash: str
    dims: int
    distance: str
    total_records: int
    batch_size: int
    max_attempts: int
    window: Window | None
    max_rate: float | None
    measured_rate: float | None
    paused: bool
    state: str
    cutover: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None
    # A switch begun and not yet recorded as ended: {"step": ..., "from": state}.
    intent: dict[str, Any] | None = None
    # The engine that made the source's vectors (``plan --baseline``); None: not known.
    baseline_uri: str | None = None

    @property
    def short(self) -> str:
        return self.id.hex[:8]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Job:
        (job_id, created, source, target, candidate, fp_hash, dims, distance, total, size,
         attempts, w_start, w_end, max_rate, measured, paused, state, cutover, started,
         finished, intent, baseline) = row  # fmt: skip
        return cls(
            job_id, created, source, target, candidate, fp_hash, dims, distance, total, size,
            attempts, Window(w_start, w_end) if w_start is not None else None, max_rate,
            measured, paused, state, cutover, started, finished, intent, baseline,
        )  # fmt: skip


def load_job(conn: Conn, job_ref: str) -> Job:
    """The job whose id is ``job_ref`` or starts with it (at least 8 hex digits)."""
    ref = job_ref.strip().lower().replace("-", "")
    if len(ref) < 8 or any(c not in "0123456789abcdef" for c in ref):
        raise ConfigError(f"job id must be at least 8 hex digits, not {job_ref!r}")
    found = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM guard_reindex_jobs"  # noqa: S608 - constant columns
        " WHERE replace(id::text, '-', '') LIKE %s ORDER BY created_at LIMIT 2",
        (ref + "%",),
    ).fetchall()
    if not found:
        raise ReindexError(f"no re-index job {job_ref!r} in the state database")
    if len(found) > 1:
        raise ReindexError(f"job id {job_ref!r} is ambiguous; give more digits")
    return Job.from_row(found[0])
