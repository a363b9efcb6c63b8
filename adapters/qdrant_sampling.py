"""Drawing a uniform random sample of a Qdrant collection without reading every vector.

The draws ``QdrantStore.sample`` chooses from (README, "How the sample is drawn"): every
id scrolled without payload or vector, random ids of a dense integer range kept where a
point exists (rejection, with the range's end found by bisection on keyset probes), or
Qdrant's own random sample. Kept apart from the store because the draws are statistics on
top of the point reads (``guard.adapters.qdrant_points.Points``), not reads a caller asks
for.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qdrant_client import models

from guard.adapters.qdrant_points import MAX_UINT, UUID_SPACE, UUIDS_AT, Points, position
from guard.records import RecordId

MAX_DRAW_ROUNDS = 50
ID_PAGE = 10_000  # ids per scroll request when listing them
DENSE_IDS = 0.1  # integer ids filling this share of their range are drawn directly


def all_ids(points: Points) -> list[RecordId]:
    """Every point id ``filter=`` selects, in Qdrant's order, without payloads or vectors."""
    pages = points.pages(None, ID_PAGE, full=False)
    return [p.id if isinstance(p.id, int) else str(p.id) for page in pages for p in page]


def dense_id_span(points: Points, count: int) -> tuple[int, int] | None:
    """(lowest id, span) where the smallest id is an integer and the integer ids fill at
    least ``DENSE_IDS`` of their range (a collection mixing both id kinds is drawn from
    the kind of its smallest id)."""
    low = position(points.first()[0].id)
    if low < UUIDS_AT:
        span = _last_position(points, low) - low + 1
        if count / span >= DENSE_IDS:
            return low, span
    return None


def _last_position(points: Points, low: int) -> int:
    """The last id of the same kind (integer or UUID) as the one at ``low``, found by
    bisection on keyset probes: at most 64 requests for integers, 128 for UUIDs."""
    is_int = low < UUIDS_AT
    lo, hi = low, MAX_UINT if is_int else UUIDS_AT + UUID_SPACE - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        found = points.first_at(mid, full=False)
        if found is not None and isinstance(found.id, int) == is_int:
            lo = position(found.id)
        else:
            hi = mid - 1
    return lo


def draw_ids(
    points: Points, rng: np.random.Generator, n: int, low: int, span: int, count: int
) -> list[Any]:
    """Uniform random ids in ``[low, low + span)``, fetched in batches until ``n`` exist."""
    chosen: dict[int, Any] = {}
    tried: set[int] = set()
    for _ in range(MAX_DRAW_ROUNDS):
        if len(chosen) >= n or len(tried) >= span:
            break
        want = math.ceil((n - len(chosen)) * span / count * 1.25) + 8
        fresh = [
            i
            for i in dict.fromkeys(low + _uniform(rng, span) for _ in range(want))
            if i not in tried
        ]
        tried.update(fresh)
        found = points.get(fresh)
        by_id = {p.id: p for p in found}
        for point_id in fresh:
            if point_id in by_id and len(chosen) < n:
                chosen[point_id] = by_id[point_id]
    return list(chosen.values())


def qdrant_random(points: Points, n: int) -> list[Any]:
    """Qdrant's own uniform random sample (``SampleQuery(sample=Sample.RANDOM)``, Qdrant
    1.11 or later), with payloads and vectors. It takes no seed: not reproducible."""
    store = points.store
    with store.translate_errors():
        answer = store.client.query_points(
            store.collection,
            query=models.SampleQuery(sample=models.Sample.RANDOM),
            query_filter=points.where(),
            limit=n,
            with_payload=True,
            with_vectors=points.with_vectors,
        )
    return list(answer.points)


def _uniform(rng: np.random.Generator, span: int) -> int:
    """A uniform integer in ``[0, span)`` for spans up to 2**128 (numpy stops at 2**64)."""
    if span <= 2**64:
        return int(rng.integers(0, span, dtype=np.uint64)) if span > 1 else 0
    high, low = (int(x) for x in rng.integers(0, 2**64, size=2, dtype=np.uint64))
    return ((high << 64) | low) % span
