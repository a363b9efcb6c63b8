"""How sure the guard is: exact bounds on the share of mismatching records, and the
sequential plan that decides with as few re-embedded records as the claim allows.

The claim a verdict rests on is "at confidence c, at most X of the stored records fall
below cosine T against the candidate" (approve), or "at least X" (re-index). X is exact:

- ``hypergeometric`` when the store's size N is known: the sample is drawn without
  repeats, so k failures in n records bound the number of failing records K of N
  exactly (the smallest sample that can approve 1% at 99% is 341 of 1,000 records,
  392 of 2,000, 451 of 20,000, and 459 on an unbounded store);
- ``binomial`` (one-sided Clopper-Pearson) when the size is only estimated;
- ``census`` when every record was measured: the share is known, no bound is needed.

The records with text are a uniform sample of the text-bearing records, whose number is
at most N; the hypergeometric bound grows with the population, so using N errs on the
safe side.

Sequential looks (``plan_looks``): the sample is read in growing prefixes and the check
stops at the first look that decides. Each look may err, so the error budget 1 - c is
spent over the looks (a union bound, valid whatever the looks' dependence):

- approving: only looks that can approve at all receive budget. The first look is put
  at the fewest records that can approve with ``APPROVE_FIRST`` of the budget (0.8), so
  an engine that reproduces the store is approved within a few percent of the fewest
  records any exact test needs; each later look gets a fifth of what is left, and the
  last one the rest. Spending most of the budget early is right here because the engine
  that matters most, the one that reproduces the store, decides at the first look;
- re-indexing: the lower bound is checked at every look with an equal share, so a
  clearly broken engine is stopped at the first look (100 of 100 below T is decisive).

A look that cannot approve has ``approve_alpha`` 0. A plan whose sample limit is below
the first approving look can never approve (``SequentialPlan.can_approve``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from scipy.stats import beta, hypergeom

Decision = Literal["pass", "fail", "continue"]
Method = Literal["hypergeometric", "binomial", "census"]

# The share of the approval budget the first approving look spends; each later look
# spends this complement's share of what is left (see the module docstring).
APPROVE_FIRST = 0.8


def plan_rounds(initial: int, maximum: int, population: int | None = None) -> tuple[int, ...]:
    """Cumulative sample sizes: initial, doubling, capped at the maximum.

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
    _check_confidence(confidence)
    alpha = 1.0 - confidence
    lower = 0.0 if failures == 0 else float(beta.ppf(alpha, failures, n - failures + 1))
    upper = 1.0 if failures == n else float(beta.ppf(confidence, failures + 1, n - failures))
    return lower, upper


def hypergeometric(failures: int, n: int, population: int, confidence: float) -> tuple[int, int]:
    """One-sided exact bounds (lower, upper) on the number of failing records among
    ``population``, from ``failures`` in ``n`` drawn without repeats, each at ``confidence``.

    upper = the largest K with P(X <= failures | K) > 1 - confidence; lower = the
    smallest K with P(X >= failures | K) > 1 - confidence.
    """
    _check_counts(failures, n)
    _check_confidence(confidence)
    if n > population:
        raise ValueError(f"sampled {n} records from a population of {population}")
    alpha = 1.0 - confidence
    least, most = failures, population - (n - failures)  # the values K can take
    # P(X <= failures | K) falls as K grows: the upper bound is the last K above alpha.
    low, high = least, most
    while low < high:
        middle = (low + high + 1) // 2
        if hypergeom.cdf(failures, population, middle, n) > alpha:
            low = middle
        else:
            high = middle - 1
    upper = low
    # P(X >= failures | K) rises with K: the lower bound is the first K above alpha.
    low, high = least, most
    while low < high:
        middle = (low + high) // 2
        if failures == 0 or hypergeom.sf(failures - 1, population, middle, n) > alpha:
            high = middle
        else:
            low = middle + 1
    return low, upper


def shares(
    failures: int, n: int, confidence: float, population: int | None
) -> tuple[float, float, Method]:
    """(lower, upper) bounds on the share below T at ``confidence``, and how they were made."""
    _check_counts(failures, n)
    if population is not None and n > population:
        raise ValueError(f"sampled {n} records from a population of {population}")
    if population is not None and n == population:
        return failures / n, failures / n, "census"
    if population is not None:
        lower, upper = hypergeometric(failures, n, population, confidence)
        return lower / population, upper / population, "hypergeometric"
    low, high = clopper_pearson(failures, n, confidence)
    return low, high, "binomial"


def fewest_to_approve(allowed_share: float, confidence: float, population: int | None) -> int:
    """The fewest records a sample without failures needs for the upper bound at
    ``confidence`` to fall within ``allowed_share``: no exact test can approve with fewer.
    A census always decides, so the answer is at most the population."""
    _check_share(allowed_share)
    _check_confidence(confidence)
    return _fewest(allowed_share, confidence, population)


@lru_cache(maxsize=256)
def _fewest(allowed_share: float, confidence: float, population: int | None) -> int:
    def approves(n: int) -> bool:
        return shares(0, n, confidence, population)[1] <= allowed_share

    if population is None:
        if allowed_share <= 0.0:
            raise ValueError("without a known population, allowed_share 0 never approves")
        guess = math.ceil(math.log(1.0 - confidence) / math.log1p(-allowed_share))
        low, high = max(1, guess - 2), guess + 2
        while not approves(high):
            high *= 2
    else:
        low, high = 1, population
    return smallest_passing(approves, low, high)


def smallest_passing(passes: Callable[[int], bool], low: int, high: int) -> int:
    """The smallest n in [low, high] with ``passes(n)``, for a ``passes`` that stays
    true once true and holds at ``high`` (a bisection)."""
    while low < high:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle + 1
    return low


@dataclass(frozen=True)
class Look:
    """One planned look: after ``n`` records, with its share of the error budget for an
    approval (0: this look cannot approve) and for a re-index."""

    n: int
    approve_alpha: float
    reject_alpha: float


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
    rounds: int  # looks taken so far
    planned_rounds: int  # looks planned
    exact: bool  # a census: the bounds are the observed share
    method: Method = "binomial"
    approve_alpha: float = 0.0  # this look's budget to approve (0: it cannot)
    reject_alpha: float = 0.0  # this look's budget to conclude a re-index
    looks: tuple[Look, ...] = ()  # the whole plan, for the report
    population: int | None = None

    @property
    def per_look_confidence(self) -> float:
        """The confidence the upper bound was computed at."""
        return 1.0 - self.approve_alpha

    @property
    def decision(self) -> Decision:
        if self.exact:
            return _decision(
                self.share_below_threshold_lower,
                self.share_below_threshold_upper,
                self.allowed_share,
            )
        if self.approve_alpha > 0.0 and self.share_below_threshold_upper <= self.allowed_share:
            return "pass"
        if self.share_below_threshold_lower > self.allowed_share:
            return "fail"
        return "continue"

    @property
    def spent(self) -> bool:
        """Every planned look was taken."""
        return self.rounds >= self.planned_rounds

    def sample_to_decide(self) -> int | None:
        """The sample at which a share like the one seen would decide, for a bound that
        has not: the records the next check needs (None: it decided, or none would)."""
        if self.decision != "continue":
            return None
        seen = self.failures / self.n
        alpha = min(
            (look.approve_alpha for look in self.looks if look.approve_alpha > 0.0),
            default=(1.0 - self.confidence),
        )
        n = self.n
        limit = self.population if self.population is not None else 10_000_000
        while n < limit:
            n = min(limit, n * 2)
            failures = round(seen * n)
            lower, upper, _ = shares(failures, n, 1.0 - alpha, self.population)
            if upper <= self.allowed_share or lower > self.allowed_share:
                return n
        return self.population


@dataclass(frozen=True)
class SequentialPlan:
    """The looks of one check and how each spends the error budget."""

    looks: tuple[Look, ...]
    confidence: float
    allowed_share: float
    population: int | None
    fewest: int  # the fewest records any exact test needs to approve this store

    @property
    def can_approve(self) -> bool:
        return any(look.approve_alpha > 0.0 for look in self.looks) or (
            self.population is not None and self.looks[-1].n == self.population
        )

    @property
    def first_approving(self) -> int | None:
        """The records the first look that can approve needs."""
        for look in self.looks:
            if look.approve_alpha > 0.0 or look.n == self.population:
                return look.n
        return None

    def bound(self, look: int, failures: int, *, threshold: float) -> Bound:
        """The bound at look ``look`` (1-based) with ``failures`` below ``threshold``."""
        if not 1 <= look <= len(self.looks):
            raise ValueError(f"look {look} of a plan of {len(self.looks)}")
        planned = self.looks[look - 1]
        _check_counts(failures, planned.n)
        upper_alpha = planned.approve_alpha or planned.reject_alpha
        lower, _, method = shares(failures, planned.n, 1.0 - planned.reject_alpha, self.population)
        _, upper, _ = shares(failures, planned.n, 1.0 - upper_alpha, self.population)
        return Bound(
            confidence=self.confidence,
            n=planned.n,
            failures=failures,
            threshold=threshold,
            allowed_share=self.allowed_share,
            share_below_threshold_lower=lower,
            share_below_threshold_upper=upper,
            rounds=look,
            planned_rounds=len(self.looks),
            exact=method == "census",
            method=method,
            approve_alpha=planned.approve_alpha,
            reject_alpha=planned.reject_alpha,
            looks=self.looks,
            population=self.population,
        )


def plan_looks(
    initial: int,
    maximum: int,
    *,
    allowed_share: float,
    confidence: float,
    population: int | None = None,
) -> SequentialPlan:
    """The check's looks: ``initial`` doubling up to the first look that can approve
    (placed at the fewest records that approve with ``APPROVE_FIRST`` of the budget),
    then doubling again up to ``maximum`` (or the population: a census).

    plan_looks(100, 2000, allowed_share=0.01, confidence=0.99, population=20_000) looks
    at 100, 200, 473, 946, 1892 and 2000 records; only the last four can approve.
    """
    _check_share(allowed_share)
    _check_confidence(confidence)
    if initial < 1 or maximum < 1:
        raise ValueError("sample sizes must be at least 1")
    if population is not None:
        if population < 1:
            raise ValueError("the population is empty")
        maximum = min(maximum, population)
    alpha = 1.0 - confidence
    fewest = fewest_to_approve(allowed_share, confidence, population)
    first = _fewest(allowed_share, 1.0 - APPROVE_FIRST * alpha, population)
    sizes: list[int] = []
    size = min(initial, maximum)
    while size * 2 <= min(first, maximum):  # no look just short of the first approving one
        sizes.append(size)
        size *= 2
    approving_from = len(sizes)
    size = min(first, maximum)
    while size < maximum:
        sizes.append(size)
        size *= 2
    sizes.append(maximum)
    approving = [n for n in sizes[approving_from:] if n >= first or n == population]
    budgets = approval_budgets(len(approving), alpha)
    spend = dict(zip(approving, budgets, strict=True))
    reject_alpha = alpha / len(sizes)
    looks = tuple(Look(n, spend.get(n, 0.0), reject_alpha) for n in sizes)
    return SequentialPlan(looks, confidence, allowed_share, population, fewest)


def approval_budgets(count: int, alpha: float) -> list[float]:
    """APPROVE_FIRST of ``alpha`` to the first approving look, a fifth of the rest to each
    later one, all that is left to the last: the budgets sum to ``alpha`` exactly."""
    budgets: list[float] = []
    left = alpha
    for index in range(count):
        if index == count - 1:
            budgets.append(left)
        else:
            share = left * (APPROVE_FIRST if index == 0 else 1.0 - APPROVE_FIRST)
            budgets.append(share)
            left -= share
    return budgets


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
    """A bound after ``rounds`` of ``planned_rounds`` equal looks (the budget split evenly,
    Bonferroni), ``failures`` of ``n`` below T: for tests of several maps at once (the
    bridge) and the monitor's single look."""
    if not 1 <= rounds <= planned_rounds:
        raise ValueError("rounds must lie between 1 and planned_rounds")
    _check_share(allowed_share)
    _check_confidence(confidence)
    per_look = (1.0 - confidence) / planned_rounds
    lower, upper, method = shares(failures, n, 1.0 - per_look, population)
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
        exact=method == "census",
        method=method,
        approve_alpha=per_look,
        reject_alpha=per_look,
        population=population,
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
    return bound(
        failures,
        n,
        threshold=0.0,
        allowed_share=allowed_share,
        confidence=confidence,
        planned_rounds=planned_rounds,
        population=population,
    ).decision


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


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")


def _check_counts(failures: int, n: int) -> None:
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0 <= failures <= n:
        raise ValueError(f"failures must lie between 0 and n, got {failures} of {n}")
