"""The bridge core: fitted maps recover linear changes, and are judged only on held-out rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.core.bridge import (
    GRAM_ROWS,
    fit,
    fit_affine,
    fit_orthogonal,
    fitting_rows,
    judge,
    split,
)


def _candidate(n: int, dims: int, seed: int) -> np.ndarray:
    """Rows with a shared offset and uneven spread, like pooled embeddings."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dims)) * rng.uniform(0.2, 2.0, size=dims) + 1.5


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _judge(bridge, x, y, fitted_on):  # type: ignore[no-untyped-def]
    held = np.arange(fitted_on, len(x))
    return judge(
        bridge,
        fitted_on=fitted_on,
        held_out=held,
        candidate=x[held],
        stored=y[held],
        threshold=0.99,
        allowed_share=0.01,
        confidence=0.99,
        look=1,
        looks=2,
    )


def test_orthogonal_recovers_a_rotation_of_unit_rows() -> None:
    x = _candidate(1200, 24, seed=1)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(24, 24)))
    y = _unit(x @ q)
    bridge = fit_orthogonal(x[:600], y[:600], rescale_rows=True)
    trial = _judge(bridge, x, y, 600)
    assert (trial.bound.decision, trial.bound.failures) == ("pass", 0)
    assert trial.summary.min > 0.99999


@pytest.mark.parametrize(("into", "rank"), [(40, 24), (16, 16), (24, 24), (24, 12)])
def test_orthogonal_is_the_procrustes_solution_into_any_width(into: int, rank: int) -> None:
    """Wider, narrower, square and rank-deficient cross products: the fit is the scaled
    ``U @ V.T`` of the SVD Procrustes solution wherever the rows carry signal."""
    rng = np.random.default_rng(into + rank)
    x = _candidate(300, 24, seed=into) @ np.eye(24)[:, :rank] @ rng.normal(size=(rank, 24))
    y = rng.normal(size=(300, into)) + x @ rng.normal(size=(24, into))
    bridge = fit_orthogonal(x, y)
    u, singular, vt = np.linalg.svd(x.T @ y, full_matrices=False)
    signal = singular > 1e-6 * singular[0]
    expected = (u[:, signal] @ vt[signal]) * singular.sum() / np.sum(x * x)
    assert bridge.matrix.shape == (24, into)
    assert np.allclose(x @ bridge.matrix, x @ expected, atol=1e-8)
    assert bridge.parameters["scale"] == pytest.approx(singular.sum() / np.sum(x * x))


def test_affine_recovers_a_projection_to_fewer_dimensions_stored_as_unit_rows() -> None:
    """A dropped 24 -> 16 dense layer, the stored side normalised (as Qdrant stores it)."""
    x = _candidate(1200, 24, seed=3)
    projection = np.random.default_rng(4).normal(size=(24, 16))
    y = _unit(x @ projection + 0.3)
    orthogonal = _judge(
        fit("orthogonal", x[:600], y[:600], threshold=0.99, rescale_rows=True), x, y, 600
    )
    affine = _judge(fit("affine", x[:600], y[:600], threshold=0.99, rescale_rows=True), x, y, 600)
    assert orthogonal.bound.decision == "fail"
    assert (affine.bound.decision, affine.bound.failures) == ("pass", 0)
    assert (affine.bridge.input_dims, affine.bridge.output_dims) == (24, 16)


def test_no_map_bridges_unrelated_vectors() -> None:
    x = _candidate(1200, 24, seed=5)
    y = _candidate(1200, 24, seed=6)
    for kind in ("orthogonal", "affine"):
        bridge = fit(kind, x[:600], y[:600], threshold=0.99, rescale_rows=True)  # type: ignore[arg-type]
        assert _judge(bridge, x, y, 600).bound.decision == "fail"


def test_ridge_is_chosen_on_fitting_rows_and_helps_with_few_of_them() -> None:
    """With barely more rows than dimensions and noisy targets, a penalty is chosen."""
    rng = np.random.default_rng(7)
    x = _candidate(130, 40, seed=8)
    y = x @ rng.normal(size=(40, 40)) + rng.normal(scale=3.0, size=(130, 40))
    bridge = fit("affine", x, y, threshold=0.99, rescale_rows=False)
    assert bridge.parameters["ridge"] > 0.0


def test_judging_on_a_fitting_row_is_refused() -> None:
    x = _candidate(50, 4, seed=9)
    bridge = fit_affine(x[:30], x[:30], ridge=0.0)
    with pytest.raises(ValueError, match="not fitted on"):
        judge(
            bridge,
            fitted_on=30,
            held_out=np.arange(29, 50),
            candidate=x[29:],
            stored=x[29:],
            threshold=0.99,
            allowed_share=0.01,
            confidence=0.99,
            look=1,
            looks=1,
        )


def test_fitting_rows_leave_half_the_sample_to_judge() -> None:
    assert (
        fitting_rows(384, 4000),
        fitting_rows(384, 1000),
        fitting_rows(16, 4000),
    ) == (1155, 500, 200)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(min_value=12, max_value=80),
    share=st.floats(min_value=0.2, max_value=0.8),
    seed=st.integers(min_value=0, max_value=2**16),
    kind=st.sampled_from(["orthogonal", "affine"]),
)
def test_a_bridge_never_sees_the_rows_that_judge_it(
    n: int, share: float, seed: int, kind: str
) -> None:
    """Held-out rows are disjoint from fitting rows, and replacing every held-out row
    changes neither the fitted map nor anything but the judgement."""
    fit_n = min(max(int(n * share), 4), n - 1)
    fit_rows, held = split(n, fit_n)
    assert set() == set(fit_rows) & set(held)
    assert n == len(fit_rows) + len(held)
    x, y = _candidate(n, 6, seed), _candidate(n, 6, seed + 1)
    other_x, other_y = x.copy(), y.copy()
    other_x[held], other_y[held] = (
        _candidate(len(held), 6, seed + 2),
        _candidate(len(held), 6, seed + 3),
    )
    one = fit(kind, x[fit_rows], y[fit_rows], threshold=0.99, rescale_rows=True)  # type: ignore[arg-type]
    two = fit(kind, other_x[fit_rows], other_y[fit_rows], threshold=0.99, rescale_rows=True)  # type: ignore[arg-type]
    assert np.array_equal(one.matrix, two.matrix)
    assert np.array_equal(one.bias, two.bias)


@pytest.mark.parametrize("n", [1200, 2 * (GRAM_ROWS + 100)])
def test_affine_with_free_row_lengths_recovers_a_projection_below_and_above_gram_rows(
    n: int,
) -> None:
    """Up to GRAM_ROWS fitting rows the row scales settle on n x n matrices, beyond on the
    rows themselves; both recover a 12 -> 8 projection stored as unit rows."""
    x = _candidate(n, 12, seed=10)
    y = _unit(x @ np.random.default_rng(11).normal(size=(12, 8)) + 0.2)
    half = n // 2
    bridge = fit("affine", x[:half], y[:half], threshold=0.99, rescale_rows=True)
    trial = _judge(bridge, x, y, half)
    assert (trial.bound.decision, trial.bound.failures) == ("pass", 0)
    assert trial.summary.min > 0.9999
