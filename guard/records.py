"""Plain values that cross the boundary between stores, engines and the core."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
RecordId = int | str
Distance = Literal["cosine", "dot", "l2", "l1"]
# How a store drew a sample; README "How the sample is drawn" says what each guarantees.
SampleMethod = Literal[
    "uniform_ids",  # dense integer ids: uniform random ids, fetched by id (exact)
    "uniform_id_list",  # every id listed without vectors, n drawn uniformly (exact)
    "tablesample_system",  # random pages, n rows drawn from them (uniform, page-clustered)
    "qdrant_random",  # Qdrant's own uniform random sample (exact, not seeded)
]


def as_vectors(data: Any, *, dims: int | None = None) -> Vectors:
    """Check shape and dtype once, where vectors enter the guard."""
    array = np.asarray(data, dtype=np.float32)
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, dims or 0)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {array.shape}")
    if dims is not None and array.shape[1] != dims:
        raise ValueError(f"expected vectors of {dims} dimensions, got {array.shape[1]}")
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class RecordBatch:
    """Records read from a store: ids, their source texts and their stored vectors.

    ``texts[i]`` is None when the record has no usable text. ``payloads`` holds the
    rest of each record (Qdrant payload or the other table columns) so a re-index
    can copy it unchanged; it is empty when the caller did not ask for it.
    """

    ids: tuple[RecordId, ...]
    texts: tuple[str | None, ...]
    vectors: Vectors
    payloads: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.texts) == len(self.vectors)):
            raise ValueError("ids, texts and vectors must have the same length")
        if self.payloads and len(self.payloads) != len(self.ids):
            raise ValueError("payloads must be empty or one per record")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dims: int) -> RecordBatch:
        return cls((), (), np.zeros((0, dims), dtype=np.float32))

    def with_text(self) -> RecordBatch:
        """Only the records that have text to re-embed."""
        keep = [i for i, text in enumerate(self.texts) if text]
        return self.take(keep)

    def take(self, indices: Sequence[int]) -> RecordBatch:
        return RecordBatch(
            tuple(self.ids[i] for i in indices),
            tuple(self.texts[i] for i in indices),
            self.vectors[list(indices)] if len(indices) else self.vectors[:0],
            tuple(self.payloads[i] for i in indices) if self.payloads else (),
        )


@dataclass(frozen=True, kw_only=True)
class Sample(RecordBatch):
    """A seeded random draw in random order, and how it was drawn.

    ``method`` names the store's sampling method (README, "How the sample is drawn"):
    what it guarantees is part of the report, because a verdict is only as good as the
    sample it rests on.
    """

    method: SampleMethod

    @classmethod
    def of(cls, batch: RecordBatch, method: SampleMethod) -> Sample:
        return cls(batch.ids, batch.texts, batch.vectors, batch.payloads, method=method)


@dataclass(frozen=True)
class StoreInfo:
    """What ``describe`` learns about a collection or table."""

    uri: str  # redacted
    count: int
    dims: int
    distance: Distance
    layout: str  # plain, langchain, llamaindex, haystack, pgai, or custom
    text_field: str
    vector_field: str | None
    records_without_text: int | None = None  # None when counting them would scan
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Changes:
    """How a copy differs from the live data it must follow, by id and by everything but
    the vector: records only the live side has (``added``), records whose text or
    payload differ (``edited``) and records the live side no longer has (``gone``).
    A record without text that one side lacks is no change: it is never embedded."""

    added: tuple[RecordId, ...] = ()
    edited: tuple[RecordId, ...] = ()
    gone: tuple[RecordId, ...] = ()

    def __len__(self) -> int:
        return len(self.added) + len(self.edited) + len(self.gone)

    def describe(self) -> str:
        return f"{len(self.added)} added, {len(self.edited)} edited, {len(self.gone)} deleted"
