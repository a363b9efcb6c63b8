"""``guard reindex run``: lease batches and re-embed them, reading, embedding and writing
at the same time.

Three stages joined by small bounded queues, so memory is a few chunks whatever the
collection size, and the engine (which releases the GIL in llama.cpp, or waits on a
server) never waits for the stores:

    reader (leases batches, scans the source) -> embedder -> writer (upserts, marks done)

A batch is marked done only after its last chunk is written, and every write is an
idempotent upsert by id, so a worker can be killed at any moment: its leases expire and
another worker (or the same one restarted) redoes those batches from their start.

A server that goes away mid-run (the store's PostgreSQL restarted, the state database
down for a while) is waited for, up to ``max_outage`` seconds (guard.reindex.patience):
each stage retries its own step on a fresh connection and goes on where it was (a scan
from the last id it read); the ledger's calls are safe to repeat. Past the bound, or
for a server not reached since the run began, the worker stops with ``StoreUnreachable``
or ``StateUnreachable``, its leases given back or left to expire.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any

from guard.cache import EmbeddingCache, cached, stats_of
from guard.engines import EmbeddingEngine, open_engine
from guard.errors import (
    GuardError,
    ReindexError,
    StateConnectionError,
    StateUnreachable,
    StoreUnreachable,
)
from guard.logs import get_logger
from guard.progress import Progress
from guard.records import RecordBatch
from guard.reindex.embedding import check_engine, embed_records
from guard.reindex.jobs import Job, load_job
from guard.reindex.ledger import Lease, Ledger, Skip
from guard.reindex.patience import DEFAULT_MAX_OUTAGE_S, Patience
from guard.reindex.provenance import in_range
from guard.reindex.waiting import Halt, Servers, Stopping
from guard.state import Conn, connect
from guard.stores import VectorStore, open_store

log = get_logger(__name__)


CHUNK = 256  # records per pipeline item: large enough to amortise store round trips


QUEUE_DEPTH = 2  # chunks waiting between two stages


_END = object()


@dataclass
class _Item:
    lease: Lease
    batch: RecordBatch | None = None  # None on the marker that closes a batch
    skipped: list[Skip] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.batch is None


@dataclass(frozen=True)
class WorkerResult:
    job_id: str
    worker: str
    batches_done: int
    written: int
    skipped: int
    stopped: str  # done, paused, window, interrupted, failed
    failed_batches: int
    engine_busy: float  # share of the run the engine spent embedding: 1.0 = never starved
    # The embedding cache's share of the texts embedded: enabled, hits, misses.
    cache: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"engine_busy": round(self.engine_busy, 3)}


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_worker(
    job_ref: str,
    *,
    lease_seconds: float = 60.0,
    dsn: str | None = None,
    stop: threading.Event | None = None,
    cache: EmbeddingCache | None = None,
    progress: Progress | None = None,
    max_outage: float = DEFAULT_MAX_OUTAGE_S,
) -> WorkerResult:
    """Work on a job until it is done, paused, outside its window, or stopped.

    With ``cache``, texts the candidate already embedded (a check's sample, a killed
    run's last batches) are not embedded again. ``progress`` hears of each batch done.
    ``stop`` is only read: the worker never sets it. A store or state database that goes
    away is waited for up to ``max_outage`` seconds.

    SIGTERM and SIGINT (when called from the main thread) stop it cleanly: in-flight
    batches are given back. SIGKILL loses nothing either: the leases just expire.
    """
    if lease_seconds < 1:
        raise ReindexError(f"lease must be at least 1 second, not {lease_seconds}")
    patience = Patience(max_outage)
    halt = Halt(stop)
    try:
        conn = connect(dsn)
    except StateConnectionError as exc:
        raise StateUnreachable(
            f"cannot reach the state database at {exc.server}: {exc.reason} (not waited "
            "for: not reached since the run began)",
            server=exc.server,
            reason=exc.reason,
        ) from exc
    with conn:
        job = load_job(conn, job_ref)
        state_server = f"{conn.info.host}:{conn.info.port}"
    if job.state != "active":
        raise ReindexError(f"the job is {job.state}; nothing to run", job_id=job.short)
    servers = Servers(patience, halt, job.short, state_server)
    worker = _Worker(job, default_worker_id(), lease_seconds, dsn, servers, cache, progress)
    with _signals_stop(halt):
        return worker.run()


@contextlib.contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Worker:
    def __init__(
        self,
        job: Job,
        worker: str,
        lease_seconds: float,
        dsn: str | None,
        servers: Servers,
        cache: EmbeddingCache | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.job = job
        self.servers = servers
        self.cache = cache
        self.progress = progress
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.dsn = dsn
        self.stop = servers.stop
        self.dead: set[uuid.UUID] = set()  # leases whose batch failed: drop their chunks
        self.held: set[uuid.UUID] = set()  # leases not yet settled: the heartbeat renews them
        self.held_lock = threading.Lock()
        self.stopped = "done"
        self.errors: list[BaseException] = []
        self.batches_done = self.written = self.skipped = 0
        self.embedding_s = 0.0
        self.settled = threading.Event()  # a batch of this worker was done or failed
        self.ended = threading.Event()  # the pipeline has drained: the heartbeat ends
        self.to_embed: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
        self.to_write: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)

    def _connect(self) -> Conn:
        return connect(self.dsn)

    def _ledger(self) -> Ledger:
        """A ledger on a connection of its own, reconnecting after an outage."""
        conn = self.servers.on_state(None, self._connect)
        return Ledger(conn, self.job, self.worker, self.lease_seconds, reconnect=self._connect)

    def run(self) -> WorkerResult:
        started = time.perf_counter()
        source = open_store(self.job.source_uri)
        target = open_store(self.job.target_uri)
        engine = cached(open_engine(self.job.candidate_uri), self.cache)
        main: Ledger | None = None
        failed = 0
        try:
            check_engine(self.job, engine)
            main = self._ledger()
            self.servers.on_state(main, main.mark_started)
            log.info("worker started", job=self.job.short, worker=self.worker)
            threads = [
                threading.Thread(target=self._guarded, args=(self._read, source), daemon=True),
                threading.Thread(target=self._guarded, args=(self._write, target), daemon=True),
                threading.Thread(target=self._guarded, args=(self._heartbeat, None), daemon=True),
            ]
            for thread in threads:
                thread.start()
            self._guarded(self._embed, engine)
            for thread in threads[:2]:
                thread.join()
            self.ended.set()  # ends the heartbeat (never the caller's stop event)
            threads[2].join()
            if self.errors:
                error = self.errors[0]
                if isinstance(error, GuardError):
                    raise error
                raise ReindexError(
                    f"worker failed: {type(error).__name__}: {error}", job_id=self.job.short
                ) from error
            remaining, failed = self.servers.on_state(main, main.open_batches)
            if self.stopped == "done" and failed:
                self.stopped = "failed"
            elif self.stopped == "done" and remaining:
                self.stopped = "interrupted"  # SIGTERM, SIGINT or the caller's stop event
            if remaining == 0 and failed == 0:
                self.servers.on_state(main, main.mark_finished)
        except Stopping:  # told to stop while waiting for the state database
            if self.stopped == "done":
                self.stopped = "interrupted"
        finally:
            if main is not None:
                with contextlib.suppress(Exception):
                    main.release_all()
                main.close()
            engine.close()
            target.close()
            source.close()
        busy = self.embedding_s / max(time.perf_counter() - started, 1e-9)
        log.info("worker stopped", job=self.job.short, reason=self.stopped, engine_busy=busy)
        return WorkerResult(
            str(self.job.id), self.worker, self.batches_done, self.written, self.skipped,
            self.stopped, failed, busy, stats_of(engine).as_dict(),
        )  # fmt: skip

    def _guarded(self, stage: Any, resource: Any) -> None:
        """Run a stage; an unexpected error stops the whole worker (leases are released)."""
        try:
            stage(resource)
        except Stopping:
            pass  # the worker is stopping anyway: nothing to report
        except BaseException as exc:
            self.errors.append(exc)
            self.stopped = "failed"
            self.stop.set()

    def _put(self, target: queue.Queue[Any], item: Any) -> None:
        while True:
            try:
                target.put(item, timeout=0.2)
                return
            except queue.Full:
                if self.errors:
                    return

    def _get(self, source: queue.Queue[Any]) -> Any:
        while True:
            try:
                return source.get(timeout=0.2)
            except queue.Empty:
                if self.errors:
                    return _END

    def _failed(self, ledger: Ledger, lease: Lease, error: GuardError) -> None:
        """Drop the batch's chunks still in the pipeline and count a failed attempt."""
        self.dead.add(lease.token)
        self._settle(lease)
        self.servers.on_state(ledger, ledger.fail, lease, str(error))
        self.settled.set()
        log.warning("batch failed", job=self.job.short, batch=lease.seq, error=str(error))

    def _settle(self, lease: Lease) -> None:
        """The lease is being reported: the heartbeat stops renewing it."""
        with self.held_lock:
            self.held.discard(lease.token)

    # -- the stages -----------------------------------------------------------------------

    def _read(self, source: VectorStore) -> None:
        ledger: Ledger | None = None
        try:
            ledger = self._ledger()
            while not self.stop.is_set():
                halt = self._halt_reason(ledger)
                if halt:
                    self.stopped = halt
                    break
                self.settled.clear()
                # One token for every try: a retry finds the lease a lost answer took.
                lease = self.servers.on_state(ledger, ledger.lease, uuid.uuid4())
                if lease is None:
                    remaining, _ = self.servers.on_state(ledger, ledger.open_batches)
                    if remaining == 0:
                        break
                    # Batches still open are in this pipeline (woken as soon as one settles,
                    # so the job ends with its last write), held by another worker, or
                    # waiting out a retry backoff (both rechecked every second or so).
                    self.settled.wait(min(1.0, self.lease_seconds / 4))
                    continue
                with self.held_lock:
                    self.held.add(lease.token)
                log.info("batch leased", job=self.job.short, batch=lease.seq)
                try:
                    finished = self._read_batch(ledger, source, lease)
                except (StoreUnreachable, StateUnreachable):
                    raise  # the server's fault, not the batch's: it goes back as it is
                except GuardError as exc:
                    self._failed(ledger, lease, exc)
                    continue
                if not finished:
                    break
        finally:
            self._put(self.to_embed, _END)
            if ledger is not None:
                ledger.close()

    def _halt_reason(self, ledger: Ledger) -> str | None:
        paused, state = self.servers.on_state(ledger, ledger.control)
        if state != "active":
            return state
        if paused:
            return "paused"
        if self.job.window and not self.job.window.contains(datetime.now().time()):
            return "window"
        return None

    def _read_batch(self, ledger: Ledger, source: VectorStore, lease: Lease) -> bool:
        """Stream one batch into the pipeline; False when the worker must stop first."""
        size = min(self.job.batch_size, CHUNK)
        for page in self.servers.pages(source, lease.after, size):
            keep = [i for i, rid in enumerate(page.ids) if in_range(rid, lease.last)]
            if keep:
                self._put(self.to_embed, _Item(lease, page.take(keep)))
            if len(keep) < len(page):
                break
            if self.stop.is_set():
                return False
            halt = self._halt_reason(ledger)
            if halt in ("paused", "cut_over", "rolled_back", "cleaned"):
                self.stopped = halt
                return False
        self._put(self.to_embed, _Item(lease))
        return True

    def _embed(self, engine: EmbeddingEngine) -> None:
        ledger: Ledger | None = None
        try:
            ledger = self._ledger()
            while True:
                item = self._get(self.to_embed)
                if item is _END:
                    break
                if self.stop.is_set() or item.lease.token in self.dead:
                    # Stopping: drop the rest, final markers too, so that no batch is marked
                    # done without all of its chunks; released leases redo them later.
                    continue
                if item.final:
                    self._put(self.to_write, item)
                    continue
                # --max-rate: this chunk's share of the job's time, whoever else works on it.
                wait = (  # only a job with a limit reaches the database here
                    self.servers.on_state(ledger, ledger.pace, len(item.batch))
                    if self.job.max_rate
                    else 0.0
                )
                if wait > 0 and self.stop.wait(wait):
                    continue  # stopping while waiting: drop it, as above
                began = time.perf_counter()
                try:
                    records, skipped = embed_records(engine, item.batch)
                except GuardError as exc:
                    self._failed(ledger, item.lease, exc)
                    continue
                finally:
                    self.embedding_s += time.perf_counter() - began
                self._put(self.to_write, _Item(item.lease, records, skipped))
        finally:
            self._put(self.to_write, _END)
            if ledger is not None:
                ledger.close()

    def _write(self, target: VectorStore) -> None:
        ledger: Ledger | None = None
        counts: dict[uuid.UUID, list[int]] = {}
        try:
            ledger = self._ledger()
            while True:
                item = self._get(self.to_write)
                if item is _END:
                    break
                token = item.lease.token
                if token in self.dead:
                    counts.pop(token, None)
                    continue
                written, skipped = counts.setdefault(token, [0, 0])
                if item.final:
                    del counts[token]
                    self._settle(item.lease)
                    finished = self.servers.on_state(
                        ledger, ledger.done, item.lease, written, skipped
                    )
                    self.settled.set()
                    if finished:
                        self._count_done(item.lease, written, skipped)
                    else:
                        log.warning("lease lost; batch left to another worker",
                                    job=self.job.short, batch=item.lease.seq)  # fmt: skip
                    continue
                try:
                    # Only calls that reach the server: an empty one would "succeed"
                    # while it is down and end the outage's clock.
                    if len(item.batch):
                        self.servers.on_store(target.upsert, item.batch)
                    if item.skipped:
                        self.servers.on_state(ledger, ledger.skip, item.skipped)
                except (StoreUnreachable, StateUnreachable):
                    raise  # the server's fault, not the batch's: it goes back as it is
                except GuardError as exc:
                    counts.pop(token, None)
                    self._failed(ledger, item.lease, exc)
                    continue
                counts[token] = [written + len(item.batch), skipped + len(item.skipped)]
        finally:
            if ledger is not None:
                ledger.close()

    def _count_done(self, lease: Lease, written: int, skipped: int) -> None:
        self.batches_done += 1
        self.written += written
        self.skipped += skipped
        log.info(
            "batch done", job=self.job.short, batch=lease.seq, written=written, skipped=skipped
        )
        if self.progress is not None:
            self.progress(
                f"batch {lease.seq} done: {written} written, {skipped} skipped; "
                f"this worker: {self.batches_done} batches, {self.written} records"
            )

    def _heartbeat(self, _unused: None) -> None:
        ledger: Ledger | None = None
        try:
            ledger = self._ledger()
            while not self.ended.wait(self.lease_seconds / 3):
                with self.held_lock:
                    held = list(self.held)
                self.servers.on_state(ledger, ledger.renew, held, halt=self.ended)
        finally:
            if ledger is not None:
                ledger.close()
