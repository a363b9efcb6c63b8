"""Walking records in the order ``VectorStore.scan`` gives them: by id, one row at a
time, and two such streams side by side (source and target of a re-index), so that
memory stays at one row per side whatever the collection's size."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from guard.records import Changes, RecordBatch, RecordId


def id_key(record_id: RecordId) -> tuple[int, int | str]:
    """The order ``VectorStore.scan`` walks ids in: integers first, then strings.

    Canonical lower-case UUID strings compare like their 128-bit values, which is
    Qdrant's order; pgvector text ids compare by code point, as the adapter's keyset
    SQL orders and compares them (``COLLATE "C"``, whatever the column's collation).
    """
    return (0, record_id) if isinstance(record_id, int) else (1, str(record_id))


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


def differences(live: Iterator[Row], into: Iterator[Row]) -> Changes:
    """How ``into`` differs from ``live`` by id, text and payload, in one merged pass
    (for stores that cannot compare on their side); see ``guard.records.Changes``."""
    added: list[RecordId] = []
    edited: list[RecordId] = []
    gone: list[RecordId] = []
    for left, right in merge(live, into):
        if left is None:
            assert right is not None
            if _has_text(right):
                gone.append(right.id)
        elif right is None:
            if _has_text(left):
                added.append(left.id)
        elif left.text != right.text or dict(left.payload) != dict(right.payload):
            edited.append(left.id)
    return Changes(tuple(added), tuple(edited), tuple(gone))


def _has_text(row: Row) -> bool:
    """Records without text are never re-embedded: one side lacking them is no change."""
    return bool(row.text and row.text.strip())
