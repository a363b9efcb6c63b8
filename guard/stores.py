"""The vector-store extension points, two Protocols with one registry keyed by URI
scheme: ``VectorStore`` (reading and writing records) and ``ReindexStore`` (the write side
of a re-index: targets, switches, drops). Each scheme is registered once, as a
``StoreKind`` naming both of its classes.

Adapters live in ``guard.adapters`` (the top-level adapters/ folder, shipped under
``guard`` because PyPI's ``adapters`` is another project), one module per store and
Protocol, and are imported only when a URI asks for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from guard.records import Changes, Distance, RecordBatch, RecordId, Sample, StoreInfo, Vectors
from guard.registry import build, lookup


@runtime_checkable
class VectorStore(Protocol):
    """A collection of vectors with their source texts.

    Contract every adapter keeps (tests/test_store_contract.py checks it):
    - nothing connects in ``__init__``; the first call connects, and driver errors
      come out as ``StoreError`` with the redacted URI;
    - reads never write; ``sample`` and ``scan`` never load the whole collection;
    - ``scan`` walks ids in ascending order by keyset, never by OFFSET;
    - ``upsert`` is idempotent per id; ``delete`` of an unknown id is a no-op.
    """

    uri: str  # redacted form, safe to print

    def describe(self) -> StoreInfo:
        """Count, dimensions, distance and the text layout detected."""
        ...

    def sample(self, n: int, *, seed: int) -> Sample:
        """Up to ``n`` distinct records drawn uniformly at random, **in random order**:
        every prefix of the sample is itself a uniform sample, because the check reads
        the sample round by round as growing prefixes (a sample sorted by id would
        measure only the oldest records). The same seed gives the same draw while the
        collection is unchanged; ``Sample.method`` names how it was drawn."""
        ...

    def scan(
        self, *, batch_size: int, after: RecordId | None = None, with_payload: bool = False
    ) -> Iterator[RecordBatch]:
        """Every record with id greater than ``after``, in ascending id order."""
        ...

    def fetch(self, ids: Sequence[RecordId], *, with_payload: bool = False) -> RecordBatch:
        """The records with these ids (unknown ids are left out)."""
        ...

    def search(self, vectors: Vectors, k: int) -> list[list[RecordId]]:
        """Top-k ids for each query vector, through the store's own index."""
        ...

    def create(self, *, dims: int, distance: Distance, like: StoreInfo | None = None) -> None:
        """Create the collection or table this URI names (error if it exists)."""
        ...

    def upsert(self, batch: RecordBatch) -> None: ...

    def delete(self, ids: Sequence[RecordId]) -> None: ...

    def drop(self) -> None:
        """Remove the collection or table this URI names."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


@dataclass
class OthersCheck:
    """The rows outside a re-indexed selection: how many the live side has, and which
    differ in the target (missing, stale, extra, or re-embedded)."""

    records: int = 0
    differ: list[Any] = field(default_factory=list)
    count: int = 0  # every differing row; ``differ`` holds the first few


Switch = Mapping[str, Any]
"""A switch's details as its store planned them: recorded in the job's state before
readers move, read back by the same store to settle, undo or clean up after a crash."""


class LastWrites(Protocol):
    """What a switch carries over from the live data into the data readers move to."""

    def ahead(self) -> None:
        """Carry what changed without holding anyone; the store calls it once nothing but
        readers and writers can touch the two tables (pgvector: vacuum and DDL are held
        off), so that ``__call__`` is left with only what arrives meanwhile."""
        ...

    def __call__(self) -> None:
        """Carry what is left; called once writers are held off, just before readers
        move (pgvector: the live table is locked against writes; Qdrant has no such
        lock: just before the alias moves)."""
        ...


@runtime_checkable
class ReindexStore(Protocol):
    """The write side of a re-index on one store, opened from the source URI.

    Contract every adapter keeps (tests/test_reindex_store_contract.py checks it on
    each store, tests/test_reindex_*.py the jobs around it):
    - nothing connects in ``__init__``; driver errors come out as ``StoreError`` with
      the redacted URI, refusals as ``ReindexError``;
    - ``switch`` moves every reader in one atomic step, or changes nothing;
    - the store itself, not the state database, says what is served (``serves_target``),
      and neither ``plan_cleanup`` nor ``drop`` drops anything readers are served.
    """

    uri: str  # redacted form, safe to print

    def name(self) -> str:
        """The collection (or alias) or table the source URI names."""
        ...

    def renamed(self, name: str) -> str:
        """The source URI naming another collection or table of the same store, every
        other part kept as given."""
        ...

    def selects_part(self) -> bool:
        """Whether the URI selects part of a table or collection (``collection=``,
        ``filter=``): the other rows are copied unchanged, never re-embedded."""
        ...

    def create_target(self, target_uri: str, *, dims: int, info: StoreInfo) -> None:
        """An empty target shaped like the source (``info``), with ``dims`` dimensions."""
        ...

    def copy_others(self, live_uri: str, into_uri: str) -> int:
        """Copy (again) into ``into_uri`` the rows outside the selection that differ from
        ``live_uri``'s; returns the number of rows written or removed."""
        ...

    def check_others(self, live_uri: str, into_uri: str) -> OthersCheck: ...

    def repair(self, live_uri: str, batch: RecordBatch) -> int:
        """Write ``batch``'s vectors onto the records of ``live_uri`` that still hold
        ``batch``'s texts (a write since is newer: left alone); returns how many."""
        ...

    def changes(self, live_uri: str, into_uri: str) -> Changes:
        """How ``into_uri``'s selected records differ from ``live_uri``'s (see ``Changes``):
        what catch-up, cutover and rollback carry over."""
        ...

    def switch_notes(self) -> list[str]:
        """What the operator must know at plan time about how readers will switch."""
        ...

    def plan_switch(self, target_uri: str, *, kept: str, alias: str | None) -> Switch:
        """How readers will move to the target (``kept``: a free name for the source's
        data, ``alias``: the one the application queries, where the store has them)."""
        ...

    def serves_target(self, switch: Switch) -> bool:
        """Whether the served name serves the target now (else the source); an error
        when it serves neither."""
        ...

    def switch(self, switch: Switch, *, to_target: bool, settle: LastWrites | None = None) -> None:
        """Move readers to the target (cutover) or back to the source (rollback), with
        ``settle`` carrying the writes made meanwhile into the data readers move to."""
        ...

    def shown(self, switch: Switch, *, cut_over: bool) -> tuple[str, str]:
        """(what readers see, the data kept until cleanup), as printed."""
        ...

    def locations(self, switch: Switch, target_uri: str) -> tuple[str, str]:
        """(source data URI, target data URI) after a cutover."""
        ...

    def plan_cleanup(
        self, switch: Switch | None, target_uri: str, *, cut_over: bool
    ) -> tuple[str, str]:
        """(the name that stays live, the name cleanup drops); refused when readers are
        served the latter."""
        ...

    def drop(self, name: str, *, live: str | None) -> None:
        """Drop collection or table ``name`` (already gone: nothing to do); ``live`` (the
        served table after a cutover) keeps what the two share. Refused with
        ``ReindexError`` when readers are served ``name`` now, whatever the caller planned."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


@dataclass(frozen=True)
class StoreKind:
    """One store's classes, each as "module:Class": its ``VectorStore`` and its
    ``ReindexStore``. Modules are imported only when a URI asks for them, so that a
    missing optional driver only matters to the URIs that need it."""

    store: str
    reindex: str


QDRANT = StoreKind(
    store="guard.adapters.qdrant:QdrantStore",
    reindex="guard.adapters.qdrant_reindex:QdrantReindex",
)
PGVECTOR = StoreKind(
    store="guard.adapters.pgvector:PgVectorStore",
    reindex="guard.adapters.pgvector_reindex:PgVectorReindex",
)

STORES: dict[str, StoreKind] = {
    "qdrant+http": QDRANT,
    "qdrant+https": QDRANT,
    "qdrant+local": QDRANT,
    "postgresql": PGVECTOR,
    "postgres": PGVECTOR,
    "pgserver": PGVECTOR,
}


def open_store(uri: str) -> VectorStore:
    parsed, kind = lookup(STORES, uri, "store")
    store: VectorStore = build(kind.store, parsed, "store")
    return store


def open_reindex(uri: str) -> ReindexStore:
    """The re-index side of the store at ``uri`` (the job's source URI)."""
    parsed, kind = lookup(STORES, uri, "store")
    store: ReindexStore = build(kind.reindex, parsed, "store")
    return store
