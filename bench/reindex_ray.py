"""Ray actors against plain workers on one pgvector job, and an actor killed mid-run.

    python bench/reindex_ray.py [--records 20000] [--text-chars 200] [--batch-size 500]

Each run re-indexes the same source (a fresh job, a fresh target) with the demo F16
GGUF as the candidate, the state database and the store in one embedded PostgreSQL, and
times the whole command, start-up included (plain workers with ``--no-cache``: Ray
actors embed afresh, and a warm cache would serve the later runs from the first):
- one plain worker: `guard reindex run JOB`;
- two plain workers: two such processes at once;
- `guard reindex run JOB --ray local --actors 2` (a Ray cluster started for the run and
  stopped after: its start-up, about 2.4 s, and its shutdown, about 1.3 s, count);
- `guard reindex run JOB --ray auto --actors 2` on a cluster started before with
  `ray start --head --num-cpus 2` (how a cluster is used: it outlives the job), and the
  same with one actor SIGKILLed once a third of the batches are done: Ray restarts it
  and its lease expires to the other; the target must then hold every record.
The cluster is stopped (`ray stop`) before the plain runs, so its idle processes take
nothing from them. Prints the rates and the ratios (goal: Ray / two plain workers
>= 0.95). Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
from reindex_rate import candidate_uri, make_source

from guard.pgserver import embedded_dsn
from guard.reindex.jobs import load_job
from guard.reindex.plan import plan_job
from guard.reindex.verify import verify_job
from guard.state import connect
from guard.stores import open_store

GUARD = [sys.executable, "-c", "from guard.cli import main; main()"]
LEASE_S = "5"


def run(job_id: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*GUARD, "reindex", "run", job_id, "--lease-seconds", LEASE_S, "--format", "json",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(processes: list[subprocess.Popen[str]]) -> list[dict[str, object]]:
    results = []
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            sys.exit(f"a run failed ({process.returncode}): {err.strip()[-500:]}")
        results.append(json.loads(out))
    return results


def batches(job_id: str, status: str) -> int:
    with connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM guard_reindex_batches WHERE job_id = %s AND status = %s",
            (uuid.UUID(job_id), status),
        ).fetchone()
    return int(row[0]) if row else 0


def kill_an_actor_holding_a_lease(job_id: str, total: int, driver: subprocess.Popen[str]) -> int:
    """SIGKILL a Ray actor process that holds one of the job's leases, once a third of
    the batches are done; its pid."""
    while driver.poll() is None:
        if batches(job_id, "done") >= total // 3:
            with connect() as conn:
                owners = conn.execute(
                    "SELECT lease_owner FROM guard_reindex_batches WHERE job_id = %s"
                    " AND status = 'leased'",
                    (uuid.UUID(job_id),),
                ).fetchall()
            pids = {int(owner.split(":")[1]) for (owner,) in owners}
            for process in psutil.process_iter(["cmdline"]):
                cmdline = process.info["cmdline"] or [""]
                if cmdline[0].startswith("ray::ReindexActor") and process.pid in pids:
                    process.send_signal(signal.SIGKILL)
                    return process.pid
        time.sleep(0.1)
    sys.exit("the Ray run ended before an actor could be killed")


@contextlib.contextmanager
def head_node() -> Iterator[None]:
    """A cluster started with `ray start --head`, as an operator starts one, and stopped
    after; `--ray auto` finds it (RAY_ADDRESS is left unset)."""
    ray = [str(Path(sys.executable).with_name("ray"))]
    subprocess.run(
        [*ray, "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield
    finally:
        subprocess.run([*ray, "stop", "--force"], check=True, capture_output=True)


def timed(source: str, candidate: str, batch_size: int, workers: str) -> tuple[float, str]:
    """Seconds one configuration takes on a fresh job, and the job id."""
    job_id = plan_job(store=source, candidate=candidate, batch_size=batch_size).job_id
    started = time.perf_counter()
    if workers == "one":
        finish([run(job_id, "--no-cache")])
    elif workers == "two":
        finish([run(job_id, "--no-cache"), run(job_id, "--no-cache")])
    else:
        driver = run(job_id, "--ray", workers.split("-")[1], "--actors", "2")
        if workers.endswith("-kill"):
            total = batches(job_id, "pending")
            pid = kill_an_actor_holding_a_lease(job_id, total, driver)
            print(f"  killed Ray actor pid {pid} mid-run", flush=True)
        (result,) = finish([driver])
        print(f"  ray: {json.dumps({k: result[k] for k in ('restarted', 'written')})}")
    return time.perf_counter() - started, job_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--text-chars", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    candidate = candidate_uri()
    with tempfile.TemporaryDirectory(prefix="vmg-bench-ray-") as folder:
        dsn = embedded_dsn(Path(folder) / "pg")
        os.environ["GUARD_STATE_DSN"] = dsn
        with connect(dsn) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        source = make_source("pgvector", Path(folder), dsn, args.records, args.text_chars)
        print(f"{args.records} records, batches of {args.batch_size}, {candidate}", flush=True)
        rates = {}
        for workers in ("one", "two", "ray-local", "ray-auto", "ray-auto-kill"):
            with head_node() if workers.startswith("ray-auto") else contextlib.nullcontext():
                seconds, job_id = timed(source, candidate, args.batch_size, workers)
            rates[workers] = args.records / seconds
            report = verify_job(job_id, sample=200)
            with connect() as conn:
                target = open_store(load_job(conn, job_id).target_uri)
            held = target.describe().count
            target.drop()
            target.close()
            print(
                f"{workers:>13}: {seconds:7.1f} s, {rates[workers]:6.1f} records/s, target "
                f"{held}/{args.records}, verify {'ok' if report.ok else report.reasons}",
                flush=True,
            )
        print(f"two plain / one plain:        {rates['two'] / rates['one']:.2f}")
        for workers, what in (
            ("ray-local", "--ray local (cluster started for the run)"),
            ("ray-auto", "--ray auto (cluster started before)"),
            ("ray-auto-kill", "--ray auto, an actor killed"),
        ):
            ratio = rates[workers] / rates["two"]
            print(f"{what} / two plain: {ratio:.2f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
