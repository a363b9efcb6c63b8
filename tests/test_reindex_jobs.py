"""Re-index jobs end to end: real stores (qdrant-local, pgvector), the real llama.cpp
engine (the demo F16 GGUF as the candidate), a real state database."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fixtures_stores import STORE_KINDS, unit_vectors

from guard.config import GuardConfig
from guard.engines import open_engine
from guard.errors import ConfigError
from guard.monitor.service import MonitorService
from guard.records import RecordBatch
from guard.reindex.catchup import catch_up
from guard.reindex.ledger import Ledger
from guard.reindex.plan import plan_job
from guard.reindex.status import job_status, set_paused
from guard.reindex.switch import cleanup, cutover, rollback
from guard.reindex.verify import verify_job
from guard.reindex.worker import run_worker
from guard.state import connect
from guard.stores import open_store

RECORDS = 60
BATCH = 10
NO_TEXT = (7, 50)  # ids stored without text: skipped with a reason, never dropped silently
OLD_DIMS = 16  # the "old model" the source was embedded with
KILL_RATE = 5  # records per second in the kill test: a batch every 2 s, a target to hit

GUARD = str(Path(sys.executable).with_name("guard"))  # the console script of this venv


def guard_cmd(*args: str) -> list[str]:
    return [GUARD, "reindex", *args]


@pytest.fixture(scope="session")
def candidate(gguf_f16: Path) -> str:
    return f"llamacpp:{gguf_f16}"


@pytest.fixture(scope="session")
def texts(corpus: list[str]) -> list[str]:
    return [f"{i}: {text[:100]}" for i, text in enumerate(corpus[:RECORDS])]


def _text_of(i: int, texts: list[str]) -> str | None:
    return None if i in NO_TEXT else texts[i]


@pytest.fixture
def source(new_store_uri: Callable[..., str], texts: list[str]) -> str:
    """A source of RECORDS records embedded by an 'old model' (OLD_DIMS dims)."""
    uri = new_store_uri()
    store = open_store(uri)
    store.create(dims=OLD_DIMS, distance="cosine")
    ids = tuple(range(RECORDS))
    store.upsert(
        RecordBatch(
            ids,
            tuple(_text_of(i, texts) for i in ids),
            unit_vectors(RECORDS, OLD_DIMS, seed=1),
            tuple({"source": f"doc-{i // 10}"} for i in ids),
        )
    )
    store.close()
    return uri


def snapshot(uri: str) -> dict[Any, tuple[str | None, bytes, str]]:
    """Every record of a store: text, vector bytes and payload, by id."""
    store = open_store(uri)
    try:
        found: dict[Any, tuple[str | None, bytes, str]] = {}
        for batch in store.scan(batch_size=50, with_payload=True):
            for i, record_id in enumerate(batch.ids):
                payload = json.dumps(batch.payloads[i], sort_keys=True, default=str)
                found[record_id] = (batch.texts[i], batch.vectors[i].tobytes(), payload)
        return found
    finally:
        store.close()


def target_of(job_id: str) -> str:
    from guard.reindex.jobs import load_job

    with connect() as conn:
        return load_job(conn, job_id).target_uri


def _batches_done(job_id: str) -> int:
    with connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM guard_reindex_batches WHERE job_id = %s AND status = 'done'",
            (uuid.UUID(job_id),),
        ).fetchone()
    return int(row[0]) if row else 0


def _done_by_owner(job_id: str) -> list[tuple[str, int]]:
    """(worker, batches it finished) for each worker that finished some."""
    with connect() as conn:
        rows = conn.execute(
            "SELECT lease_owner, count(*) FROM guard_reindex_batches"
            " WHERE job_id = %s AND status = 'done' GROUP BY lease_owner",
            (uuid.UUID(job_id),),
        ).fetchall()
    return [(str(owner), int(count)) for owner, count in rows]


def plan(source: str, candidate: str, **options: Any) -> str:
    return plan_job(store=source, candidate=candidate, batch_size=BATCH, **options).job_id


def _assert_complete_and_right(report: dict[str, Any]) -> None:
    """A verify report (``verify --format json`` or ``Verification.as_dict``) of a target
    holding exactly the source ids, every vector re-embedded and equal."""
    assert report["reasons"] == []
    assert (report["source_records"], report["target_records"]) == (
        RECORDS,
        RECORDS - len(NO_TEXT),
    )
    assert (report["skipped"], report["sampled"]) == (len(NO_TEXT), RECORDS - len(NO_TEXT))
    assert report["examples"] == {}  # no missing, extra, duplicate or mismatching id


def _verify_all(job_id: str) -> dict[str, Any]:
    return verify_job(job_id, sample=1000, accept_skipped=True).as_dict()


def test_killed_workers_resume_and_verify_proves_the_target(
    state_dsn: str, source: str, candidate: str
) -> None:
    """SIGTERM once, then SIGKILL `guard reindex run` at random moments; resumed runs
    finish the job and verify proves exactly the source ids, each vector the candidate's
    embedding of its text, and the source untouched."""
    before = snapshot(source)
    planned = subprocess.run(
        guard_cmd(
            "plan", "--store", source, "--candidate", candidate, "--batch-size", str(BATCH),
            "--max-rate", str(KILL_RATE), "--format", "json",
        ),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    plan_out = json.loads(planned.stdout)
    job_id = plan_out["job_id"]
    assert plan_out["target"].endswith(uuid.UUID(job_id).hex[:8])
    _stop_gracefully(job_id)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        done_before = _batches_done(job_id)
        worker = subprocess.Popen(
            guard_cmd("run", job_id, "--lease-seconds", "2"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while worker.poll() is None and _batches_done(job_id) == done_before:
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.05)
        # Somewhere inside the next batch: it takes BATCH / KILL_RATE seconds, so each of
        # these runs finishes about one batch and the job is still unfinished at the kill.
        time.sleep(rng.uniform(0.0, 0.5 * BATCH / KILL_RATE))
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            kills += 1
        worker.wait()
    assert kills >= 2, f"workers finished before being killed (seed {seed})"
    final = subprocess.run(
        guard_cmd("run", job_id, "--lease-seconds", "2", "--format", "json"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["stopped"] == "done"
    verified = subprocess.run(
        guard_cmd("verify", job_id, "--sample", "1000", "--accept-skipped", "--format", "json"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    _assert_complete_and_right(json.loads(verified.stdout))
    assert before == snapshot(source)
    with connect() as conn:
        retaken = conn.execute(
            "SELECT count(*) FROM guard_reindex_batches WHERE job_id = %s AND attempts > 0",
            (uuid.UUID(job_id),),
        ).fetchone()
    assert retaken is not None and retaken[0] >= 1  # a dead worker's lease was taken over


def _stop_gracefully(job_id: str) -> None:
    """SIGTERM: the worker gives its leases back at once and says it was interrupted."""
    done_before = _batches_done(job_id)
    worker = subprocess.Popen(
        guard_cmd("run", job_id, "--lease-seconds", "30", "--format", "json"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while worker.poll() is None and _batches_done(job_id) == done_before:
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=30)
    assert (worker.returncode, json.loads(out)["stopped"]) == (0, "interrupted")
    with connect() as conn:
        leased = conn.execute(
            "SELECT count(*) FROM guard_reindex_batches WHERE job_id = %s AND status = 'leased'",
            (uuid.UUID(job_id),),
        ).fetchone()
    assert leased == (0,)


# qdrant-client's local mode allows one process per folder: two workers need a server.
@pytest.mark.parametrize("store_kind", [k for k in STORE_KINDS if k != "qdrant-local"])
def test_two_workers_process_disjoint_batches(
    state_dsn: str, source: str, candidate: str, store_kind: str
) -> None:
    """Two worker processes on one job split the batches between them and finish it
    together."""
    job_id = plan(source, candidate, max_rate=10)  # slow enough for both to start
    workers = [
        subprocess.Popen(
            guard_cmd("run", job_id, "--format", "json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [json.loads(w.communicate()[0]) for w in workers]
    batches = RECORDS // BATCH
    assert batches == sum(r["batches_done"] for r in results)
    assert all(r["batches_done"] > 0 for r in results), results
    owners = _done_by_owner(job_id)
    assert {(r["worker"], r["batches_done"]) for r in results} == set(owners)
    _assert_complete_and_right(_verify_all(job_id))


def _two_workers(job_id: str) -> list[Any]:
    """The results of two workers run on ``job_id`` at once, in threads of this process."""
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(run_worker(job_id))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_two_workers_in_one_process_split_a_job(
    state_dsn: str, source: str, candidate: str
) -> None:
    """Two workers in one process (how qdrant-local, one process per folder, runs
    several) take disjoint batches through the same leases and finish the job together."""
    job_id = plan(source, candidate, max_rate=10)  # slow enough for both to start
    results = _two_workers(job_id)
    assert sorted(r.stopped for r in results) == ["done", "done"]
    assert sum(r.batches_done for r in results) == RECORDS // BATCH
    assert all(r.batches_done > 0 for r in results), results
    owners = _done_by_owner(job_id)
    assert {(r.worker, r.batches_done) for r in results} == set(owners)
    _assert_complete_and_right(_verify_all(job_id))


@pytest.mark.parametrize("store_kind", ["pgvector"], indirect=True)
def test_max_rate_bounds_the_whole_job_not_each_worker(
    state_dsn: str, source: str, candidate: str
) -> None:
    """Two workers on one job with ``--max-rate`` share it through the ledger: the job's
    settled records over its time stay under the limit, but for the first chunk, which
    may start at once (with a pacer in each worker, two workers came to 18 records/s
    under a limit of 10 here)."""
    rate = 10.0
    job_id = plan(source, candidate, max_rate=rate)
    results = _two_workers(job_id)
    assert sorted(r.stopped for r in results) == ["done", "done"]
    assert all(r.batches_done > 0 for r in results), results  # both worked on it
    with connect() as conn:
        row = conn.execute(
            "SELECT sum(b.written + b.skipped), extract(epoch FROM max(b.done_at) - j.started_at),"
            " extract(epoch FROM j.rate_next_at - j.started_at)"
            " FROM guard_reindex_batches b JOIN guard_reindex_jobs j ON j.id = b.job_id"
            " WHERE b.job_id = %s GROUP BY j.started_at, j.rate_next_at",
            (uuid.UUID(job_id),),
        ).fetchone()
    assert row is not None
    settled, elapsed, reserved = int(row[0]), float(row[1]), row[2]
    assert settled == RECORDS
    # The last chunk's slot began at least (RECORDS - BATCH) / rate after the first one.
    assert (settled - BATCH) / elapsed <= rate
    assert reserved is not None and float(reserved) >= RECORDS / rate  # all from one clock


def test_pace_hands_out_one_clocks_slots_to_every_worker(state_dsn: str) -> None:
    """Workers on their own connections reserving at once get back-to-back slots of
    records / max_rate seconds each on the job's one clock, and the wait until theirs."""
    from guard.reindex.jobs import load_job

    with connect(state_dsn) as conn:
        job_id = _bare_job(conn, 1)
        conn.execute(
            "UPDATE guard_reindex_jobs SET max_rate = 2,"
            " rate_next_at = date_trunc('second', now()) + interval '1 hour' WHERE id = %s",
            (job_id,),
        )
        job = load_job(conn, job_id.hex)
        anchor = conn.execute(
            "SELECT rate_next_at FROM guard_reindex_jobs WHERE id = %s", (job_id,)
        ).fetchone()[0]  # type: ignore[index]
    waits: list[float] = []

    def reserve(n: int) -> None:
        with connect(state_dsn) as own:
            ledger = Ledger(own, job, f"worker-{n}", lease_seconds=30)
            waits.extend(ledger.pace(10) for _ in range(3))

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with connect(state_dsn) as conn:
        end = conn.execute(
            "SELECT rate_next_at FROM guard_reindex_jobs WHERE id = %s", (job_id,)
        ).fetchone()[0]  # type: ignore[index]
        unlimited = Ledger(conn, replace(job, max_rate=None), "free", 30).pace(10)
    assert end - anchor == timedelta(seconds=12 * 10 / 2)  # 12 slots of 5 s, none lost
    # Slot k begins at anchor + 5k s: each wait is that less the time it was asked at.
    ordered = sorted(waits)
    assert all(3600 - 60 < w - 5 * k <= 3600 for k, w in enumerate(ordered)), ordered
    assert unlimited == 0.0


def _top1(uri: str, vectors: Any) -> list[Any]:
    store = open_store(uri)
    try:
        return [ids[0] for ids in store.search(vectors, 1)]
    finally:
        store.close()


def _dims(uri: str) -> int:
    store = open_store(uri)
    try:
        return store.describe().dims
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["pgvector"], indirect=True)
def test_a_warm_cache_writes_what_a_cold_run_writes_and_says_how_much_it_served(
    state_dsn: str, source: str, candidate: str, tmp_path: Path
) -> None:
    """`guard reindex run --config` takes ``[cache]`` from the file: off, it embeds
    everything; on, a first job fills the cache at the configured path (GUARD_HOME's
    stays untouched) and a second job of the same store takes every vector from it,
    writing the vectors the cold run wrote."""
    home = tmp_path / "home"
    cache_file = tmp_path / "cache.sqlite"
    off, on = tmp_path / "off.toml", tmp_path / "on.toml"
    off.write_text("[cache]\nenabled = false\n", encoding="utf-8")
    on.write_text(f'[cache]\npath = "{cache_file}"\n', encoding="utf-8")
    env = {**os.environ, "GUARD_HOME": str(home)}
    jobs = [plan(source, candidate) for _ in range(3)]

    def run(job_id: str, toml: Path, *options: str) -> str:
        done = subprocess.run(
            guard_cmd("run", job_id, "--config", str(toml), *options),
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        return done.stdout

    cold = json.loads(run(jobs[0], off, "--format", "json"))
    filling = json.loads(run(jobs[1], on, "--format", "json"))
    warm = run(jobs[2], on)

    embedded = RECORDS - len(NO_TEXT)
    assert (cold["cache"], filling["cache"]) == (
        {"enabled": False, "hits": 0, "misses": 0},
        {"enabled": True, "hits": 0, "misses": embedded},
    )
    assert f"{embedded} of {embedded} vectors from the cache" in warm, warm
    assert (cache_file.is_file(), (home / "cache").exists()) == (True, False)
    cold_rows, warm_rows = (snapshot(target_of(job_id)) for job_id in (jobs[0], jobs[2]))
    assert cold_rows.keys() == warm_rows.keys()
    ids = sorted(cold_rows)
    a, b = (
        np.stack([np.frombuffer(rows[i][1], np.float32) for i in ids])
        for rows in (cold_rows, warm_rows)
    )
    cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert (len(ids), float(cosines.min()) > 0.9999) == (embedded, True)


@pytest.mark.parametrize("store_kind", ["qdrant-local"], indirect=True)
def test_local_targets_journal_in_wal_and_sources_keep_theirs(
    state_dsn: str, source: str, candidate: str
) -> None:
    """qdrant-client's local mode commits per point; the guard puts the collections it
    creates in SQLite's WAL journal (cheaper commits) and never changes a source's."""
    import sqlite3
    from contextlib import closing

    from guard.uri import parse

    def journal_mode(uri: str, set_to: str = "") -> str:
        parsed = parse(uri)
        path = Path(parsed.netloc + parsed.path)
        storage = path / "collection" / parsed.params["collection"] / "storage.sqlite"
        with closing(sqlite3.connect(storage)) as db:
            return str(db.execute(f"PRAGMA journal_mode{set_to}").fetchone()[0])

    # A user's collection, made by qdrant-client itself, has SQLite's default journal.
    assert journal_mode(source, set_to="=DELETE") == "delete"
    job_id = plan(source, candidate)
    assert run_worker(job_id).written == RECORDS - len(NO_TEXT)
    assert journal_mode(target_of(job_id)) == "wal"
    assert journal_mode(source) == "delete"
    _assert_complete_and_right(_verify_all(job_id))


def test_cutover_then_rollback_serves_the_original_data(
    state_dsn: str,
    source: str,
    candidate: str,
    texts: list[str],
    store_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    """After cutover the name the application queries answers from the new vectors;
    after rollback from the original ones; cleanup then drops only the target."""
    job_id = plan(source, candidate)
    assert run_worker(job_id).stopped == "done"
    if store_kind == "pgvector":
        live = source
        switched = cutover(job_id, accept_skipped=True)
    else:
        live = source.replace("collection=", "collection=live_")  # the alias the app queries
        switched = cutover(job_id, alias=live.split("collection=")[1], accept_skipped=True)
    assert switched.state == "cut_over"
    probe = [3, 40, 57]
    engine = open_engine(candidate)
    fresh = engine.embed([texts[i] for i in probe])
    engine.close()
    assert _dims(live) == 384
    assert probe == _top1(live, fresh)
    if store_kind == "pgvector":  # the vector index was built on the new vectors
        table = live.split("table=")[1]
        with psycopg.connect(request.getfixturevalue("pg_dsn")) as conn:
            indexes = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,)
            ).fetchall()
        assert any("USING hnsw" in row[0] for row in indexes), indexes

    rollback(job_id)
    original = unit_vectors(RECORDS, OLD_DIMS, seed=1)[probe]
    assert _dims(live) == OLD_DIMS
    assert probe == _top1(live, original)

    cleaned = cleanup(job_id)
    target = open_store(target_of(job_id))
    with pytest.raises(Exception, match=r"not found|does not exist"):
        target.describe()
    target.close()
    assert _dims(live) == OLD_DIMS
    assert cleaned.kept.endswith(uuid.UUID(job_id).hex[:8])


def test_catch_up_applies_inserts_updates_and_deletes(
    state_dsn: str, source: str, candidate: str, texts: list[str]
) -> None:
    """Source changes made while the job runs are all in the target after catch-up, and a
    second catch-up embeds nothing."""
    job_id = plan(source, candidate)
    store = open_store(source)  # before the worker reaches them: the worker sees these
    store.upsert(RecordBatch((RECORDS + 10,), ("added early",), unit_vectors(1, OLD_DIMS, 5)))
    store.delete([10])
    store.close()
    run_worker(job_id)
    store = open_store(source)  # behind the worker: only catch-up sees these
    new_ids = (RECORDS, RECORDS + 1, RECORDS + 2)
    store.upsert(
        RecordBatch(
            (*new_ids, 1, 2),
            ("a new paragraph", "another one", "a third", "changed text one", "changed two"),
            unit_vectors(5, OLD_DIMS, seed=9),
            tuple({"source": "new"} for _ in range(5)),
        )
    )
    store.delete([3, 4])
    store.close()

    first = catch_up(job_id)
    assert (first.inserted, first.updated, first.deleted) == (3, 2, 2)
    result = verify_job(job_id, sample=1000, accept_skipped=True)
    assert result.reasons == []
    assert RECORDS + 1 - 1 + 3 - 2 - len(NO_TEXT) == result.target_records

    second = catch_up(job_id)
    assert (second.inserted, second.updated, second.deleted) == (0, 0, 0)


def test_pause_stops_workers_and_status_reports_skips(
    state_dsn: str, source: str, candidate: str
) -> None:
    """A paused job runs nothing; once resumed it completes, records without text are
    counted by reason, and verify refuses them unless accepted."""
    job_id = plan(source, candidate)
    set_paused(job_id, True)
    assert (lambda r: (r.stopped, r.batches_done))(run_worker(job_id)) == ("paused", 0)
    set_paused(job_id, False)
    assert run_worker(job_id).stopped == "done"

    status = job_status(job_id)
    assert status.complete
    assert {"no_text": len(NO_TEXT)} == status.skipped_by_reason
    assert (RECORDS - len(NO_TEXT), len(NO_TEXT)) == (status.written, status.skipped)
    strict = subprocess.run(guard_cmd("verify", job_id, "--sample", "8"), capture_output=True)
    assert strict.returncode == 1


@pytest.mark.parametrize("engine_kind", ["llamacpp", "ollama"])
def test_texts_over_the_candidates_limit_are_skipped_as_too_long(
    state_dsn: str,
    new_store_uri: Callable[..., str],
    gguf_f16: Path,
    request: pytest.FixtureRequest,
    texts: list[str],
    long_texts: list[str],
    engine_kind: str,
) -> None:
    """With truncate=false the candidate refuses texts over its limit, in this process
    (llama.cpp) or behind HTTP (Ollama): the workers skip exactly those records as
    too_long, the others finish, and verify passes only when the skips are accepted, and
    only while the source still holds the text that was refused."""
    long_ids = {3, 14}
    ids = tuple(range(20))
    uri = new_store_uri()
    store = open_store(uri)
    store.create(dims=OLD_DIMS, distance="cosine")
    stored = tuple(long_texts[i % len(long_texts)] if i in long_ids else texts[i] for i in ids)
    store.upsert(RecordBatch(ids, stored, unit_vectors(len(ids), OLD_DIMS, seed=3)))
    store.close()
    if engine_kind == "llamacpp":
        candidate = f"llamacpp:{gguf_f16}?max_tokens=128&truncate=false"
    else:
        server = request.getfixturevalue("ollama_server")
        candidate = f"ollama+{server.url}?model=all-minilm&max_tokens=128&truncate=false"

    job_id = plan(uri, candidate)
    result = run_worker(job_id)
    assert (result.stopped, result.written, result.skipped, result.failed_batches) == (
        "done", len(ids) - len(long_ids), len(long_ids), 0,
    )  # fmt: skip
    assert job_status(job_id).skipped_by_reason == {"too_long": len(long_ids)}
    with connect() as conn:
        rows = conn.execute(
            "SELECT record_id, detail FROM guard_reindex_skipped WHERE job_id = %s",
            (uuid.UUID(job_id),),
        ).fetchall()
    assert {row[0] for row in rows} == long_ids
    assert all("truncate=false" in row[1] for row in rows)
    assert verify_job(job_id, sample=100).reasons != []
    accepted = verify_job(job_id, sample=100, accept_skipped=True)
    assert (accepted.reasons, accepted.target_records) == ([], len(ids) - len(long_ids))

    store = open_store(uri)  # the source shortens one refused text: no longer a valid skip
    store.upsert(RecordBatch((3,), ("short now",), unit_vectors(1, OLD_DIMS, seed=4)))
    store.close()
    stale = verify_job(job_id, sample=0, accept_skipped=True)
    assert (stale.missing, stale.skipped) == ([3], 1)
    assert catch_up(job_id).inserted == 1
    assert job_status(job_id).skipped_by_reason == {"too_long": 1}
    fixed = verify_job(job_id, sample=100, accept_skipped=True)
    assert (fixed.reasons, fixed.target_records) == ([], len(ids) - 1)


def test_failing_batches_are_retried_then_marked_failed(
    state_dsn: str, source: str, candidate: str
) -> None:
    """A source that cannot be read makes every batch fail; after max_attempts each is
    failed with its error, and the worker says so."""
    job_id = plan(source, candidate, max_attempts=2)
    gone = open_store(source)
    gone.drop()
    gone.close()

    result = run_worker(job_id)
    status = job_status(job_id)
    assert (result.stopped, result.failed_batches) == ("failed", RECORDS // BATCH)
    assert status.batches == {"failed": RECORDS // BATCH}
    assert all(f["attempts"] == 2 and f["error"] for f in status.failed_batches)


def _bare_job(conn: psycopg.Connection[Any], batches: int) -> uuid.UUID:
    job_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO guard_reindex_jobs (id, source_uri, target_uri, candidate_uri, fingerprint,"
        " fingerprint_hash, dims, distance, total_records, batch_size, max_attempts)"
        " VALUES (%s, 's', 't', 'c', '{}', 'h', 4, 'cosine', %s, 1, 3)",
        (job_id, batches),
    )
    for seq in range(batches):
        conn.execute(
            "INSERT INTO guard_reindex_batches (job_id, seq, planned_records) VALUES (%s, %s, 1)",
            (job_id, seq),
        )
    return job_id


def test_an_expired_lease_goes_to_another_worker(state_dsn: str) -> None:
    """A dead worker's lease expires and another worker takes the batch, counting the
    attempt; a live lease is never taken twice."""
    from guard.reindex.jobs import load_job

    with connect(state_dsn) as conn:
        job = load_job(conn, _bare_job(conn, 2).hex)
        dead = Ledger(conn, job, "dead-worker", lease_seconds=1)
        alive = Ledger(conn, job, "live-worker", lease_seconds=30)
        assert dead.lease().seq == 0  # type: ignore[union-attr]
        assert alive.lease().seq == 1  # type: ignore[union-attr]
        assert alive.lease() is None
        time.sleep(1.2)
        assert alive.lease().seq == 0  # type: ignore[union-attr]
        attempts, error, owner = conn.execute(
            "SELECT attempts, last_error, lease_owner FROM guard_reindex_batches"
            " WHERE job_id = %s AND seq = 0",
            (job.id,),
        ).fetchone()  # type: ignore[misc]
    assert (attempts, owner) == (1, "live-worker")
    assert "dead-worker" in error


def test_unsafe_fingerprint_change_is_refused(
    state_dsn: str, source: str, candidate: str, gguf_f16: Path
) -> None:
    """A worker whose engine settings differ from the planned ones refuses to embed."""
    job_id = plan(source, candidate)
    with connect(state_dsn) as conn:
        conn.execute(
            "UPDATE guard_reindex_jobs SET candidate_uri = %s WHERE id = %s",
            (f"llamacpp:{gguf_f16}?normalize=true", uuid.UUID(job_id)),
        )
    with pytest.raises(Exception, match="fingerprint differs"):
        run_worker(job_id)


def test_plan_from_a_check_report(
    state_dsn: str, source: str, candidate: str, tmp_path: Path, store_kind: str
) -> None:
    """The store comes from the report; a candidate other than the one the report
    checked is refused; a Qdrant source that is no alias gets told how cutover works."""
    engine = open_engine(candidate)
    fingerprint = engine.fingerprint()
    engine.close()
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps({"verdict": "reindex", "store": {"uri": source}, "candidate": fingerprint})
    )
    planned = plan_job(store=None, candidate=candidate, report=report, batch_size=BATCH)
    assert (planned.records, planned.batches) == (RECORDS, RECORDS // BATCH)
    assert ["--alias" in note for note in planned.notes] == (
        [True] if store_kind.startswith("qdrant") else []
    )

    other = {**fingerprint, "settings": {**fingerprint["settings"], "normalize": True}}
    report.write_text(
        json.dumps({"verdict": "reindex", "store": {"uri": source}, "candidate": other})
    )
    with pytest.raises(ConfigError, match="fingerprint differs"):
        plan_job(store=None, candidate=candidate, report=report, batch_size=BATCH)


def test_workers_stay_out_of_the_window(state_dsn: str, source: str, candidate: str) -> None:
    """Outside its window a job runs nothing and the worker says why."""
    later = datetime.now() + timedelta(hours=2)
    window = f"{later:%H:%M}-{later + timedelta(hours=1):%H:%M}"
    job_id = plan(source, candidate, window=window)
    result = run_worker(job_id)
    assert (result.stopped, result.batches_done) == ("window", 0)
    assert job_status(job_id).window == window


def test_the_scheduler_runs_only_due_jobs(state_dsn: str, source: str, candidate: str) -> None:
    """Jobs inside their window (or without one) are due; paused jobs and jobs outside
    their window are not; running the due ones finishes them."""
    from guard.reindex.due import due_jobs, run_due_jobs

    later = datetime.now() + timedelta(hours=2)
    anytime = plan(source, candidate)
    not_now = plan(source, candidate, window=f"{later:%H:%M}-{later + timedelta(hours=1):%H:%M}")
    paused = plan(source, candidate)
    set_paused(paused, True)
    assert [str(job.id) for job in due_jobs()] == [anytime]
    assert [r.job_id for r in run_due_jobs()] == [anytime]
    assert due_jobs() == []
    assert job_status(anytime).complete and not job_status(not_now).complete


def test_the_guard_service_runs_due_jobs_inside_their_window(
    state_dsn: str, source: str, candidate: str, tmp_path: Path
) -> None:
    """The service's scheduler finishes a due job and leaves one outside its window;
    the job embeds through the config's [cache], like the watches."""
    later = datetime.now() + timedelta(hours=2)
    waiting = plan(source, candidate, window=f"{later:%H:%M}-{later + timedelta(hours=1):%H:%M}")
    due = plan(source, candidate)
    cache_path = tmp_path / "cache.sqlite"
    config = GuardConfig.model_validate(
        {
            "monitor": {"port": 0, "reindex_every_seconds": 1, "state_dsn": state_dsn},
            "cache": {"path": str(cache_path)},
        }
    )
    service = MonitorService(config)
    service.start()
    try:
        deadline = time.monotonic() + 180
        while _batches_done(due) < RECORDS // BATCH and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        service.stop()
    assert (_batches_done(due), _batches_done(waiting)) == (RECORDS // BATCH, 0)
    _assert_complete_and_right(_verify_all(due))
    with closing(sqlite3.connect(cache_path)) as cache:
        embedded = cache.execute("SELECT count(*) FROM vectors").fetchone()[0]
    assert embedded == job_status(due).written > 0
