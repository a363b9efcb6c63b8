"""Shared fixtures: real stores (fixtures_stores.py) and real models (fixtures_models.py)."""

import os
import shutil
import tempfile


def _pin_xdist_worker() -> None:
    """Under ``pytest -n N`` each worker (and every process it starts) gets its own share
    of the CPUs: llama.cpp, torch and OpenBLAS then size their threads to that share
    instead of each taking every CPU, whose threads would spin against each other. It
    runs before anything imports numpy, which sizes OpenBLAS's threads once, on import."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    number = int(worker[2:])
    os.sched_setaffinity(0, cpus[number::count] or [cpus[number % len(cpus)]])


_pin_xdist_worker()

import pytest  # noqa: E402
from fixtures_models import *  # noqa: E402, F403
from fixtures_stores import *  # noqa: E402, F403

RUN_HOME = "VMG_TEST_RUN_HOME"  # the controller's GUARD_HOME, for its xdist workers


def pytest_configure(config: pytest.Config) -> None:
    """One GUARD_HOME of the run's own: the embedding cache, bridges and reports of one
    run never leak into the next or into the user's. Under ``pytest -n N`` the workers
    share the one their controller made (and removes), as a serial run has one.
    llama.cpp's converter stays where scripts/bootstrap.sh put it; models are found
    through GUARD_MODELS_CACHE as before."""
    from guard.paths import llama_cpp_src

    os.environ.setdefault("GUARD_LLAMACPP_SRC", str(llama_cpp_src()))
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(RUN_HOME):
        os.environ["GUARD_HOME"] = os.environ[RUN_HOME]
        return
    home = tempfile.mkdtemp(prefix="vmg-home-")
    os.environ["GUARD_HOME"] = os.environ[RUN_HOME] = home
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
