"""The bridge core: fitted maps recover linear changes, and are judged only on held-out rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.core.bridge import (
    FIRST_HELD_OUT,
    GRAM_ROWS,
    KINDS,
    BridgeLook,
    BridgePlan,
    fit,
    fit_affine,
    fit_orthogonal,
    judge,
    plan_bridge,
    split,
)


def _candidate(n: int, dims: int, seed: int) -> np.ndarray:
    """Rows with a shared offset and uneven spread, like pooled embeddings."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dims)) * rng.uniform(0.2, 2.0, size=dims) + 1.5


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _one_look(fitted_on: int, rows: int) -> BridgePlan:
    """A plan of one look at every row after the fit, half the budget per kind."""
    look = BridgeLook(fitted_on, rows - fitted_on, 0.005, 0.005)
    return BridgePlan((look,), KINDS, 0.99, 0.01, None, rows, fitted_on)


def _judge(bridge, x, y, fitted_on):  # type: ignore[no-untyped-def]
    plan = _one_look(fitted_on, len(x))
    return judge(bridge, plan=plan, look=1, candidate=x, stored=y, threshold=0.99)


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


def test_a_look_without_its_rows_embedded_is_refused() -> None:
    x = _candidate(50, 4, seed=9)
    bridge = fit_affine(x[:30], x[:30], ridge=0.0)
    with pytest.raises(ValueError, match="needs 50 rows"):
        judge(bridge, plan=_one_look(30, 50), look=1, candidate=x[:49], stored=x, threshold=0.99)


def test_the_plan_fits_on_one_and_a_half_rows_per_parameter_and_looks_first_at_100() -> None:
    """384 inputs: 578 fitting rows; a first look on 100 held-out rows that can only
    stop; then the fewest held-out rows that approve with 0.8 of the budget; then the fit
    grown to every row judged, judged on all the rows left."""
    plan = plan_bridge(2000, 384, allowed_share=0.01, confidence=0.99, population=20_000)
    first, approving, grown = plan.looks
    assert (first.fit, first.held_out, first.approve_alpha) == (578, FIRST_HELD_OUT, 0.0)
    assert (approving.fit, approving.approve_alpha) == (578, pytest.approx(0.004))
    assert (grown.fit, grown.rows) == (578 + approving.held_out, 2000)
    assert grown.approve_alpha == pytest.approx(0.001)
    assert plan.can_approve


@pytest.mark.parametrize(
    ("available", "population"), [(2000, 20_000), (1300, 1300), (1100, 1100), (2000, None)]
)
def test_the_first_approving_look_holds_out_the_fewest_rows_that_can_approve(
    available: int, population: int | None
) -> None:
    """No failure anywhere passes at the first approving look; one held-out row fewer
    would not have."""
    plan = plan_bridge(available, 384, allowed_share=0.01, confidence=0.99, population=population)
    number = next(i for i, look in enumerate(plan.looks, 1) if look.approve_alpha > 0)
    look = plan.looks[number - 1]
    assert plan.bound(number, 0, 0, threshold=0.99).decision == "pass"
    shorter = replace(plan, looks=(replace(look, held_out=look.held_out - 1),))
    assert shorter.bound(1, 0, 0, threshold=0.99).decision == "continue"


def test_a_store_too_small_for_the_fit_and_the_fewest_held_out_gets_no_look() -> None:
    plan = plan_bridge(500, 384, allowed_share=0.01, confidence=0.99, population=500)
    assert (plan.looks, plan.can_approve) == ((), False)
    assert plan.reason.startswith("a sample of 500 records is too small for a bridge: 578 to fit")


def test_a_hopeless_bridge_stops_at_the_first_look_and_a_sound_one_goes_on() -> None:
    """Nearly every held-out row below T at the first look: the lower bound is above
    the allowed share ("fail"). None below: the first look cannot approve, so it goes on,
    and the next look approves."""
    plan = plan_bridge(1300, 384, allowed_share=0.01, confidence=0.99, population=1300)
    assert plan.bound(1, 99, 0, threshold=0.99).decision == "fail"
    assert plan.bound(1, 0, 0, threshold=0.99).decision == "continue"
    assert plan.bound(2, 0, 0, threshold=0.99).decision == "pass"


def test_the_fitting_rows_failures_count_as_measured() -> None:
    """14 of 1,300 fitting rows below T already exceed 1% of the store: no held-out
    sample can make up for them."""
    plan = plan_bridge(1300, 384, allowed_share=0.01, confidence=0.99, population=1300)
    bound = plan.bound(2, 0, 14, threshold=0.99)
    assert bound.share_below_threshold_lower >= 14 / 1300
    assert bound.decision == "fail"


@settings(max_examples=25, deadline=None)
@given(
    available=st.integers(min_value=1, max_value=30_000),
    dims=st.integers(min_value=2, max_value=1024),
    extra=st.one_of(st.none(), st.integers(min_value=0, max_value=100_000)),
    confidence=st.sampled_from([0.9, 0.95, 0.99, 0.999]),
    allowed=st.sampled_from([0.005, 0.01, 0.05]),
)
def test_the_looks_spend_at_most_the_error_budget(
    available: int, dims: int, extra: int | None, confidence: float, allowed: float
) -> None:
    """Over every look and every kind, approval budgets sum to at most 1 - confidence;
    looks are judged on rows the map never saw, within the sample."""
    population = None if extra is None else available + extra
    plan = plan_bridge(
        available, dims, allowed_share=allowed, confidence=confidence, population=population
    )
    assert plan.spent <= (1.0 - confidence) * (1 + 1e-12)
    assert plan.can_approve == bool(plan.looks)
    for look in plan.looks:
        assert look.fit > 0 and look.held_out > 0 and look.rows <= available


def test_on_unrelated_vectors_the_plan_stops_at_its_first_look_and_on_a_projection_it_passes() -> (
    None
):
    """The planner, the fits and the bound together, as the check runs them."""
    x = _candidate(1200, 24, seed=5)
    unrelated = _candidate(1200, 24, seed=6)
    projected = _unit(x @ np.random.default_rng(11).normal(size=(24, 16)) + 0.2)
    plan = plan_bridge(1200, 24, allowed_share=0.01, confidence=0.99, population=1200)
    decisions = {}
    for name, y in [("unrelated", unrelated), ("projected", projected)]:
        seen = []
        for number, look in enumerate(plan.looks, 1):
            bridge = fit("affine", x[: look.fit], y[: look.fit], threshold=0.99, rescale_rows=True)
            trial = judge(bridge, plan=plan, look=number, candidate=x, stored=y, threshold=0.99)
            seen.append(trial.bound.decision)
            if trial.bound.decision != "continue":
                break
        decisions[name] = seen
    assert decisions == {"unrelated": ["fail"], "projected": ["continue", "pass"]}


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
