"""guard.core.stats: exact Clopper-Pearson bounds and the sequential rounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binom

from guard.core.stats import Bound, bound, clopper_pearson, decide, plan_rounds


def test_no_failures_has_the_closed_form_upper_bound() -> None:
    """k = 0: upper = 1 - (1 - c)^(1/n), lower = 0 (the 'rule of three' family)."""
    lower, upper = clopper_pearson(0, 100, 0.99)

    assert lower == 0.0
    assert upper == pytest.approx(1 - 0.01 ** (1 / 100), rel=1e-12)


def test_all_failures_has_the_closed_form_lower_bound() -> None:
    lower, upper = clopper_pearson(20, 20, 0.95)

    assert upper == 1.0
    assert lower == pytest.approx(0.05 ** (1 / 20), rel=1e-12)


def test_textbook_interval() -> None:
    """1 of 10: the two-sided 95% Clopper-Pearson interval is (0.0025, 0.4450)."""
    lower, upper = clopper_pearson(1, 10, 0.975)

    assert (round(lower, 4), round(upper, 4)) == (0.0025, 0.4450)


def test_upper_bound_covers_at_the_stated_confidence() -> None:
    """Exact coverage: for every true share p, P(upper < p) <= 1 - c."""
    n, confidence = 60, 0.95
    uppers = np.array([clopper_pearson(k, n, confidence)[1] for k in range(n + 1)])
    for p in np.linspace(0.001, 0.999, 400):
        missed = binom.pmf(np.arange(n + 1), n, p)[uppers < p].sum()
        assert missed <= 1 - confidence + 1e-12


def test_rounds_double_up_to_the_maximum() -> None:
    assert plan_rounds(100, 2000) == (100, 200, 400, 800, 1600, 2000)
    assert plan_rounds(100, 800) == (100, 200, 400, 800)
    assert plan_rounds(500, 300) == (300,)


def test_rounds_stop_at_the_population() -> None:
    assert plan_rounds(100, 2000, population=300) == (100, 200, 300)
    assert plan_rounds(100, 2000, population=50) == (50,)


@pytest.mark.parametrize(("initial", "maximum", "population"), [(0, 10, None), (1, 10, 0)])
def test_rounds_reject_empty_plans(initial: int, maximum: int, population: int | None) -> None:
    with pytest.raises(ValueError):
        plan_rounds(initial, maximum, population)


def test_bound_splits_the_error_over_the_planned_rounds() -> None:
    """Bonferroni: each of 6 looks uses confidence 1 - 0.01 / 6."""
    b = bound(3, 800, threshold=0.99, allowed_share=0.01, rounds=4, planned_rounds=6)

    assert b.per_look_confidence == pytest.approx(1 - 0.01 / 6)
    assert (b.share_below_threshold_lower, b.share_below_threshold_upper) == clopper_pearson(
        3, 800, 1 - 0.01 / 6
    )
    assert (b.n, b.failures, b.rounds, b.planned_rounds, b.exact) == (800, 3, 4, 6, False)


def test_census_of_the_whole_population_is_exact() -> None:
    b = bound(2, 150, threshold=0.99, allowed_share=0.02, population=150)

    assert b == Bound(
        confidence=0.99,
        n=150,
        failures=2,
        threshold=0.99,
        allowed_share=0.02,
        share_below_threshold_lower=2 / 150,
        share_below_threshold_upper=2 / 150,
        rounds=1,
        planned_rounds=1,
        exact=True,
        method="census",
        approve_alpha=pytest.approx(0.01),
        reject_alpha=pytest.approx(0.01),
        population=150,
    )
    assert b.decision == "pass"


@pytest.mark.parametrize(
    ("failures", "n", "expected"),
    [(0, 1000, "pass"), (0, 100, "continue"), (5, 500, "continue"), (50, 500, "fail")],
)
def test_decide(failures: int, n: int, expected: str) -> None:
    assert decide(failures, n, 0.01, 0.99) == expected


def test_more_looks_need_more_evidence() -> None:
    """0 of 500 passes with one planned look, but not when the error is split over 6."""
    assert decide(0, 500, 0.01, 0.99) == "pass"
    assert decide(0, 500, 0.01, 0.99, planned_rounds=6) == "continue"


@pytest.mark.parametrize(
    ("failures", "n", "kwargs", "message"),
    [
        (3, 2, {}, "between 0 and n"),
        (0, 0, {}, "at least 1"),
        (0, 10, {"population": 5}, "population of 5"),
        (0, 10, {"planned_rounds": 0}, "planned_rounds"),
    ],
)
def test_bad_counts_are_rejected(
    failures: int, n: int, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decide(failures, n, 0.01, 0.99, **kwargs)


@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_confidence_must_be_a_probability(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 10, confidence)


def test_allowed_share_must_be_a_share() -> None:
    with pytest.raises(ValueError, match="allowed_share"):
        decide(1, 10, 1.5)
    with pytest.raises(ValueError, match="rounds"):
        bound(1, 10, threshold=0.99, allowed_share=0.01, rounds=2, planned_rounds=1)


confidences = st.sampled_from([0.9, 0.95, 0.99, 0.999])


@given(n=st.integers(1, 3000), data=st.data(), confidence=confidences)
def test_upper_bound_grows_with_failures(n: int, data: st.DataObject, confidence: float) -> None:
    """Fixed n: more failures never lower either bound."""
    k = data.draw(st.integers(0, n - 1))
    lower, upper = clopper_pearson(k, n, confidence)
    lower_next, upper_next = clopper_pearson(k + 1, n, confidence)

    assert upper <= upper_next
    assert lower <= lower_next


@given(k=st.integers(0, 500), extra=st.integers(0, 3000), confidence=confidences)
def test_upper_bound_shrinks_with_sample_size(k: int, extra: int, confidence: float) -> None:
    """Fixed failures k: measuring more records never raises the upper bound."""
    n = k + 1 + extra
    assert clopper_pearson(k, n + 1, confidence)[1] <= clopper_pearson(k, n, confidence)[1]


@given(n=st.integers(1, 5000), data=st.data(), confidence=confidences)
def test_bounds_bracket_the_observed_share(n: int, data: st.DataObject, confidence: float) -> None:
    k = data.draw(st.integers(0, n))
    lower, upper = clopper_pearson(k, n, confidence)

    assert 0.0 <= lower <= k / n <= upper <= 1.0


def _exact_hypergeometric(failures: int, n: int, population: int, alpha: float) -> tuple[int, int]:
    """The bounds by enumerating every K and every sample count, with exact fractions."""
    from fractions import Fraction
    from math import comb

    def pmf(k: int, failing: int) -> Fraction:
        return Fraction(comb(failing, k) * comb(population - failing, n - k), comb(population, n))

    possible = range(failures, population - (n - failures) + 1)
    at_most = {K: sum(pmf(k, K) for k in range(failures + 1)) for K in possible}
    at_least = {K: 1 - sum(pmf(k, K) for k in range(failures)) for K in possible}
    upper = max(K for K in possible if at_most[K] > alpha)
    lower = min(K for K in possible if at_least[K] > alpha)
    return lower, upper


@pytest.mark.parametrize(
    ("failures", "n", "population", "confidence"),
    [(0, 10, 40, 0.9), (1, 10, 40, 0.95), (3, 12, 30, 0.99), (7, 7, 20, 0.9), (0, 25, 25, 0.99)],
)
def test_hypergeometric_bounds_match_exact_enumeration(
    failures: int, n: int, population: int, confidence: float
) -> None:
    from guard.core.stats import hypergeometric

    expected = _exact_hypergeometric(failures, n, population, 1 - confidence)
    assert hypergeometric(failures, n, population, confidence) == expected


@pytest.mark.parametrize(
    ("population", "fewest"), [(1000, 341), (2000, 392), (20_000, 451), (None, 459)]
)
def test_the_fewest_records_that_can_approve(population: int | None, fewest: int) -> None:
    """0 failures, 1% at 99%: sampling without repeats needs fewer records on small stores."""
    from guard.core.stats import fewest_to_approve

    assert fewest_to_approve(0.01, 0.99, population) == fewest


@pytest.mark.parametrize("population", [1000, 1369, 20_000, 1_000_000, None])
def test_the_first_approving_look_is_near_the_fewest_possible(population: int | None) -> None:
    from guard.core.stats import plan_looks

    plan = plan_looks(100, 2000, allowed_share=0.01, confidence=0.99, population=population)
    first = plan.first_approving
    assert first is not None and first <= 1.1 * plan.fewest
    approving = next(i for i, look in enumerate(plan.looks, start=1) if look.n == first)
    assert plan.bound(approving, 0, threshold=0.99).decision == "pass"
    assert plan.bound(approving - 1, 0, threshold=0.99).decision == "continue"


@pytest.mark.parametrize("population", [1000, 20_000, None])
def test_the_budget_spent_over_the_looks_is_the_whole_error_budget(
    population: int | None,
) -> None:
    from guard.core.stats import plan_looks

    plan = plan_looks(100, 2000, allowed_share=0.01, confidence=0.99, population=population)
    assert sum(look.approve_alpha for look in plan.looks) == pytest.approx(0.01)
    assert sum(look.reject_alpha for look in plan.looks) == pytest.approx(0.01)
    assert [look.approve_alpha for look in plan.looks if look.n < plan.fewest] == [0.0] * len(
        [look for look in plan.looks if look.n < plan.fewest]
    )


def test_a_clearly_broken_engine_is_stopped_at_the_first_look() -> None:
    from guard.core.stats import plan_looks

    plan = plan_looks(100, 2000, allowed_share=0.01, confidence=0.99, population=20_000)
    first = plan.bound(1, 100, threshold=0.99)
    assert (first.n, first.decision, first.method) == (100, "fail", "hypergeometric")
    assert first.share_below_threshold_lower > 0.9


def test_a_sample_limit_below_the_first_approving_look_can_never_approve() -> None:
    from guard.core.stats import plan_looks

    plan = plan_looks(100, 400, allowed_share=0.01, confidence=0.99, population=20_000)
    assert (plan.can_approve, plan.first_approving) == (False, None)
    last = plan.bound(len(plan.looks), 0, threshold=0.99)
    assert (last.decision, last.spent) == ("continue", True)
    assert last.sample_to_decide() == 800


def test_a_census_always_decides() -> None:
    from guard.core.stats import plan_looks

    plan = plan_looks(100, 2000, allowed_share=0.01, confidence=0.99, population=300)
    assert plan.looks[-1].n == 300
    assert [plan.bound(len(plan.looks), k, threshold=0.99).decision for k in (3, 4)] == [
        "pass",
        "fail",
    ]
