"""One draw from the store, uniform and in random order, that checks can share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from guard.core.policy import Thresholds
from guard.core.stats import plan_rounds
from guard.errors import StoreError
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
    the draw's random order; ``rounds`` are the cumulative round sizes over ``usable``.
    """

    info: StoreInfo
    method: str
    usable: RecordBatch
    census: bool
    rounds: tuple[int, ...]


def draw_sample(
    store: VectorStore, thresholds: Thresholds, seed: int, timer: Timer | None = None
) -> DrawnSample:
    """Describe the store and draw the check's sample; an empty store, or a sample
    without any text, is a StoreError."""
    timer = timer or Timer()
    with timer.phase("describe"):
        info = store.describe()
    if info.count == 0:
        raise StoreError("the store is empty: there is nothing to compare", uri=store.uri)
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
    rounds = plan_rounds(
        thresholds.initial_sample, thresholds.max_sample, len(usable) if census else None
    )
    return DrawnSample(
        info=with_sampled_without_text(info, len(drawn) - len(usable)),
        method=drawn.method,
        usable=usable,
        census=census,
        rounds=tuple(min(size, len(usable)) for size in rounds),
    )


def with_sampled_without_text(info: StoreInfo, missing: int) -> StoreInfo:
    """The report's sample section counts the sampled records that had no text."""
    return replace(info, records_without_text=missing)
