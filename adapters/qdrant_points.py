"""The points one Qdrant URI selects, read in Qdrant's own id order.

Qdrant orders point ids as unsigned integers first, then UUIDs; scroll's offset is an
inclusive keyset cursor in that order. ``Points`` holds the reads the store's scan and
fetch and the sampling (``guard.adapters.qdrant_sampling``) share: keyset pages, lookups
by id, probes at a position of the id order, counts, each within ``filter=`` and each
client call inside the store's ``translate_errors``. The id order's arithmetic
(``position``, ``successor``) lives here with them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from qdrant_client import QdrantClient, models

from guard.records import RecordId

MAX_UINT = 2**64 - 1
UUIDS_AT = 2**64  # UUIDs sort after every integer id
UUID_SPACE = 2**128


class Connection(Protocol):
    """What ``Points`` reads through: the store's client and error map."""

    collection: str

    @property
    def client(self) -> QdrantClient: ...

    def translate_errors(self, what: str | None = None) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class Points:
    """The points of ``store.collection`` that ``selected`` (``filter=``) selects, with
    the vector named ``vector_name`` (None: the collection's one unnamed vector)."""

    store: Connection
    selected: models.Filter | None
    vector_name: str | None

    def where(self, flt: models.Filter | None = None) -> models.Filter | None:
        """``flt`` within the points this URI selects (``filter=``)."""
        if self.selected is None or flt is None:
            return flt or self.selected
        return models.Filter(must=[self.selected, flt])

    @property
    def with_vectors(self) -> bool | list[str]:
        return [self.vector_name] if self.vector_name else True

    def count(self, flt: models.Filter | None = None) -> int:
        with self.store.translate_errors():
            return self.store.client.count(
                self.store.collection, count_filter=self.where(flt), exact=True
            ).count

    def first(self) -> list[Any]:
        """The first selected point in id order (none in an empty selection), id only."""
        with self.store.translate_errors():
            points, _ = self.store.client.scroll(
                self.store.collection, scroll_filter=self.where(), limit=1, with_payload=False
            )
        return list(points)

    def first_at(self, position: int, *, full: bool = True) -> Any | None:
        """The first point at or after ``position`` in Qdrant's id order: integer ids are
        themselves, UUIDs follow them at ``UUIDS_AT + uuid.int``."""
        offset = position if position < UUIDS_AT else uuid_at(position - UUIDS_AT)
        with self.store.translate_errors():
            points, _ = self.store.client.scroll(
                self.store.collection,
                scroll_filter=self.where(),
                offset=offset,
                limit=1,
                with_payload=full,
                with_vectors=self.with_vectors if full else False,
            )
        return points[0] if points else None

    def pages(
        self, after: RecordId | None, size: int = 256, *, full: bool = True
    ) -> Iterator[list[Any]]:
        """The selected points after ``after`` in id order, a page at a time; ``full``:
        with payloads and vectors, else ids only."""
        offset: Any = None if after is None else successor(after)
        while True:
            with self.store.translate_errors():
                points, offset = self.store.client.scroll(
                    self.store.collection,
                    scroll_filter=self.where(),
                    offset=offset,
                    limit=size,
                    with_payload=full,
                    with_vectors=self.with_vectors if full else False,
                )
            if points:
                yield points
            if offset is None:
                return

    def get(self, ids: Sequence[RecordId]) -> list[Any]:
        """The points with these ids (payload and vector) that ``filter=`` selects."""
        with self.store.translate_errors():
            if self.selected is None:
                found: list[Any] = self.store.client.retrieve(
                    self.store.collection, ids, with_payload=True, with_vectors=self.with_vectors
                )
                return found
            if not ids:
                return []
            points, _ = self.store.client.scroll(
                self.store.collection,
                scroll_filter=self.where(
                    models.Filter(must=[models.HasIdCondition(has_id=list(ids))])
                ),
                limit=len(ids),
                with_payload=True,
                with_vectors=self.with_vectors,
            )
            return list(points)


def payload_filter(field: str, value: str) -> models.Filter:
    """``filter=FIELD:VALUE``: the payload field equals VALUE, read as a string, or as the
    integer or boolean it spells (a URI cannot say which type the payload holds)."""
    values: list[str | int | bool] = [value]
    if value.lstrip("-").isdigit():
        values.append(int(value))
    if value.lower() in ("true", "false"):
        values.append(value.lower() == "true")
    return models.Filter(
        should=[models.FieldCondition(key=field, match=models.MatchValue(value=v)) for v in values]
    )


def uuid_at(value: int) -> str:
    """The UUID whose integer is ``value``, as Qdrant writes it."""
    return str(uuid.UUID(int=value))


def position(point_id: int | str | uuid.UUID) -> int:
    """Where an id sits in Qdrant's order, as one integer (see ``Points.first_at``)."""
    return point_id if isinstance(point_id, int) else UUIDS_AT + uuid.UUID(str(point_id)).int


def normal_id(point_id: RecordId) -> RecordId:
    """Ids as Qdrant returns them: ints, or UUIDs in canonical lower-case form."""
    return point_id if isinstance(point_id, int) else str(uuid.UUID(point_id))


def successor(point_id: RecordId) -> RecordId:
    """The smallest id after ``point_id`` in Qdrant's order, as scroll's inclusive offset."""
    if isinstance(point_id, int):
        return point_id + 1 if point_id < MAX_UINT else uuid_at(0)
    return uuid_at(min(uuid.UUID(point_id).int + 1, UUID_SPACE - 1))
