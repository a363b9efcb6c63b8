"""Retrieval agreement through the store's own index: overlap@k."""

from __future__ import annotations

import numpy as np

from guard.core.cosines import overlap_at_k
from guard.records import Vectors
from guard.stores import VectorStore

# Sampled records whose top-k is compared through the store's index.
OVERLAP_QUERIES = 50


def overlap_through_index(
    store: VectorStore,
    stored: Vectors,
    candidate: Vectors,
    k: int,
    *,
    queries: int = OVERLAP_QUERIES,
) -> float | None:
    """Top-k through the store's index with each stored vector, then with the
    candidate's vector of the same record: the mean share of the first found by the
    second, over the first ``queries`` rows.

    Rows whose candidate vector has no direction (NaN, inf, zero) are left out: stores
    refuse such queries, and the self-checks report them. None when no row is left.
    """
    norms = np.linalg.norm(candidate, axis=1)
    rows = np.flatnonzero(np.isfinite(norms) & (norms > 0))[:queries]
    if rows.size == 0:
        return None
    return overlap_at_k(store.search(stored[rows], k), store.search(candidate[rows], k), k)
