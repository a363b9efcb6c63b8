"""Re-embedding the sample round after round until the bound decides.

Every round is a prefix of the draw, so each is itself a uniform sample; the bound
spends its error budget over the planned rounds (guard.core.stats).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guard.core.cosines import Comparison, compare
from guard.core.policy import Thresholds
from guard.core.stats import Bound, SequentialPlan
from guard.engines import EmbeddingEngine
from guard.logs import get_logger
from guard.progress import Progress
from guard.records import RecordBatch, StoreInfo, Vectors

log = get_logger(__name__)

_said = {"pass": "the bound approves", "fail": "the bound rejects", "continue": "undecided yet"}


@dataclass(frozen=True)
class Measured:
    """The rounds' outcome: the comparison and bound of everything embedded so far."""

    records: RecordBatch
    vectors: Vectors
    comparison: Comparison
    bound: Bound


def measure_in_rounds(
    usable: RecordBatch,
    first: Vectors,
    plan: SequentialPlan,
    candidate: EmbeddingEngine,
    info: StoreInfo,
    thresholds: Thresholds,
    progress: Progress | None = None,
) -> Measured:
    """Embed round after round until the bound decides or the sample is spent;
    ``progress`` hears of each round."""
    vectors = first
    rounds = [look.n for look in plan.looks]
    tokens = np.asarray(candidate.count_tokens(texts_of(usable, 0, rounds[0])), dtype=np.int64)
    for number, size in enumerate(rounds, start=1):
        if size > len(vectors):
            more = texts_of(usable, len(vectors), size)
            vectors = np.concatenate([vectors, candidate.embed(more)])
            tokens = np.concatenate([tokens, np.asarray(candidate.count_tokens(more), np.int64)])
        comparison = compare(usable.vectors[:size], vectors, tokens, info.distance)
        current = plan.bound(
            number, comparison.failures(thresholds.min_cosine), threshold=thresholds.min_cosine
        )
        log.debug(
            "check.round",
            round=number,
            n=size,
            failures=current.failures,
            upper=current.share_below_threshold_upper,
            decision=current.decision,
        )
        if progress is not None:
            progress(
                f"round {number} of {len(rounds)}: {current.failures} of {size} records below "
                f"cosine {thresholds.min_cosine:g}, {_said[current.decision]}"
            )
        if current.decision != "continue":
            break
    return Measured(usable.take(range(len(vectors))), vectors, comparison, current)


def embedded_up_to(
    usable: RecordBatch, vectors: Vectors, candidate: EmbeddingEngine, size: int
) -> Vectors:
    """The candidate's vectors of the sample's first ``size`` records, embedding the rest."""
    size = min(size, len(usable))
    if len(vectors) >= size:
        return vectors
    more = candidate.embed(texts_of(usable, len(vectors), size))
    return more if len(vectors) == 0 else np.concatenate([vectors, more])


def texts_of(records: RecordBatch, start: int, stop: int) -> list[str]:
    return [text or "" for text in records.texts[start:stop]]


def none_yet(info: StoreInfo) -> Vectors:
    """No vectors yet: zero rows (of the store's width, until the candidate says)."""
    return np.empty((0, info.dims), dtype=np.float32)
