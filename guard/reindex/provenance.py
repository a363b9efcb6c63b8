"""Pure helpers of the re-index: id order, time windows, streams of rows.

Target records carry nothing of the guard's (frameworks such as Haystack show every
payload key and column to the application): a target record is a copy of its source
record, text included, written only by the job's worker with the job's engine, so
catch-up and verify compare its text with the source's. The state database keeps the
engine fingerprint's hash per job and the text hash of each skipped record.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import time
from typing import Any

from guard.errors import ConfigError
from guard.records import RecordBatch, RecordId


def has_text(text: str | None) -> bool:
    return bool(text and text.strip())


def id_key(record_id: RecordId) -> tuple[int, int | str]:
    """The order ``VectorStore.scan`` walks ids in: integers first, then strings.

    Canonical lower-case UUID strings compare like their 128-bit values, which is
    Qdrant's order; pgvector text ids compare by code point, as the adapter's keyset
    SQL orders and compares them (``COLLATE "C"``, whatever the column's collation).
    """
    return (0, record_id) if isinstance(record_id, int) else (1, str(record_id))


def in_range(record_id: RecordId, last_id: RecordId | None) -> bool:
    """Whether an id falls at or before a batch's inclusive upper bound."""
    return last_id is None or id_key(record_id) <= id_key(last_id)


def short_id(job_id: uuid.UUID | str) -> str:
    return uuid.UUID(str(job_id)).hex[:8]


@dataclass(frozen=True)
class Window:
    """Hours of the day when workers may run, in the worker's local time; may wrap
    midnight (22:00-06:00)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window:
        try:
            first, second = text.split("-")
            start, end = time.fromisoformat(first.strip()), time.fromisoformat(second.strip())
        except ValueError:
            raise ConfigError(f"window must be HH:MM-HH:MM, not {text!r}") from None
        if start == end:
            raise ConfigError(f"window {text!r} is empty; leave it out to run at any time")
        return cls(start, end)

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Row:
    """One record read from a store, flattened out of a ``RecordBatch``."""

    id: RecordId
    text: str | None
    payload: Mapping[str, Any]


def rows(batches: Iterator[RecordBatch]) -> Iterator[Row]:
    for batch in batches:
        payloads = batch.payloads or ({},) * len(batch)
        for record_id, text, payload in zip(batch.ids, batch.texts, payloads, strict=True):
            yield Row(record_id, text, payload)


def merge(source: Iterator[Row], target: Iterator[Row]) -> Iterator[tuple[Row | None, Row | None]]:
    """Walk two ascending id streams together: (source, target) pairs where a missing
    side is None. Memory stays at one row per side, whatever the collection size."""
    left, right = next(source, None), next(target, None)
    while left is not None or right is not None:
        if right is None or (left is not None and id_key(left.id) < id_key(right.id)):
            yield left, None
            left = next(source, None)
        elif left is None or id_key(right.id) < id_key(left.id):
            yield None, right
            right = next(target, None)
        else:
            yield left, right
            left, right = next(source, None), next(target, None)
