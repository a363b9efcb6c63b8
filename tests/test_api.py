"""The Python API a pipeline calls instead of shelling out: the same verdicts and jobs as
the command line, the package's own errors, resources closed however a call ends."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_stores import unit_vectors

import guard
from guard.engines import open_engine
from guard.records import RecordBatch
from guard.stores import open_store

PUBLIC = [
    "ConfigError",
    "EngineError",
    "GuardError",
    "ReindexError",
    "StateUnreachable",
    "StoreError",
    "StoreUnreachable",
    "TextTooLongError",
    "__version__",
    "catch_up",
    "check",
    "cleanup",
    "compare",
    "cutover",
    "pause",
    "plan",
    "resume",
    "rollback",
    "run",
    "status",
    "verify",
]


def test_the_public_surface_is_all_and_only_what_all_lists() -> None:
    assert sorted(guard.__all__) == sorted(PUBLIC)
    assert [name for name in PUBLIC if not hasattr(guard, name)] == []


def test_the_api_functions_survive_the_packages_being_imported() -> None:
    """guard.check stays the function after the check's own package is imported (a
    subpackage named like the function would replace it on its first import)."""
    import guard.checking.run
    import guard.comparing.run

    assert (callable(guard.check), callable(guard.compare)) == (True, True)


def test_import_guard_loads_no_store_engine_or_numeric_library() -> None:
    """``import guard`` is cheap: a pipeline's import does not start drivers or models."""
    script = (
        "import json, sys, guard\n"
        "print(json.dumps(sorted(m for m in ('numpy', 'psycopg', 'qdrant_client', 'httpx',"
        " 'llama_cpp', 'torch') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (result.returncode, json.loads(result.stdout or "null")) == (0, []), result.stderr


def test_check_returns_the_report_the_cli_prints(f16_store: str, gguf_f16: Path) -> None:
    candidate = f"llamacpp:{gguf_f16}"
    report = guard.check(store=f16_store, candidate=candidate)
    again = guard.check(store=f16_store, candidate=candidate, sample=110, seed=3)
    with pytest.raises(guard.ConfigError, match=r"can never approve .* needs 109 records"):
        guard.check(store=f16_store, candidate=candidate, sample=100)

    cli = subprocess.run(
        [
            sys.executable,
            "-c",
            "from guard.cli import main; main()",
            "check",
            "--store",
            f16_store,
            "--candidate",
            candidate,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    printed = json.loads(cli.stdout)
    assert (report.verdict, report.exit_code) == ("approve", 0)
    assert (printed["verdict"], cli.returncode) == (report.verdict, report.exit_code)
    # Two runs of a float engine: the same figures, up to llama.cpp's last digits.
    assert _figures(printed["metrics"]) == pytest.approx(_figures(report.to_dict()["metrics"]))
    assert printed["bound"] == report.to_dict()["bound"]
    assert (again.to_dict()["sample"]["seed"], again.thresholds["max_sample"]) == (3, 110)
    assert (again.verdict, again.bound["method"], again.bound["n"]) == (
        "approve",
        "hypergeometric",
        109,
    )


def test_bad_input_raises_the_packages_errors_with_the_cli_exit_code(tmp_path: Path) -> None:
    with pytest.raises(guard.ConfigError, match="unknown store scheme") as unknown:
        guard.check(store="mongodb://db/x", candidate="llamacpp:/m.gguf")
    with pytest.raises(guard.ConfigError, match="min_cosine"):
        guard.check(
            store=f"pgserver:{tmp_path}?table=t",
            candidate="llamacpp:/m.gguf",
            thresholds={"min_cosine": 2.0},
        )
    with pytest.raises(guard.ConfigError, match="list of engine URIs"):
        guard.compare(store=f"pgserver:{tmp_path}?table=t", candidates="llamacpp:/m.gguf")
    assert unknown.value.exit_code == 2


def test_a_failed_check_closes_what_it_opened(
    new_store_uri: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate fails to load after the store was opened: the store is closed."""
    from guard import stores

    closed: list[str] = []
    real_open = stores.open_store

    def tracking_open(uri: str) -> stores.VectorStore:
        store = real_open(uri)
        real_close = store.close

        def close() -> None:
            closed.append(store.uri)
            real_close()

        store.close = close  # type: ignore[method-assign]
        return store

    monkeypatch.setattr(stores, "open_store", tracking_open)
    uri = new_store_uri()
    with pytest.raises(guard.GuardError):
        guard.check(store=uri, candidate="llamacpp:/nonexistent/model.gguf")
    assert len(closed) == 1


def test_a_reindex_runs_through_the_api_from_plan_to_cleanup(
    state_dsn: str,
    new_store_uri: Callable[..., str],
    store_kind: str,
    gguf_f16: Path,
    corpus: list[str],
) -> None:
    source = new_store_uri()
    texts = tuple(text[:200] for text in corpus[:30])
    with open_store(source) as store:
        store.create(dims=16, distance="cosine")
        store.upsert(RecordBatch(tuple(range(30)), texts, unit_vectors(30, 16, seed=4)))
    live, alias = source, None
    if store_kind != "pgvector":  # Qdrant switches readers through the alias they query
        live = source.replace("collection=", "collection=live_")
        alias = live.split("collection=")[1]

    job = guard.plan(store=source, candidate=f"llamacpp:{gguf_f16}", batch_size=10)
    batches: list[str] = []
    worked = guard.run(job.job_id, progress=batches.append)
    checked = guard.verify(job.job_id, sample=30)
    switched = guard.cutover(job.job_id, alias=alias)
    with open_store(live) as served:
        after_cutover = served.fetch([0, 29]).vectors
    guard.rollback(job.job_id)
    with open_store(live) as served:
        after_rollback = served.fetch([0, 29]).vectors

    assert (worked.stopped, worked.written, checked.ok) == ("done", 30, True)
    assert len(batches) == 3 and batches[-1].endswith("this worker: 3 batches, 30 records")
    assert (switched.state, guard.status(job.job_id).state) == ("cut_over", "rolled_back")
    with open_engine(f"llamacpp:{gguf_f16}") as engine:
        fresh = engine.embed([texts[0], texts[29]])
    cosines = np.sum(after_cutover * fresh, axis=1) / (
        np.linalg.norm(after_cutover, axis=1) * np.linalg.norm(fresh, axis=1)
    )
    assert after_cutover.shape == (2, 384)
    assert bool(np.all(cosines > 0.9999)), cosines
    assert np.array_equal(after_rollback, unit_vectors(30, 16, seed=4)[[0, 29]])
    assert guard.cleanup(job.job_id).state == "cleaned"


def _figures(tree: Any, path: str = "") -> dict[str, Any]:
    """A nested report section as {dotted path: leaf}, for comparing with a tolerance."""
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _figures(sub, f"{path}.{key}").items()
        }
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _figures(sub, f"{path}.{i}").items()}
    return {path: tree}
