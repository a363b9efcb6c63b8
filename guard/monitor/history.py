"""The monitor's history in the state database (migrations/0002_monitor.sql).

One row per watch run, each watch's alert state and the watermark that tells which
records were written since the previous run. Connections come from
``guard.state.connect``, which applies the migrations once per process.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from guard.monitor.results import WatchRun, WatchStatus
from guard.state import Conn, connect

# Trend columns, in the order `guard monitor history` prints them.
TREND_FIELDS = (
    "id",
    "watch",
    "started_at",
    "status",
    "sample_size",
    "cosine_p1",
    "cosine_median",
    "bound_upper",
    "overlap",
    "new_records",
    "population_auc",
    "alert",
    "error",
)


@dataclass(frozen=True)
class WatchState:
    """What the previous runs left for the next one."""

    alerted_status: WatchStatus
    max_int_id: int | None
    known: bool  # False before the watch's first recorded run


class History:
    """Reads and writes one watch's rows over a connection of its own (one per thread)."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    def state(self, watch: str) -> WatchState:
        row = self._conn.execute(
            "SELECT alerted_status, max_int_id FROM guard_monitor_watches WHERE watch = %s",
            (watch,),
        ).fetchone()
        if row is None:
            return WatchState("ok", None, known=False)
        return WatchState(row[0], row[1], known=True)

    def _save_watermark(self, watch: str, max_int_id: int | None) -> None:
        self._conn.execute(
            "INSERT INTO guard_monitor_watches (watch, max_int_id) VALUES (%s, %s) "
            "ON CONFLICT (watch) DO UPDATE SET max_int_id = EXCLUDED.max_int_id, "
            "updated_at = now()",
            (watch, max_int_id),
        )

    def save_alerted(self, watch: str, status: WatchStatus) -> None:
        self._conn.execute(
            "INSERT INTO guard_monitor_watches (watch, alerted_status) VALUES (%s, %s) "
            "ON CONFLICT (watch) DO UPDATE SET alerted_status = EXCLUDED.alerted_status, "
            "updated_at = now()",
            (watch, status),
        )

    def seen_ids(self, watch: str) -> set[str]:
        rows = self._conn.execute(
            "SELECT record_id FROM guard_monitor_seen_ids WHERE watch = %s", (watch,)
        ).fetchall()
        return {str(row[0]) for row in rows}

    def _add_seen_ids(self, watch: str, ids: Iterable[str]) -> None:
        with (
            self._conn.cursor() as cursor,
            cursor.copy("COPY guard_monitor_seen_ids (watch, record_id) FROM STDIN") as copy,
        ):
            for record_id in ids:
                copy.write_row((watch, record_id))

    def record(self, run: WatchRun, alert: str) -> int:
        """Store one run and move its watch's watermark, in one transaction; return the
        run's id."""
        with self._conn.transaction():
            if run.watermark is not None:
                self._save_watermark(run.watch, run.watermark.max_int_id)
                self._add_seen_ids(run.watch, run.watermark.seen_ids)
            return self._insert(run, alert)

    def _insert(self, run: WatchRun, alert: str) -> int:
        sample = run.sample
        row = self._conn.execute(
            """
            INSERT INTO guard_monitor_runs (
                watch, started_at, finished_at, status, seed, sample_size, cosine_p1,
                cosine_median, bound_upper, bound_lower, overlap, new_records, population,
                reasons, error, alert
            ) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            RETURNING id
            """,
            (
                run.watch,
                run.started_at,
                run.finished_at,
                run.status,
                run.seed,
                sample.n if sample else None,
                sample.cosine_p1 if sample else None,
                sample.cosine_median if sample else None,
                sample.bound_upper if sample else None,
                sample.bound_lower if sample else None,
                sample.overlap if sample else None,
                run.new_records,
                json.dumps(run.population.as_dict()) if run.population else None,
                json.dumps(list(run.reasons)),
                run.error,
                alert,
            ),
        ).fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row
        return int(row[0])

    def trend(self, watch: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` runs of each watch (or of ``watch``), oldest first."""
        rows = self._conn.execute(
            """
            SELECT id, watch, started_at, status, sample_size, cosine_p1, cosine_median,
                   bound_upper, overlap, new_records, (population ->> 'auc')::float8,
                   alert, error
            FROM (
                SELECT *, row_number() OVER (PARTITION BY watch ORDER BY id DESC) AS recent
                FROM guard_monitor_runs
                WHERE %(watch)s::text IS NULL OR watch = %(watch)s
            ) AS runs
            WHERE recent <= %(limit)s
            ORDER BY watch, id
            """,
            {"watch": watch, "limit": limit},
        ).fetchall()
        return [dict(zip(TREND_FIELDS, row, strict=True)) for row in rows]


@contextmanager
def open_history(dsn: str | None = None) -> Iterator[History]:
    """A History on a fresh connection to the state database, closed afterwards."""
    conn = connect(dsn)
    try:
        yield History(conn)
    finally:
        conn.close()
