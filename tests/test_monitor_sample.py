"""A watch's sample check measures overlap@k through the store's index with the same
filter as the check: candidate vectors without a direction are left out, never sent to
the store as queries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from test_check import DamagedEngine

from guard.core.policy import Thresholds
from guard.engines import open_engine
from guard.monitor.run import sample_check
from guard.records import Vectors
from guard.stores import open_store


def nan_for_every_third(texts: Sequence[str], vectors: Vectors) -> Vectors:
    damaged = vectors.copy()
    damaged[::3] = np.nan
    return damaged


def nan_for_all(texts: Sequence[str], vectors: Vectors) -> Vectors:
    return np.full_like(vectors, np.nan)


def test_nan_vectors_are_left_out_of_the_overlap_and_the_run_drifts(
    f16_store: str, gguf_f16: Path
) -> None:
    engine = DamagedEngine(open_engine(f"llamacpp:{gguf_f16}"), nan_for_every_third)
    with open_store(f16_store) as store:
        measured = sample_check(store, engine, store.describe(), Thresholds(), 60, seed=1)
    engine.close()

    assert measured.overlap is not None and measured.overlap > 0.9
    assert (measured.n, measured.failures, measured.drifted) == (60, 20, True)


def test_a_candidate_without_any_direction_drifts_without_an_overlap(
    f16_store: str, gguf_f16: Path
) -> None:
    engine = DamagedEngine(open_engine(f"llamacpp:{gguf_f16}"), nan_for_all)
    with open_store(f16_store) as store:
        measured = sample_check(store, engine, store.describe(), Thresholds(), 30, seed=1)
    engine.close()

    assert (measured.overlap, measured.drifted) == (None, True)
