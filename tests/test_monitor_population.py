"""The population drift statistics (guard.core.population) and the monitor's config, on
synthetic data: milliseconds each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from guard.config import load_config
from guard.core.population import (
    drifted_component_share,
    mean_vector_distance,
    null_auc_stderr,
    population_drift,
    roc_auc,
)
from guard.errors import ConfigError
from guard.monitor.alerts import webhook_label
from guard.records import Vectors
from guard.schedule import parse_schedule


def anisotropic(n: int, seed: int, dims: int = 64) -> Vectors:
    """Unit vectors around a common direction, as sentence embeddings are."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dims)) + 2.0 * np.eye(dims)[0]
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.float32)


def test_same_population_is_not_flagged() -> None:
    drift = population_drift(anisotropic(300, 1), anisotropic(100, 2), seed=0)
    assert drift is not None
    assert drift.drifted is False
    assert drift.mean_distance < 0.2


def test_rotated_vectors_are_flagged_by_every_measure() -> None:
    current = anisotropic(100, 2)
    rotation = np.linalg.qr(np.random.default_rng(3).normal(size=(64, 64)))[0]
    drift = population_drift(anisotropic(300, 1), (current @ rotation).astype(np.float32), seed=0)
    assert drift is not None
    assert drift.drifted is True
    assert drift.auc > 0.95
    assert drift.mean_distance > 0.5
    assert drift.drifted_share > 0.5


def test_too_few_records_or_other_dimensions_give_no_verdict() -> None:
    assert population_drift(anisotropic(300, 1), anisotropic(19, 2), seed=0) is None
    assert population_drift(anisotropic(300, 1), anisotropic(50, 2, dims=32), seed=0) is None


def test_auc_threshold_grows_for_small_windows() -> None:
    small = population_drift(anisotropic(40, 1), anisotropic(40, 2), seed=0)
    large = population_drift(anisotropic(400, 1), anisotropic(400, 2), seed=0)
    assert small is not None and large is not None
    assert small.auc_threshold > large.auc_threshold >= 0.55


def test_roc_auc_counts_ties_as_half() -> None:
    labels = np.array([0, 0, 1, 1], dtype=np.float64)
    assert roc_auc(np.array([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert roc_auc(np.array([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    assert null_auc_stderr(10, 10) == pytest.approx((21 / 1200) ** 0.5)


def test_mean_distance_and_component_share_of_identical_samples_are_zero() -> None:
    data = anisotropic(200, 4).astype(np.float64)
    assert mean_vector_distance(data, data) == pytest.approx(0.0, abs=1e-12)
    assert drifted_component_share(data, data, 0.1) == 0.0


@pytest.mark.parametrize(
    ("text", "seconds", "cron"),
    [("every 30s", 30, None), ("every 15m", 900, None), ("every 2 h", 7200, None),
     ("0 */6 * * *", None, "0 */6 * * *")],
)  # fmt: skip
def test_schedules(text: str, seconds: int | None, cron: str | None) -> None:
    schedule = parse_schedule(text)
    assert (schedule.interval_seconds, schedule.cron) == (seconds, cron)


def test_config_names_the_bad_schedule_and_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text('[[watch]]\nname = "a"\nstore = "s:x"\nengine = "e:y"\nschedule = "hourly"\n')
    with pytest.raises(ConfigError, match=r"watch\.0\.schedule"):
        load_config(path)
    path.write_text('[[watch]]\nname = "a"\nstore = "s:x"\nengine = "e:y"\n')
    config = load_config(path)
    assert (config.monitor.port, config.watch[0].schedule, config.watch[0].sample) == (
        9108, "every 1h", 200
    )  # fmt: skip


def test_webhook_label_hides_the_path_and_query() -> None:
    url = "https://hooks.example.com:8443/services/T0/B0/s3cret?token=abc"
    assert webhook_label(url) == "https://hooks.example.com:8443/..."


def test_the_population_statistics_import_no_io_library() -> None:
    """guard.core.population belongs to the functional core: numpy only."""
    probe = (
        "import sys, guard.core.population\n"
        "print(sorted(m for m in ('psycopg', 'qdrant_client', 'httpx', 'llama_cpp', "
        "'apscheduler', 'prometheus_client') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
