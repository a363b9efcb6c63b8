"""One draw from the store, uniform and in random order, that checks can share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from guard.core.policy import Thresholds
from guard.core.stats import SequentialPlan, plan_looks
from guard.errors import ConfigError, StoreError
from guard.logs import get_logger
from guard.records import RecordBatch, StoreInfo
from guard.stores import VectorStore

log = get_logger(__name__)


@dataclass
class Timer:
    """Wall time per phase, for the report's `timing`."""

    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    def totals(self) -> dict[str, float]:
        return {**self.phases, "total": time.perf_counter() - self.started}


@dataclass(frozen=True)
class DrawnSample:
    """One draw from the store, which checks can share: ``guard compare`` draws once and
    judges every candidate on the same records.

    ``info`` counts the sampled records without text; ``usable`` are those with text, in
    the draw's random order; ``plan`` says after how many of them the bound looks, and
    with which share of the error budget.
    """

    info: StoreInfo
    method: str
    usable: RecordBatch
    census: bool
    plan: SequentialPlan

    @property
    def rounds(self) -> tuple[int, ...]:
        """The cumulative sizes of the looks over ``usable``."""
        return tuple(look.n for look in self.plan.looks)


def draw_sample(
    store: VectorStore,
    thresholds: Thresholds,
    seed: int,
    timer: Timer | None = None,
    *,
    strict: bool = False,
) -> DrawnSample:
    """Describe the store and draw the check's sample; an empty store, or a sample
    without any text, is a StoreError. ``strict``: a sample limit that can never approve
    this store is a ConfigError naming the sample that can, before anything is embedded."""
    timer = timer or Timer()
    with timer.phase("describe"):
        info = store.describe()
    if info.count == 0:
        raise StoreError("the store is empty: there is nothing to compare", uri=store.uri)
    if strict:
        refuse_hopeless(thresholds, info.count)
    with timer.phase("sample"):
        drawn = store.sample(thresholds.max_sample, seed=seed)
    usable = drawn.with_text()
    if len(usable) == 0:
        raise StoreError(
            f"none of the {len(drawn)} sampled records has text in {info.text_field!r} "
            "(set text_field= on the store URI)",
            uri=store.uri,
        )
    census = len(drawn) == info.count
    log.info("check.sampled", store=store.uri, drawn=len(drawn), with_text=len(usable))
    plan = plan_looks(
        thresholds.initial_sample,
        min(thresholds.max_sample, len(usable)),
        allowed_share=thresholds.allowed_share,
        confidence=thresholds.confidence,
        # The sample is drawn without repeats from a store of known size: exact
        # (hypergeometric) bounds, a census when it holds every record.
        population=len(usable) if census else info.count,
    )
    return DrawnSample(
        info=with_sampled_without_text(info, len(drawn) - len(usable)),
        method=drawn.method,
        usable=usable,
        census=census,
        plan=plan,
    )


def refuse_hopeless(thresholds: Thresholds, count: int) -> None:
    """A sample limit below the first look that can approve a store of ``count`` records
    (and short of reading it whole) can only end ``undecided``: refuse it up front."""
    if thresholds.max_sample >= count:
        return  # a census decides
    plan = plan_looks(
        thresholds.initial_sample,
        thresholds.max_sample,
        allowed_share=thresholds.allowed_share,
        confidence=thresholds.confidence,
        population=count,
    )
    if plan.can_approve:
        return
    needed = plan_looks(
        thresholds.initial_sample,
        count,
        allowed_share=thresholds.allowed_share,
        confidence=thresholds.confidence,
        population=count,
    ).first_approving
    raise ConfigError(
        f"a sample of {thresholds.max_sample} records can never approve this store of "
        f"{count}: the first look that can approve at {thresholds.confidence:.0%} "
        f"confidence, {thresholds.allowed_share:g} allowed below cosine "
        f"{thresholds.min_cosine:g}, needs {needed} records (--sample {needed})"
    )


def with_sampled_without_text(info: StoreInfo, missing: int) -> StoreInfo:
    """The report's sample section counts the sampled records that had no text."""
    return replace(info, records_without_text=missing)
