"""A re-index while the application reads and writes (issue: live migrations), on the
session's real PostgreSQL with pgvector (and, for the load test, Qdrant: local mode, and
the server at QDRANT_URL when set), real llama.cpp engines and `guard serve --follow` in
a process of its own: the short version of bench/live_migration.py.

The baseline is the F16 model with CLS pooling, the candidate the same model with its
own mean pooling: every stored vector says which engine made it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from guard import api
from guard.engines import open_engine
from guard.errors import ReindexError

ROOT = Path(__file__).resolve().parents[1]
RECORDS = 90


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "live_migration", ROOT / "bench" / "live_migration.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


live = _harness()


@pytest.fixture
def engines(gguf_f16: Path) -> tuple[str, str]:
    return f"llamacpp:{gguf_f16}?pooling=cls", f"llamacpp:{gguf_f16}"


@pytest.fixture
def table(pg_dsn: str) -> Any:
    name = f"live_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for (found,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{name}%",)
        ).fetchall():
            conn.execute(f'DROP TABLE "{found}" CASCADE')


@pytest.fixture(
    params=[
        "pgvector",
        "qdrant-local",
        pytest.param(
            "qdrant-url",
            marks=pytest.mark.skipif(not os.environ.get("QDRANT_URL"), reason="QDRANT_URL unset"),
        ),
    ]
)
def app_store(request: pytest.FixtureRequest, pg_dsn: str, table: str) -> Iterator[Any]:
    """The store the application reads and writes: the pgvector table ``table``, or a
    Qdrant collection queried through the alias ``table`` (dropped afterwards)."""
    if request.param == "pgvector":
        yield live.PgTable(pg_dsn, table)
        return
    if request.param == "qdrant-local":
        place = live.QdrantAliased(str(request.getfixturevalue("qdrant_dir")), table)
    else:
        place = live.QdrantAliased(os.environ["QDRANT_URL"], table)
    yield place
    place.drop()


def _edit(dsn: str, table: str, record_id: int, text: str, engine_uri: str) -> None:
    """An application's edit: the new text and the served engine's vector of it."""
    with open_engine(engine_uri) as engine:
        vector = engine.embed([text])[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f'UPDATE "{table}" SET text = %s, embedding = %s::vector WHERE id = %s',
            (text, str(vector.tolist()), record_id),
        )


def test_no_write_is_lost_through_cutover_rollback_and_cutover_under_load(
    state_dsn: str, app_store: Any, engines: tuple[str, str], corpus: list[str]
) -> None:
    """Readers and writers run through plan -> a worker stopped midway (SIGKILLed; a
    thread told to stop in Qdrant's local mode) -> run -> catch-up -> cutover ->
    rollback -> cutover: no reader or writer sees an error, every acknowledged insert,
    edit and delete made clear of a switch is in the live store at the end, the switches
    carried writes both ways (rollback re-embedding with the baseline), the application's
    vectors came from both engines as `serve --follow` moved, and every row written clear
    of a switch is in the live engine's space. On pgvector a write racing a switch is
    neither lost nor left in the wrong space either; Qdrant cannot hold writers, so a
    write landing between a switch's last comparison and the alias move stays behind
    (README): counted apart (``lost_racing``), and printed."""
    baseline, candidate = engines
    base = live.fill_store(app_store, [text[:200] for text in corpus[:RECORDS]], baseline)
    outcome = live.migrate(
        app_store, base, baseline=baseline, candidate=candidate, batch_size=30,
        readers=1, writers=2, settle_seconds=1.5, state_env={"GUARD_STATE_DSN": state_dsn},
    )  # fmt: skip
    report = "\n".join(outcome.lines())
    print(report)
    tally = outcome.tally
    assert tally.acknowledged > 20 and tally.reads > 10, report
    assert (tally.refused, tally.read_errors, outcome.lost) == (0, 0, []), report
    assert len(tally.fingerprints) == 2, report  # the writers embedded with both engines
    assert outcome.wrong_space_clean == 0, report
    if app_store.kind == "pgvector":  # those that raced a switch were taken or repaired
        assert (outcome.lost_racing, outcome.wrong_space) == ([], 0), report
    rolled_back = outcome.carried["rollback"]
    assert rolled_back is not None and rolled_back["inserted"] + rolled_back["updated"] > 0, report


def test_rollback_without_a_baseline_refuses_unless_writes_are_discarded(
    state_dsn: str, pg_dsn: str, table: str, engines: tuple[str, str], corpus: list[str]
) -> None:
    """A write after cutover and no baseline: rollback refuses in one line naming how many
    records changed; --discard-writes rolls back without it; a baseline given to rollback
    is checked against the stored vectors (the candidate is refused) and then carries
    the write back."""
    baseline, candidate = engines
    base = live.fill(pg_dsn, table, [text[:200] for text in corpus[:40]], baseline)
    uri = live.store_uri(pg_dsn, table)
    job = api.plan(uri, candidate, batch_size=20).job_id
    api.run(job)
    api.cutover(job)
    _edit(pg_dsn, table, 3, "an edit after cutover", candidate)  # as the application would
    with pytest.raises(ReindexError, match=r"^1 records changed since cutover \(0 added, 1 edited"):
        api.rollback(job)
    with pytest.raises(Exception, match="does not reproduce the stored vectors"):
        api.rollback(job, baseline=candidate)
    rolled = api.rollback(job, baseline=baseline)
    assert rolled.carried is not None and rolled.carried.updated == 1
    lost, wrong, _ = live.judge(pg_dsn, table, {**base, 3: "an edit after cutover"}, {}, baseline)
    assert (lost, wrong) == ([], 0)

    api.cutover(job)
    _edit(pg_dsn, table, 5, "lost on purpose", candidate)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{table}" WHERE id = 4')
    api.rollback(job, discard_writes=True)
    expected = {**base, 3: "an edit after cutover"}
    assert live.judge(pg_dsn, table, expected, {}, baseline)[:2] == ([], 0)


def test_cutover_refuses_above_max_pending_and_takes_the_writes_below_it(
    state_dsn: str, pg_dsn: str, table: str, engines: tuple[str, str], corpus: list[str]
) -> None:
    """Writes after the job ran are pending: more than --max-pending is one line and no
    switch; at most that many are re-embedded into the target by the cutover itself."""
    baseline, candidate = engines
    base = live.fill(pg_dsn, table, [text[:200] for text in corpus[:40]], baseline)
    job = api.plan(live.store_uri(pg_dsn, table), candidate, batch_size=20).job_id
    api.run(job)
    _edit(pg_dsn, table, 3, "edited meanwhile", baseline)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{table}" WHERE id IN (1, 2)')
    with pytest.raises(ReindexError, match=r"3 records changed .* more than --max-pending 2"):
        api.cutover(job, max_pending=2)
    assert api.status(job).state == "active"
    switched = api.cutover(job, max_pending=3)
    assert switched.carried is not None
    assert (switched.carried.updated, switched.carried.deleted) == (1, 2)
    assert switched.held == 3  # few enough to take while writers wait
    expected: dict[int, str | None] = {**base, 1: None, 2: None, 3: "edited meanwhile"}
    assert live.judge(pg_dsn, table, expected, {}, candidate)[:2] == ([], 0)


def test_many_pending_writes_are_carried_before_writers_are_held(
    state_dsn: str, pg_dsn: str, table: str, engines: tuple[str, str], corpus: list[str]
) -> None:
    """Writers wait only for what changed during the last round of carrying: a cutover
    and a rollback facing more than a lock's worth of writes carry them first, and hold
    writers for none of them when nothing more arrives."""
    baseline, candidate = engines
    base = live.fill(pg_dsn, table, [text[:200] for text in corpus[:60]], baseline)
    job = api.plan(live.store_uri(pg_dsn, table), candidate, batch_size=20, baseline=baseline)
    api.run(job.job_id)

    texts: dict[int, str | None] = dict(base)

    def edit(ids: range, mark: str) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                f'UPDATE "{table}" SET text = text || %s WHERE id = ANY(%s)',
                (mark, list(ids)),
            )
        texts.update({i: f"{texts[i]}{mark}" for i in ids})

    edit(range(45), " (before cutover)")
    switched = api.cutover(job.job_id)
    assert switched.carried is not None and switched.carried.updated == 45
    assert switched.held == 0
    assert live.judge(pg_dsn, table, texts, {}, candidate)[:2] == ([], 0)

    edit(range(50), " (after cutover)")  # the kept copy's own texts are stale before it
    rolled = api.rollback(job.job_id)
    assert rolled.carried is not None and rolled.carried.updated == 50
    assert rolled.held == 0
    assert live.judge(pg_dsn, table, texts, {}, baseline)[:2] == ([], 0)


def test_a_switch_holds_off_vacuum_but_not_writers_while_it_carries_ahead(
    state_dsn: str,
    pg_dsn: str,
    table: str,
    engines: tuple[str, str],
    corpus: list[str],
    tmp_path: Path,
) -> None:
    """While a cutover carries writes ahead, both tables are locked against VACUUM and
    DDL only: an autovacuum starting there would hold the renames up later, while
    writers wait, until PostgreSQL cancels it (deadlock_timeout, 1 s). Readers and
    writers go on, and a write made meanwhile reaches the target."""
    baseline, candidate = engines
    base = live.fill(pg_dsn, table, [text[:200] for text in corpus[:40]], baseline)
    job = api.plan(live.store_uri(pg_dsn, table), candidate, batch_size=20).job_id
    api.run(job)
    edited = "edited while the cutover carries ahead"
    with open_engine(baseline) as engine:
        vector = engine.embed([edited])[0]
    release = tmp_path / "release"
    cutover = subprocess.Popen(
        [sys.executable, "-c", "from guard.cli import main; main()", "reindex", "cutover", job],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GUARD_FAULT": f"switch.carrying_ahead:wait={release}"},
    )  # fmt: skip
    held_off = "SELECT relname FROM pg_locks JOIN pg_class ON pg_class.oid = relation WHERE" \
        " mode = 'ShareUpdateExclusiveLock' AND granted AND pid <> pg_backend_pid()"  # fmt: skip
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 120
            while not conn.execute(held_off).fetchall():
                assert cutover.poll() is None, cutover.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            locked = {name for (name,) in conn.execute(held_off).fetchall()}
            assert locked == {table, f"{table}__{job[:8]}"}
            conn.execute("SET lock_timeout = '2s'")  # a held writer fails instead of hanging
            conn.execute(
                f'UPDATE "{table}" SET text = %s, embedding = %s::vector WHERE id = 5',
                (edited, str(vector.tolist())),
            )
            assert conn.execute(f'SELECT count(*) FROM "{table}"').fetchone() == (len(base),)
            conn.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute(f'VACUUM "{table}"')
        release.touch()
        _, err = cutover.communicate(timeout=120)
    finally:
        if cutover.poll() is None:
            cutover.kill()
            cutover.wait()
    assert cutover.returncode == 0, err
    expected: dict[int, str | None] = {**base, 5: edited}
    assert live.judge(pg_dsn, table, expected, {}, candidate)[:2] == ([], 0)
