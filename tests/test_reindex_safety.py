"""Failures a re-index must survive: stale leases, crashes inside cutover, rollback and
cleanup, and two switches of one job at once. Real state database, real stores."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import test_reindex_jobs as jobs_tests
from fixtures_stores import STORE_KINDS, unit_vectors
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.conninfo import make_conninfo
from test_reindex_jobs import BATCH, GUARD, NO_TEXT, OLD_DIMS, RECORDS

from guard.errors import ReindexError, StoreError
from guard.faults import KILLED_EXIT
from guard.pgserver import embedded_dsn
from guard.records import StoreInfo
from guard.reindex.catchup import catch_up
from guard.reindex.jobs import load_job
from guard.reindex.ledger import Ledger
from guard.reindex.places import locations
from guard.reindex.plan import plan_job
from guard.reindex.verify import verify_job
from guard.reindex.worker import run_worker
from guard.state import connect
from guard.stores import open_reindex, open_store
from guard.uri import parse

# The re-index tests' fixtures: a 60-record source, its texts and the candidate engine.
candidate, source, texts = jobs_tests.candidate, jobs_tests.source, jobs_tests.texts


def _bare_job(conn: psycopg.Connection[Any], batches: int) -> uuid.UUID:
    job_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO guard_reindex_jobs (id, source_uri, target_uri, candidate_uri, fingerprint,"
        " fingerprint_hash, dims, distance, total_records, batch_size, max_attempts)"
        " VALUES (%s, 's', 't', 'c', '{}', 'h', 4, 'cosine', %s, 10, 3)",
        (job_id, batches * 10),
    )
    for seq in range(batches):
        conn.execute(
            "INSERT INTO guard_reindex_batches (job_id, seq, planned_records) VALUES (%s, %s, 10)",
            (job_id, seq),
        )
    return job_id


def test_a_lease_taken_over_cannot_be_settled_by_its_first_holder(state_dsn: str) -> None:
    """Worker A pauses past its lease, B takes the batch and gives it back, A leases it
    again: A's first, stale lease can neither finish nor fail the batch, and only the
    current lease's count is recorded."""
    with connect(state_dsn) as conn:
        job = load_job(conn, _bare_job(conn, 1).hex)
        a = Ledger(conn, job, "worker-a", lease_seconds=1)
        b = Ledger(conn, job, "worker-b", lease_seconds=30)
        stale = a.lease()
        assert stale is not None
        time.sleep(1.2)  # A is paused past its lease
        taken = b.lease()
        assert taken is not None and taken.seq == stale.seq
        assert not a.done(stale, 3, 0)  # B holds it now
        b.release_all()  # B stops (SIGTERM) and gives the batch back
        current = a.lease()  # A's reader, running again, takes the batch anew
        assert current is not None and current.seq == stale.seq
        assert not a.done(stale, 3, 0)
        a.fail(stale, "late failure of the stale lease")
        assert a.renew([stale.token]) == 0
        row = conn.execute(
            "SELECT status, attempts, last_error FROM guard_reindex_batches WHERE job_id = %s",
            (job.id,),
        ).fetchone()
        assert row is not None and (row[0], row[1]) == ("leased", 1)
        assert "stale" not in str(row[2])
        assert a.done(current, 10, 0)
        done = conn.execute(
            "SELECT status, written FROM guard_reindex_batches WHERE job_id = %s", (job.id,)
        ).fetchone()
    assert done == ("done", 10)


def _guard(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("GUARD_FAULT", None)
    if fault:
        env["GUARD_FAULT"] = fault
    return subprocess.run(
        [GUARD, "reindex", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _served(uri: str) -> tuple[int, int]:
    """(records, dims) of what readers of ``uri`` find now."""
    store = open_store(uri)
    try:
        info = store.describe()
    finally:
        store.close()
    return info.count, info.dims


def _job_row(job_id: str) -> tuple[str, Any]:
    with connect() as conn:
        job = load_job(conn, job_id)
    return job.state, job.intent


@pytest.fixture
def cut_job(state_dsn: str, source: str, candidate: str, store_kind: str) -> tuple[str, str]:
    """(job id, the URI readers query) of a finished job; on Qdrant the application
    queries an alias that points at the source."""
    job_id = plan_job(store=source, candidate=candidate, batch_size=BATCH).job_id
    assert run_worker(job_id).stopped == "done"
    if store_kind == "pgvector":
        return job_id, source
    alias = "live_" + source.split("collection=")[1]
    from guard.adapters.qdrant_reindex import QdrantReindex

    store = QdrantReindex(parse(source))
    try:
        store.point_alias(alias, source.split("collection=")[1])
    finally:
        store.close()
    return job_id, source.replace("collection=", "collection=live_")


@pytest.mark.parametrize("store_kind", [k for k in STORE_KINDS if k != "qdrant-url"])
def test_crashes_in_cutover_rollback_and_cleanup_never_lose_the_served_data(
    cut_job: tuple[str, str], source: str, store_kind: str
) -> None:
    """Kill `guard reindex cutover|rollback|cleanup` after recording its intent and after
    switching: readers always find a complete collection or table under the served name,
    a re-run finishes what the store shows was done, and cleanup never drops what is
    served (it refuses while a switch is unsettled)."""
    job_id, served = cut_job
    old, new = (RECORDS, OLD_DIMS), (RECORDS - len(NO_TEXT), 384)
    cut = ["cutover", job_id, "--force"]
    if store_kind != "pgvector":
        cut += ["--alias", served.split("collection=")[1]]

    assert _guard(*cut, fault="cutover.after_intent").returncode == KILLED_EXIT
    assert (_served(served), _job_row(job_id)[0]) == (old, "active")
    assert _guard(*cut, fault="cutover.after_switch").returncode == KILLED_EXIT
    assert (_served(served), _job_row(job_id)[0]) == (new, "active")
    refused = _guard("cleanup", job_id)  # the state still says active: the target is live
    assert refused.returncode == 2, refused.stderr
    assert "cutover of this job was interrupted" in refused.stderr
    assert _served(served) == new
    if store_kind != "pgvector":
        assert _served(source) == old  # the source collection is kept too
    finished = _guard(*cut)
    assert finished.returncode == 0, finished.stderr
    assert (_served(served), _job_row(job_id)) == (new, ("cut_over", None))

    assert _guard("rollback", job_id, fault="rollback.after_intent").returncode == KILLED_EXIT
    assert _served(served) == new
    assert _guard("rollback", job_id, fault="rollback.after_switch").returncode == KILLED_EXIT
    assert (_served(served), _job_row(job_id)[0]) == (old, "cut_over")
    assert _guard("cleanup", job_id).returncode == 2
    assert _served(served) == old
    rolled = _guard("rollback", job_id)
    assert rolled.returncode == 0, rolled.stderr
    assert (_served(served), _job_row(job_id)) == (old, ("rolled_back", None))

    again = _guard(*cut)
    assert again.returncode == 0, again.stderr
    assert _served(served) == new
    assert _guard("cleanup", job_id, fault="cleanup.after_intent").returncode == KILLED_EXIT
    assert _served(served) == new
    assert _guard("cleanup", job_id, fault="cleanup.after_drop").returncode == KILLED_EXIT
    assert _served(served) == new
    cleaned = _guard("cleanup", job_id)
    assert cleaned.returncode == 0, cleaned.stderr
    assert (_served(served), _job_row(job_id)) == (new, ("cleaned", None))


@pytest.mark.parametrize("store_kind", [k for k in STORE_KINDS if k != "qdrant-url"])
def test_a_second_switch_of_a_job_fails_while_one_runs(
    cut_job: tuple[str, str], store_kind: str, tmp_path: Path
) -> None:
    """Two commands switching one job: while a cutover sits between its intent and its
    switch, a second cutover, a rollback and a cleanup each exit 2 with one clear line;
    the first then finishes and records the source as the old data."""
    job_id, served = cut_job
    cut = ["cutover", job_id, "--force"]
    if store_kind != "pgvector":
        cut += ["--alias", served.split("collection=")[1]]
    release = tmp_path / "release"
    env = {**os.environ, "GUARD_FAULT": f"cutover.after_intent:wait={release}"}
    first = subprocess.Popen(
        [GUARD, "reindex", *cut], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        while _job_row(job_id)[1] is None:
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        for second in (cut, ["rollback", job_id], ["cleanup", job_id]):
            lost = _guard(*second)
            assert lost.returncode == 2, lost.stderr
            assert lost.stderr.count("\n") == 1
            assert "another cutover, rollback or cleanup of this job is running" in lost.stderr
        release.touch()
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    with connect() as conn:
        job = load_job(conn, job_id)
    assert (job.state, job.intent) == ("cut_over", None)
    old_data, _ = locations(job)
    assert _served(old_data) == (RECORDS, OLD_DIMS)
    assert _served(served) == (RECORDS - len(NO_TEXT), 384)


def test_qdrant_switch_errors_reach_users_as_one_line(state_dsn: str) -> None:
    """An unreachable Qdrant during cutover, rollback or cleanup is a StoreError (one
    line, exit 2), not qdrant-client's or httpx's traceback."""
    dead = "qdrant+http://127.0.0.1:9/docs"
    store = open_reindex(dead)
    switch = {"kind": "qdrant_alias", "alias": "live", "old": "docs", "new": "docs__0badc0de"}
    for call in (
        lambda: store.serves_target(switch),
        lambda: store.switch(switch, to_target=True),
        lambda: store.plan_cleanup(None, dead + "__0badc0de", cut_over=False),
        lambda: store.drop("docs", live=None),
    ):
        with pytest.raises(StoreError, match="Qdrant unreachable"):
            call()
    store.close()


@pytest.mark.parametrize("store_kind", ["pgvector"])
def test_sigterm_stops_the_services_reindex_worker_and_gives_its_leases_back(
    state_dsn: str, source: str, candidate: str, tmp_path: Path
) -> None:
    """`guard monitor` running a paced job (a batch every 2 s) on its re-index timer:
    SIGTERM after the first batch stops it before the job is done, exit 0, and no batch
    is left leased (before, it finished the whole job first)."""
    job_id = plan_job(store=source, candidate=candidate, batch_size=BATCH, max_rate=5).job_id
    config = tmp_path / "guard.toml"
    config.write_text("[monitor]\nport = 0\nreindex_every_seconds = 1\n", encoding="utf-8")
    service = subprocess.Popen(
        [GUARD, "monitor", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while jobs_tests._batches_done(job_id) == 0:
            assert service.poll() is None and time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
    finally:
        service.send_signal(signal.SIGTERM)
        _, logs = service.communicate(timeout=120)
    assert service.returncode == 0, logs
    with connect() as conn:
        batches = dict(
            conn.execute(
                "SELECT status, count(*) FROM guard_reindex_batches WHERE job_id = %s"
                " GROUP BY status",
                (uuid.UUID(job_id),),
            ).fetchall()
        )
    assert "leased" not in batches
    assert batches.get("pending", 0) > 0


# Ids whose order differs between a linguistic collation and code points (case, '_').
COLLATED_IDS = [f"{stem}{i}" for stem in ("a", "B", "b", "_x", "Z", "A-", "ab") for i in range(3)]


@pytest.fixture(scope="module")
def en_us_dsn() -> str:
    """A PostgreSQL of its own whose collation ``en_us`` (glibc's en_US.UTF-8, compiled
    with localedef: the embedded build has no ICU and the machine may have no locales)
    orders COLLATED_IDS otherwise than code points."""
    # Readable by the server's own user too (pgserver drops root to run it).
    locales = Path(tempfile.mkdtemp(prefix="vmg-loc-", dir="/tmp"))
    locales.chmod(0o755)
    atexit.register(shutil.rmtree, locales, ignore_errors=True)
    subprocess.run(
        ["localedef", "-i", "en_US", "-f", "UTF-8", str(locales / "en_US.UTF-8")],
        check=True, capture_output=True,
    )  # fmt: skip
    datadir = Path(tempfile.mkdtemp(prefix="vmg-en-", dir="/tmp"))  # short socket path
    atexit.register(shutil.rmtree, datadir, ignore_errors=True)
    before = os.environ.get("LOCPATH")
    os.environ["LOCPATH"] = str(locales)  # the server reads it as it starts
    try:
        dsn = embedded_dsn(datadir)
    finally:
        if before is None:
            del os.environ["LOCPATH"]
        else:
            os.environ["LOCPATH"] = before
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE COLLATION en_us (provider = libc, locale = 'en_US.UTF-8')")
        row = conn.execute(
            "SELECT array_agg(i ORDER BY i COLLATE en_us) FROM unnest(%s::text[]) i",
            (COLLATED_IDS,),
        ).fetchone()
    assert row is not None and row[0] != sorted(COLLATED_IDS)
    return dsn


def test_text_ids_under_a_linguistic_collation_are_copied_exactly_once(
    state_dsn: str, en_us_dsn: str, candidate: str, texts: list[str]
) -> None:
    """A text id column collated en_US: batches cut, scanned and checked in one order
    (code points), so plan, run, verify and catch-up copy every id exactly once."""
    table = f"t_{uuid.uuid4().hex[:12]}"
    vectors = unit_vectors(len(COLLATED_IDS), 16, seed=4)
    with psycopg.connect(en_us_dsn, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id text COLLATE en_us PRIMARY KEY, text text,"
                " embedding vector(16))"
            ).format(sql.Identifier(table))
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(sql.Identifier(table)),
                [(i, texts[n], vectors[n]) for n, i in enumerate(COLLATED_IDS)],
            )
    uri = f"{en_us_dsn}&table={table}"
    job_id = plan_job(store=uri, candidate=candidate, batch_size=4).job_id
    assert run_worker(job_id).stopped == "done"
    verified = verify_job(job_id, sample=1000).as_dict()
    assert (verified["reasons"], verified["target_records"]) == ([], len(COLLATED_IDS))
    caught = catch_up(job_id).as_dict()
    assert (caught["inserted"], caught["updated"], caught["deleted"]) == (0, 0, 0)
    with psycopg.connect(en_us_dsn, autocommit=True) as conn:
        target = sql.Identifier(f"{table}__{job_id.replace('-', '')[:8]}")
        copied = [row[0] for row in conn.execute(sql.SQL("SELECT id FROM {}").format(target))]
    assert sorted(copied) == sorted(COLLATED_IDS)  # each id once


def test_qdrant_target_creation_errors_reach_users_as_one_line() -> None:
    """An unreachable Qdrant while `plan` creates the target collection is a StoreError
    (one line, exit 2), not qdrant-client's or httpx's traceback."""
    dead = "qdrant+http://127.0.0.1:9/docs"
    info = StoreInfo(dead, 60, 16, "cosine", "plain", "text", None)
    with pytest.raises(StoreError, match="Qdrant unreachable"):
        open_reindex(dead).create_target(dead + "__0badc0de", dims=384, info=info)


def backends_after_they_settle(admin: psycopg.Connection[Any], database: str) -> int:
    """Connections to ``database``, once closed ones have left pg_stat_activity: a backend
    whose client hung up takes a moment to exit, a leaked connection stays for good."""
    for _ in range(50):
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()
        if row is None or row[0] == 0:
            return 0
        time.sleep(0.1)
    return int(row[0])


def test_a_failing_migration_closes_its_connection_and_says_so(pg_dsn: str) -> None:
    """A state database whose schema conflicts with a migration: one ReindexError, and
    the connection that tried is closed, not leaked."""
    name = f"state_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        dsn = make_conninfo(pg_dsn, dbname=name)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE guard_reindex_jobs (id integer)")
            with pytest.raises(ReindexError, match="cannot migrate the state database") as err:
                connect(dsn)
            assert err.value is not None  # the traceback (and any leaked connection) lives
            assert backends_after_they_settle(admin, name) == 0
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_an_interrupted_plan_leaves_no_job(state_dsn: str, source: str, candidate: str) -> None:
    """Ctrl-C (or any error, not only a GuardError) while the target is being created:
    the job and its batches are removed again."""
    env = {**os.environ, "GUARD_FAULT": "plan.create_target:interrupt"}
    planned = subprocess.run(
        [GUARD, "reindex", "plan", "--store", source, "--candidate", candidate],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert planned.returncode != 0
    with connect() as conn:
        jobs = conn.execute("SELECT count(*) FROM guard_reindex_jobs").fetchone()
    assert jobs == (0,)
