"""The state database's migrations: applied in order, recorded, idempotent, race-free."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from guard.state import apply_migrations, connect, migrations


def test_shipped_files_are_numbered_in_order() -> None:
    versions = [m.version for m in migrations()]
    assert versions == sorted(versions)
    assert versions[0] == "0001"


def test_first_run_applies_every_file_and_records_it(state_dsn: str) -> None:
    with psycopg.connect(state_dsn) as conn:
        applied = apply_migrations(conn)
        recorded = conn.execute(
            "SELECT version, name FROM guard_schema_migrations ORDER BY version"
        ).fetchall()
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'guard_%'"
            ).fetchall()
        }
    expected = [(m.version, m.name) for m in migrations()]
    assert [m.version for m in migrations()] == applied
    assert expected == recorded
    assert {
        "guard_schema_migrations",
        "guard_reindex_jobs",
        "guard_reindex_batches",
        "guard_reindex_skipped",
    } <= tables


def test_second_run_applies_nothing(state_dsn: str) -> None:
    with psycopg.connect(state_dsn) as conn:
        apply_migrations(conn)
        assert apply_migrations(conn) == []
        assert (
            len(migrations())
            == conn.execute("SELECT count(*) FROM guard_schema_migrations").fetchone()[0]
        )  # type: ignore[index]


def test_concurrent_start_ups_apply_each_file_once(state_dsn: str) -> None:
    """Workers starting together wait on the advisory lock instead of racing."""
    results: list[list[str]] = []

    def start() -> None:
        with psycopg.connect(state_dsn) as conn:
            results.append(apply_migrations(conn))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(v for applied in results for v in applied) == [m.version for m in migrations()]


def test_connect_migrates_the_state_database(state_dsn: str) -> None:
    with connect(state_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM guard_reindex_jobs").fetchone()
    assert row == (0,)


def test_a_database_of_the_last_release_gains_the_job_rate_clock(
    state_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0006 on a state database left at 0005 with a job: the job stays, and its
    ``--max-rate`` clock (``rate_next_at``) starts empty, so no worker waits on it."""
    import guard.state

    before = [m for m in migrations() if m.version < "0006"]
    with psycopg.connect(state_dsn) as conn:
        with monkeypatch.context() as patched:
            patched.setattr(guard.state, "migrations", lambda: before)
            apply_migrations(conn)
        job_id = uuid.uuid4()
        conn.execute(
            "INSERT INTO guard_reindex_jobs (id, source_uri, target_uri, candidate_uri,"
            " fingerprint, fingerprint_hash, dims, distance, total_records, batch_size,"
            " max_attempts, max_rate) VALUES (%s, 's', 't', 'c', '{}', 'h', 4, 'cosine', 1, 1,"
            " 3, 5)",
            (job_id,),
        )
        assert apply_migrations(conn) == ["0006"]
        row = conn.execute(
            "SELECT max_rate, rate_next_at FROM guard_reindex_jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row == (5.0, None)
