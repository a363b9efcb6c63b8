"""``guard reindex run JOB --ray ADDRESS --actors N``: the plain worker as Ray actors.

Ray places and restarts the actors; the PostgreSQL ledger stays the one record of what is
done. Each actor runs ``run_worker`` (lease -> read -> embed -> write -> settle) once,
so it loads the engine once, and leases, settling, skips, pause, windows and
``--max-rate`` (one limit for the whole job, taken from the ledger by every actor and
plain worker alike) hold unchanged. Ray actors and plain workers can share one job. An
actor killed mid-batch is restarted by Ray (up to ``max_restarts``) and asked to work
again; its leases expire to whoever leases next.

ADDRESS: ``local`` starts a cluster for this run and stops it after; ``auto`` joins
RAY_ADDRESS or the cluster running on this machine; ``ray://HOST:PORT`` a remote one
through Ray Client. The actors reach the state database by the driver's DSN, so a
cluster beyond this machine needs ``GUARD_STATE_DSN`` (the embedded database listens
here only).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from guard.errors import ConfigError, GuardError, ReindexError
from guard.logs import get_logger
from guard.progress import Progress
from guard.reindex.jobs import load_job
from guard.reindex.patience import DEFAULT_MAX_OUTAGE_S
from guard.reindex.status import job_status
from guard.reindex.worker import _signals_stop, run_worker
from guard.state import connect, state_dsn

log = get_logger(__name__)

POLL_S = 1.0  # how often the driver reads the ledger for its progress line


@dataclass(frozen=True)
class RayRunResult:
    """What the actors' runs did together, shaped like a plain worker's result. A run
    lost with its process (an actor killed) is not counted: its batches are in the
    ledger (``guard reindex status``)."""

    job_id: str
    address: str
    actors: int
    restarted: int  # actors whose run finished in a process Ray started after one died
    batches_done: int
    written: int
    skipped: int
    stopped: str  # done, paused, window, interrupted, failed, or a job state
    failed_batches: int
    workers: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReindexActor:
    """One worker in a Ray actor process. ``run`` and ``stop`` run on two threads of the
    actor (``max_concurrency=2``), so the driver can stop a run in progress."""

    def __init__(
        self, job_id: str, dsn: str, lease_seconds: float, max_outage: float = DEFAULT_MAX_OUTAGE_S
    ) -> None:
        self._job_id = job_id
        self._dsn = dsn
        self._lease_seconds = lease_seconds
        self._max_outage = max_outage
        self._stop = threading.Event()

    def run(self) -> dict[str, Any]:
        import ray

        result = run_worker(
            self._job_id,
            lease_seconds=self._lease_seconds,
            dsn=self._dsn,
            stop=self._stop,
            max_outage=self._max_outage,
        )
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        return result.as_dict() | {"restarted": restarted}

    def stop(self) -> None:
        self._stop.set()


def run_on_ray(
    job_ref: str,
    *,
    address: str,
    actors: int,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    lease_seconds: float = 60.0,
    max_restarts: int = 3,
    dsn: str | None = None,
    progress: Progress | None = None,
    max_outage: float = DEFAULT_MAX_OUTAGE_S,
) -> RayRunResult:
    """Run ``actors`` workers of the job as Ray actors until it is done, paused, outside
    its window or stopped (SIGINT/SIGTERM on the driver stop the actors cleanly)."""
    _check_sizes(actors, cpus_per_actor, gpus_per_actor, lease_seconds, max_restarts)
    remote = address.startswith("ray://") or (
        address == "auto" and os.environ.get("RAY_ADDRESS", "").startswith("ray://")
    )
    if address not in ("auto", "local") and not remote:
        raise ConfigError(f"--ray must be auto, local or ray://HOST:PORT, not {address!r}")
    explicit = dsn or os.environ.get("GUARD_STATE_DSN")
    if remote and not explicit:
        raise ConfigError(_NEEDS_DSN.format(where=f"the Ray cluster at {address}"))
    ray = _import_ray()
    dsn = explicit or state_dsn()
    with connect(dsn) as conn:
        job = load_job(conn, job_ref)
    if job.state != "active":
        raise ReindexError(f"the job is {job.state}; nothing to run", job_id=job.short)
    if actors > 1 and job.source_uri.startswith("qdrant+local:"):
        raise ConfigError(
            "a qdrant+local: store admits one process at a time: run --actors 1, or serve "
            f"the collection with a Qdrant server (qdrant+http://) [job {job.short}]"
        )
    with _cluster(ray, address, actors, cpus_per_actor, gpus_per_actor):
        if not explicit and not _all_nodes_here(ray):
            raise ConfigError(_NEEDS_DSN.format(where="a Ray cluster with nodes on other hosts"))
        return _drive(
            ray, str(job.id), address, dsn, actors, cpus_per_actor, gpus_per_actor,
            lease_seconds, max_restarts, progress, max_outage,
        )  # fmt: skip


_NEEDS_DSN = (
    "{where} cannot reach the embedded state database on this machine: set "
    "GUARD_STATE_DSN to a PostgreSQL every node can reach"
)


def _check_sizes(
    actors: int, cpus: float, gpus: float, lease_seconds: float, max_restarts: int
) -> None:
    if actors < 1:
        raise ConfigError(f"--actors must be at least 1, not {actors}")
    if cpus <= 0 or gpus < 0:
        raise ConfigError(
            f"--cpus-per-actor must be above 0 and --gpus-per-actor at least 0, not {cpus} "
            f"and {gpus}"
        )
    if lease_seconds < 1:
        raise ReindexError(f"lease must be at least 1 second, not {lease_seconds}")
    if max_restarts < 0:
        raise ConfigError(f"max_restarts must be at least 0, not {max_restarts}")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'vector-migration-guard[ray]'") from exc
    return ray


@contextlib.contextmanager
def _cluster(ray: Any, address: str, actors: int, cpus: float, gpus: float) -> Iterator[None]:
    """Connected to the cluster for the block; ``local`` starts one sized for the actors
    (Ray otherwise counts every CPU of the machine) and stops it after. Ray prints its
    raylet's notices (an actor died) on the driver's stdout: they go to stderr here, so
    stdout holds only the result (``--format json``)."""
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "warning"}
    if address == "local":
        options |= {"num_cpus": max(1, math.ceil(actors * cpus)), "include_dashboard": False}
        if gpus:
            options["num_gpus"] = max(1, math.ceil(actors * gpus))
    with contextlib.redirect_stdout(sys.stderr):
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            hint = " (start one with `ray start --head`, or use --ray local)"
            raise ConfigError(
                f"cannot connect to a Ray cluster at {address}: {exc}"
                + (hint if address == "auto" else "")
            ) from exc
        try:
            yield
        finally:
            ray.shutdown()


def _all_nodes_here(ray: Any) -> bool:
    """Whether every live node of the cluster runs on this machine."""
    here = {ray.util.get_node_ip_address(), "127.0.0.1"}
    return all(node["NodeManagerAddress"] in here for node in ray.nodes() if node.get("Alive"))


def _drive(
    ray: Any,
    job_id: str,
    address: str,
    dsn: str,
    actors: int,
    cpus: float,
    gpus: float,
    lease_seconds: float,
    max_restarts: int,
    progress: Progress | None,
    max_outage: float = DEFAULT_MAX_OUTAGE_S,
) -> RayRunResult:
    """Start the actors and wait for their runs. Ray restarts an actor that dies and runs
    its ``run`` again there (``max_task_retries``); only one that died more than
    ``max_restarts`` times fails the run."""
    from ray.exceptions import RayActorError, RayTaskError

    actor_class = ray.remote(ReindexActor).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_restarts=max_restarts,
        max_task_retries=max_restarts,
        max_concurrency=2,
        runtime_env={"env_vars": _actor_environment()},
    )
    handles = [actor_class.remote(job_id, dsn, lease_seconds, max_outage) for _ in range(actors)]
    running = [handle.run.remote() for handle in handles]
    results: list[dict[str, Any]] = []
    stopping = threading.Event()  # SIGINT or SIGTERM on the driver
    last_line = ""
    with _signals_stop(stopping):
        while running:
            if stopping.is_set():  # again each round: an actor restarted since forgot
                _cancel(handles)
            ready, running = ray.wait(running, num_returns=1, timeout=POLL_S)
            for ref in ready:
                try:
                    results.append(ray.get(ref))
                except RayTaskError as exc:
                    _cancel(handles)
                    if isinstance(exc.cause, GuardError):
                        raise exc.cause from None
                    raise ReindexError(f"a Ray actor failed: {exc}", job_id=job_id[:8]) from exc
                except RayActorError as exc:
                    _cancel(handles)
                    raise ReindexError(
                        f"a Ray actor died more than {max_restarts} times: {exc}",
                        job_id=job_id[:8],
                    ) from exc
            if progress is not None:
                line = _progress_line(job_id, dsn, len(running))
                if line != last_line:
                    progress(line)
                    last_line = line
    return _combine(job_id, address, actors, results)


def _actor_environment() -> dict[str, str]:
    """What the driver's process set for its engines, for the actors too: a cluster
    started with `ray start` gives its actors the environment of the shell that started
    it, where OpenMP threads spin at every barrier; two actors on two cores then ran at
    0.37x two plain workers (bench/reindex_ray.py)."""
    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _cancel(handles: list[Any]) -> None:
    """Ask every actor's run to stop: its in-flight leases go back to the ledger."""
    for handle in handles:
        with contextlib.suppress(Exception):
            handle.stop.remote()


def _progress_line(job_id: str, dsn: str, running: int) -> str:
    status = job_status(job_id, dsn=dsn)
    done = status.batches.get("done", 0)
    total = sum(status.batches.values())
    return (
        f"ray: {done}/{total} batches, {status.done}/{status.records} records, "
        f"{running} actors working"
    )


def _combine(job_id: str, address: str, actors: int, results: list[dict[str, Any]]) -> RayRunResult:
    reasons = [result["stopped"] for result in results]
    stopped = "failed" if "failed" in reasons else next((r for r in reasons if r != "done"), "done")
    return RayRunResult(
        job_id=job_id,
        address=address,
        actors=actors,
        restarted=sum(bool(result["restarted"]) for result in results),
        batches_done=sum(result["batches_done"] for result in results),
        written=sum(result["written"] for result in results),
        skipped=sum(result["skipped"] for result in results),
        stopped=stopped,
        failed_batches=max((result["failed_batches"] for result in results), default=0),
        workers=results,
    )
