"""Shared fixtures: real stores (fixtures_stores.py) and real models (fixtures_models.py)."""

import os
import shutil
import tempfile

import pytest
from fixtures_models import *  # noqa: F403
from fixtures_stores import *  # noqa: F403


def pytest_configure(config: pytest.Config) -> None:
    """One GUARD_HOME of the run's own: the embedding cache, bridges and reports of one
    run never leak into the next or into the user's. llama.cpp's converter stays where
    scripts/bootstrap.sh put it; models are found through GUARD_MODELS_CACHE as before."""
    from guard.paths import llama_cpp_src

    os.environ.setdefault("GUARD_LLAMACPP_SRC", str(llama_cpp_src()))
    home = tempfile.mkdtemp(prefix="vmg-home-")
    os.environ["GUARD_HOME"] = home
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
