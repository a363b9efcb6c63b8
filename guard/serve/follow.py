"""``guard serve --follow JOB``: serve a re-index job's baseline engine until its cutover,
the candidate from then on, and the baseline again after a rollback, so an application
that embeds its queries and writes through ``guard serve`` switches vector spaces with
the store.

The moment to move is when the switch holds writers off (the cutover or rollback records
``writers_held`` in its intent once the live table is locked): a write embedded by the
new engine from then on waits for the lock and lands in the data readers move to.
Otherwise the store itself says which side is served (``serves_target``), the truth after
a crash. Polled every ``POLL_SECONDS``: a write embedded before the move and sent after
the lock was taken lands with the old engine's vector (README, "Live migrations").
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from guard.errors import ConfigError, GuardError
from guard.logs import get_logger
from guard.reindex.jobs import Job, load_job
from guard.state import connect
from guard.stores import ReindexStore, open_reindex

log = get_logger(__name__)
POLL_SECONDS = 0.05


def serves_candidate(job: Job, target_served: Callable[[], bool]) -> bool:
    """Which engine a job's readers and writers need now: the candidate's from the moment
    a cutover holds writers off, the baseline's from the moment a rollback does. The
    store is asked (``target_served``) only while a switch is recorded and has not held
    writers yet (a crash may have left it), or after cleanup: otherwise the state
    database knows, and a ``qdrant+local:`` folder, which one process at a time may
    open, is left to the process that migrates it."""
    intent = job.intent or {}
    if intent.get("writers_held"):
        return intent.get("step") == "cutover"
    if not intent and job.state in ("active", "cut_over", "rolled_back"):
        return job.state == "cut_over"
    return target_served()  # an unsettled switch, or a job cleaned up


class Follower:
    """Watches one job; once started, calls ``move(candidate: bool)`` whenever the side
    changes."""

    def __init__(self, job_ref: str, dsn: str | None = None) -> None:
        self._ref, self._dsn = job_ref, dsn
        self._move: Callable[[bool], None] = lambda _candidate: None
        self._conn = connect(dsn)
        self.job = load_job(self._conn, job_ref)
        if not self.job.baseline_uri:
            self._conn.close()
            raise ConfigError(
                f"job {self.job.short} has no baseline engine to serve before its cutover:"
                " plan it with --baseline ENGINE (or roll back with --baseline ENGINE)"
            )
        self._store: ReindexStore = open_reindex(self.job.source_uri)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guard-serve-follow", daemon=True)
        self.candidate = self.side_now()

    def side_now(self) -> bool:
        self.job = load_job(self._conn, self._ref)
        job = self.job
        return serves_candidate(
            job, lambda: bool(job.cutover) and self._store.serves_target(job.cutover or {})
        )

    def start(self, move: Callable[[bool], None]) -> None:
        self._move = move
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._store.close()
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                candidate = self.side_now()
            except GuardError as exc:  # keep serving the side we have; say so once a poll
                log.warning("serve_follow_unknown", job=self.job.short, error=str(exc))
                continue
            except Exception as exc:  # the state database went away: the same
                log.warning("serve_follow_unknown", job=self.job.short, error=repr(exc))
                self._reconnect()
                continue
            if candidate != self.candidate:
                self.candidate = candidate
                self._move(candidate)
                log.info("serve_follow_moved", job=self.job.short, to=_name(candidate))

    def _reconnect(self) -> None:
        try:
            self._conn.close()
            self._conn = connect(self._dsn)
        except Exception as exc:  # retried next poll
            log.warning("serve_follow_reconnect_failed", error=repr(exc))


def _name(candidate: bool) -> str:
    return "candidate" if candidate else "baseline"
