"""`guard reindex run --ray`: the worker loop as Ray actors on a real local Ray cluster
(one per test session, 2 CPUs), on the same PostgreSQL ledger as plain workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fixtures_stores import unit_vectors

from guard.records import RecordBatch
from guard.reindex.plan import plan_job
from guard.state import connect
from guard.stores import open_store

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

RECORDS = 300
BATCH = 20
NO_TEXT = (5,)  # skipped with a reason, never written
RATE = 20  # records per second for the job: a batch takes a second or more, time to kill one
GUARD = str(Path(sys.executable).with_name("guard"))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster for the session, started by this process and stopped after;
    `--ray auto` in a `guard` subprocess finds it. Its processes get an environment
    without the guard's own settings, as a cluster started from an operator's shell."""
    passive = os.environ.pop("OMP_WAIT_POLICY", None)
    try:
        context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if passive is not None:
            os.environ["OMP_WAIT_POLICY"] = passive
    yield str(context.address_info["address"])
    ray.shutdown()


@pytest.fixture
def candidate(static_model_dir: Path) -> str:
    return f"model2vec:{static_model_dir}"


@pytest.fixture
def source(new_store_uri: Callable[..., str], corpus: list[str]) -> str:
    uri = new_store_uri()
    store = open_store(uri)
    store.create(dims=16, distance="cosine")
    ids = tuple(range(RECORDS))
    texts = tuple(None if i in NO_TEXT else f"{i}: {corpus[i][:80]}" for i in ids)
    store.upsert(RecordBatch(ids, texts, unit_vectors(RECORDS, 16, seed=3)))
    store.close()
    return uri


def _guard(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GUARD, "reindex", *args], capture_output=True, text=True, timeout=180, **options
    )


def _actor_holding_a_lease(job_id: str) -> psutil.Process | None:
    """An actor process of this session's cluster that holds one of the job's leases
    (a worker's id is HOST:PID:TAG)."""
    actors = {
        process.pid: process
        for process in psutil.process_iter(["cmdline"])
        if (process.info["cmdline"] or [""])[0].startswith("ray::ReindexActor")
    }
    with connect() as conn:
        owners = conn.execute(
            "SELECT lease_owner FROM guard_reindex_batches WHERE job_id = %s AND status = 'leased'",
            (uuid.UUID(job_id),),
        ).fetchall()
    pids = {int(owner.split(":")[1]) for (owner,) in owners}
    return next((actors[pid] for pid in pids if pid in actors), None)


def _target_ids(job_id: str) -> list[Any]:
    from guard.reindex.jobs import load_job

    with connect() as conn:
        target = open_store(load_job(conn, job_id).target_uri)
    try:
        return [i for batch in target.scan(batch_size=100) for i in batch.ids]
    finally:
        target.close()


@pytest.mark.parametrize("store_kind", ["pgvector"], indirect=True)
def test_ray_actors_and_a_plain_worker_finish_a_job_with_an_actor_killed(
    state_dsn: str, ray_cluster: str, source: str, candidate: str
) -> None:
    """Two Ray actors and one plain worker share a job; one actor is SIGKILLed mid-run,
    Ray restarts it and its lease expires to another: every id is written once and
    verify passes."""
    job_id = plan_job(store=source, candidate=candidate, batch_size=BATCH, max_rate=RATE).job_id
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    driver = subprocess.Popen(
        [GUARD, "reindex", "run", job_id, "--ray", "auto", "--actors", "2",
         "--lease-seconds", "2", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    plain = subprocess.Popen(
        [GUARD, "reindex", "run", job_id, "--lease-seconds", "2", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while (victim := _actor_holding_a_lease(job_id)) is None:
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "no actor leased a batch"
        time.sleep(0.1)
    # The driver's engine settings reach the actors: without them, OpenMP threads of a
    # cluster started from a shell spin at every barrier (0.37x the rate on two cores).
    assert victim.environ().get("OMP_WAIT_POLICY") == "PASSIVE"
    time.sleep(0.3)  # inside the batch: it takes BATCH / RATE seconds
    victim.send_signal(signal.SIGKILL)
    out, err = driver.communicate(timeout=150)
    plain_out, plain_err = plain.communicate(timeout=60)
    assert (driver.returncode, plain.returncode) == (0, 0), err + plain_err
    on_ray, alone = json.loads(out), json.loads(plain_out)
    assert (on_ray["stopped"], on_ray["actors"], on_ray["restarted"]) == ("done", 2, 1)
    # A killed process's batches are in the ledger only: the runs that returned did fewer.
    assert 0 < on_ray["batches_done"] + alone["batches_done"] <= RECORDS // BATCH
    assert (on_ray["batches_done"] > 0, alone["batches_done"] > 0) == (True, True)
    written = _target_ids(job_id)
    assert (len(written), sorted(written)) == (
        RECORDS - len(NO_TEXT),
        [i for i in range(RECORDS) if i not in NO_TEXT],
    )
    with connect() as conn:
        row = conn.execute(
            "SELECT sum(written), sum(skipped), count(*) FILTER (WHERE attempts > 0),"
            " count(*) FILTER (WHERE status = 'done'), count(*)"
            " FROM guard_reindex_batches WHERE job_id = %s",
            (uuid.UUID(job_id),),
        ).fetchone()
    assert row is not None and (row[0], row[1]) == (RECORDS - len(NO_TEXT), len(NO_TEXT))
    assert row[2] >= 1  # the killed actor's lease went to another worker
    assert row[3] == row[4] == RECORDS // BATCH
    verified = _guard("verify", job_id, "--sample", "1000", "--accept-skipped")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize("store_kind", ["qdrant-local"], indirect=True)
def test_qdrant_local_admits_one_actor_and_runs_on_a_local_cluster(
    source: str, candidate: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qdrant+local: allows one process: two actors are one line and exit 2; one actor
    on a cluster started for the run (`--ray local`) does the job, with the embedded
    state database (every node of that cluster is this machine)."""
    monkeypatch.delenv("GUARD_STATE_DSN", raising=False)
    monkeypatch.setenv("GUARD_HOME", str(tmp_path))
    job_id = plan_job(store=source, candidate=candidate, batch_size=BATCH * 4).job_id
    refused = _guard("run", job_id, "--ray", "local", "--actors", "2")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "qdrant+local: store admits one process" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    one = _guard("run", job_id, "--ray", "local", "--actors", "1", "--format", "json")
    assert one.returncode == 0, one.stderr
    assert (json.loads(one.stdout)["stopped"], json.loads(one.stdout)["written"]) == (
        "done",
        RECORDS - len(NO_TEXT),
    )
    verified = _guard("verify", job_id, "--sample", "1000", "--accept-skipped")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--ray", "ray://10.255.0.1:10001", "--actors", "2"), "set GUARD_STATE_DSN"),
        (("--ray", "somewhere"), "--ray must be auto, local or ray://HOST:PORT"),
        (("--actors", "2"), "--actors, --cpus-per-actor and --gpus-per-actor need --ray"),
        (("--ray", "local", "--cpus-per-actor", "0"), "--cpus-per-actor must be above 0"),
    ],
)
def test_ray_refusals_are_one_line_and_exit_2(
    args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    """Refused before any cluster or state database is touched; a remote cluster without
    GUARD_STATE_DSN would leave its actors unable to reach the embedded ledger."""
    env = {k: v for k, v in os.environ.items() if k not in ("GUARD_STATE_DSN", "RAY_ADDRESS")}
    env["GUARD_HOME"] = str(tmp_path)
    result = _guard("run", "0123456789abcdef", *args, env=env)
    assert (result.returncode, says in result.stderr) == (2, True), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()  # no embedded database was started
