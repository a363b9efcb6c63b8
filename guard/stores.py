"""The vector-store extension point: one Protocol, one registry keyed by URI scheme.

Adapters live in the top-level ``adapters`` package, one module per store, and are
imported only when a URI asks for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from guard.records import Distance, RecordBatch, RecordId, Sample, StoreInfo, Vectors
from guard.registry import instantiate


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

    def fetch(self, ids: Sequence[RecordId]) -> RecordBatch:
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


# scheme -> "module:Class"; modules are imported lazily so that a missing optional
# driver only matters to the URIs that need it.
STORES: dict[str, str] = {
    "qdrant+http": "adapters.qdrant:QdrantStore",
    "qdrant+https": "adapters.qdrant:QdrantStore",
    "qdrant+local": "adapters.qdrant:QdrantStore",
    "postgresql": "adapters.pgvector:PgVectorStore",
    "postgres": "adapters.pgvector:PgVectorStore",
    "pgserver": "adapters.pgvector:PgVectorStore",
}


def open_store(uri: str) -> VectorStore:
    store: VectorStore = instantiate(STORES, uri, "store")
    return store
