"""How sure the guard is: an exact binomial bound on the share of mismatching records.

The claim a verdict rests on is "at confidence c, at most X of the stored records fall
below cosine T against the candidate". X is the one-sided Clopper-Pearson upper bound
for k failures in n records drawn at random without repeats.

Sampling goes in rounds (``plan_rounds``) and stops as soon as the bound decides.
Looking after every round and stopping at the first decisive look inflates the error
rate, so the error budget 1 - c is split evenly over the planned looks (Bonferroni):
each look uses confidence 1 - (1 - c) / looks. That is conservative and holds whatever
the rounds' sizes, and the overall claim keeps confidence c.

A round that covers the whole population (``n == population``) is a census: the share
is then known exactly and needs no bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scipy.stats import beta

Decision = Literal["pass", "fail", "continue"]


def plan_rounds(initial: int, maximum: int, population: int | None = None) -> tuple[int, ...]:
    """Cumulative sample sizes of the rounds: initial, doubling, capped at the maximum.

    ``population`` (records with text in the store) caps the last round, which then
    reads everything: plan_rounds(100, 2000) == (100, 200, 400, 800, 1600, 2000) and
    plan_rounds(100, 2000, population=300) == (100, 200, 300).
    """
    if initial < 1 or maximum < 1:
        raise ValueError("sample sizes must be at least 1")
    if population is not None:
        if population < 1:
            raise ValueError("the population is empty")
        maximum = min(maximum, population)
    sizes = []
    size = min(initial, maximum)
    while size < maximum:
        sizes.append(size)
        size *= 2
    sizes.append(maximum)
    return tuple(sizes)


def clopper_pearson(failures: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided exact bounds (lower, upper) on the failure probability, each at ``confidence``.

    Edge cases are exact: no failures gives lower 0, all failures gives upper 1.
    """
    _check_counts(failures, n)
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")
    alpha = 1.0 - confidence
    lower = 0.0 if failures == 0 else float(beta.ppf(alpha, failures, n - failures + 1))
    upper = 1.0 if failures == n else float(beta.ppf(confidence, failures + 1, n - failures))
    return lower, upper


@dataclass(frozen=True)
class Bound:
    """The statistical statement behind a verdict, with everything needed to restate it."""

    confidence: float  # overall confidence of the claim, as configured
    n: int  # records measured
    failures: int  # of those, how many fall below the threshold
    threshold: float  # per-record minimum cosine T
    allowed_share: float  # the largest share below T that still approves
    share_below_threshold_lower: float
    share_below_threshold_upper: float
    rounds: int  # rounds measured so far
    planned_rounds: int  # looks the error budget is split over
    exact: bool  # a census: the bounds are the observed share

    @property
    def per_look_confidence(self) -> float:
        return 1.0 - (1.0 - self.confidence) / self.planned_rounds

    @property
    def decision(self) -> Decision:
        return _decision(
            self.share_below_threshold_lower, self.share_below_threshold_upper, self.allowed_share
        )


def bound(
    failures: int,
    n: int,
    *,
    threshold: float,
    allowed_share: float,
    confidence: float = 0.99,
    rounds: int = 1,
    planned_rounds: int = 1,
    population: int | None = None,
) -> Bound:
    """The bound after ``rounds`` of ``planned_rounds`` looks, ``failures`` of ``n`` below T."""
    if not 1 <= rounds <= planned_rounds:
        raise ValueError("rounds must lie between 1 and planned_rounds")
    _check_share(allowed_share)
    lower, upper, exact = _bounds(failures, n, confidence, planned_rounds, population)
    return Bound(
        confidence=confidence,
        n=n,
        failures=failures,
        threshold=threshold,
        allowed_share=allowed_share,
        share_below_threshold_lower=lower,
        share_below_threshold_upper=upper,
        rounds=rounds,
        planned_rounds=planned_rounds,
        exact=exact,
    )


def decide(
    failures: int,
    n: int,
    allowed_share: float,
    confidence: float = 0.99,
    *,
    planned_rounds: int = 1,
    population: int | None = None,
) -> Decision:
    """ "pass" when the upper bound is within the allowed share, "fail" when even the
    lower bound exceeds it, else "continue" (sample the next round, if one is left)."""
    lower, upper, _ = _bounds(failures, n, confidence, planned_rounds, population)
    return _decision(lower, upper, allowed_share)


def _bounds(
    failures: int, n: int, confidence: float, planned_rounds: int, population: int | None
) -> tuple[float, float, bool]:
    _check_counts(failures, n)
    if planned_rounds < 1:
        raise ValueError("planned_rounds must be at least 1")
    if population is not None and n > population:
        raise ValueError(f"sampled {n} records from a population of {population}")
    if population is not None and n == population:
        return failures / n, failures / n, True
    lower, upper = clopper_pearson(failures, n, 1.0 - (1.0 - confidence) / planned_rounds)
    return lower, upper, False


def _decision(lower: float, upper: float, allowed_share: float) -> Decision:
    _check_share(allowed_share)
    if upper <= allowed_share:
        return "pass"
    if lower > allowed_share:
        return "fail"
    return "continue"


def _check_share(allowed_share: float) -> None:
    if not 0.0 <= allowed_share < 1.0:
        raise ValueError("allowed_share must lie in [0, 1)")


def _check_counts(failures: int, n: int) -> None:
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0 <= failures <= n:
        raise ValueError(f"failures must lie between 0 and n, got {failures} of {n}")
