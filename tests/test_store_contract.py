"""The VectorStore contract (guard/stores.py), run unchanged on every store kind."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fixtures_stores import make_batch

from guard.errors import StoreError
from guard.records import Distance, RecordBatch, RecordId, StoreInfo
from guard.stores import VectorStore, open_store

DIMS = 16
ROWS = 300


@pytest.fixture
def store(new_store_uri: Callable[..., str]) -> Iterator[VectorStore]:
    """A fresh, not yet created store."""
    opened = open_store(new_store_uri())
    yield opened
    opened.close()


@pytest.fixture
def filled(store: VectorStore) -> tuple[VectorStore, RecordBatch]:
    """A cosine store holding ``ROWS`` records, every 7th without text."""
    batch = make_batch(ROWS, DIMS, missing_text_every=7)
    store.create(dims=DIMS, distance="cosine")
    store.upsert(batch)
    return store, batch


def by_id(batch: RecordBatch) -> dict[RecordId, int]:
    return {record_id: i for i, record_id in enumerate(batch.ids)}


def test_store_satisfies_the_protocol(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)
    assert "://" in store.uri or store.uri.startswith("qdrant+local:")


@pytest.mark.parametrize("distance", ["cosine", "dot", "l2", "l1"])
def test_describe_reads_back_the_distance_and_dims_of_create(
    store: VectorStore, distance: Distance
) -> None:
    store.create(dims=8, distance=distance)
    store.upsert(make_batch(3, 8))
    info = store.describe()
    assert (info.count, info.dims, info.distance, info.layout) == (3, 8, distance, "plain")


def test_describe_counts_records_and_records_without_text(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, batch = filled
    info = store.describe()
    missing = sum(text is None for text in batch.texts)
    assert (info.count, info.dims, info.records_without_text) == (ROWS, DIMS, missing)
    assert info.text_field == "text"
    assert info.uri == store.uri


def test_sample_is_reproducible_for_a_seed_and_differs_for_another(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, _ = filled
    first, again, other = (
        store.sample(40, seed=7),
        store.sample(40, seed=7),
        store.sample(40, seed=8),
    )
    assert first.ids == again.ids
    assert set(first.ids) != set(other.ids)
    assert len(set(first.ids)) == len(first.ids) == 40


def test_sample_returns_the_stored_vectors_and_texts(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, batch = filled
    drawn = store.sample(25, seed=1)
    index = by_id(batch)
    rows = [index[record_id] for record_id in drawn.ids]
    assert drawn.vectors.dtype == np.float32
    np.testing.assert_allclose(drawn.vectors, batch.vectors[rows], atol=1e-5)
    assert list(drawn.texts) == [batch.texts[i] for i in rows]


def test_a_small_sample_of_a_larger_store_reads_part_of_it_reproducibly(
    store: VectorStore,
) -> None:
    """Few records from many: pgvector samples a share of the pages, Qdrant draws ids."""
    store.create(dims=8, distance="cosine")
    store.upsert(make_batch(2000, 8, seed=5))
    draws = [store.sample(5, seed=seed).ids for seed in (1, 1, 2, 3)]
    assert draws[0] == draws[1]
    assert len({frozenset(ids) for ids in draws}) == 3
    assert all(len(set(ids)) == 5 for ids in draws)


def test_sample_larger_than_the_store_returns_every_record(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, batch = filled
    assert sorted(store.sample(ROWS + 50, seed=3).ids) == sorted(batch.ids)


def test_uuid_ids_sample_reproducibly_and_scan_in_order(store: VectorStore) -> None:
    """UUID ids (Qdrant's other id kind) keep the contract; ``like`` gives pgvector the type."""
    source = StoreInfo(
        "src", 200, DIMS, "cosine", "plain", "text", None, details={"id_type": "uuid"}
    )
    batch = make_batch(200, DIMS, uuids=True)
    store.create(dims=DIMS, distance="cosine", like=source)
    store.upsert(batch)
    first, again = store.sample(20, seed=11), store.sample(20, seed=11)
    assert first.ids == again.ids
    assert len(set(first.ids)) == 20
    assert set(first.ids) <= set(batch.ids)
    assert [i for page in store.scan(batch_size=64) for i in page.ids] == sorted(batch.ids)
    assert store.fetch([batch.ids[5]]).texts == (batch.texts[5],)


def test_scan_returns_every_id_once_in_ascending_order(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, batch = filled
    pages = list(store.scan(batch_size=64))
    ids = [record_id for page in pages for record_id in page.ids]
    assert ids == sorted(batch.ids)
    assert all(0 < len(page) <= 64 for page in pages)


def test_scan_after_resumes_right_after_that_id(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, batch = filled
    ordered = sorted(batch.ids)
    resumed = [i for page in store.scan(batch_size=50, after=ordered[99]) for i in page.ids]
    assert resumed == ordered[100:]


def test_scan_pages_carry_vectors_and_texts(filled: tuple[VectorStore, RecordBatch]) -> None:
    store, batch = filled
    page = next(store.scan(batch_size=10))
    index = by_id(batch)
    np.testing.assert_allclose(page.vectors, batch.vectors[[index[i] for i in page.ids]], atol=1e-5)
    assert list(page.texts) == [batch.texts[index[i]] for i in page.ids]
    assert page.payloads == ()


def test_payloads_from_scan_copy_unchanged_into_another_store(
    new_store_uri: Callable[..., str],
) -> None:
    source, target = open_store(new_store_uri()), open_store(new_store_uri())
    for store in (source, target):
        store.create(dims=DIMS, distance="cosine")
    source.upsert(make_batch(30, DIMS, payloads=True))
    for page in source.scan(batch_size=8, with_payload=True):
        target.upsert(page)
    copied = [page.payloads for page in source.scan(batch_size=100, with_payload=True)]
    assert [page.payloads for page in target.scan(batch_size=100, with_payload=True)] == copied
    assert "'doc-0'" in repr(copied[0][3])  # Qdrant: in the payload; pgvector: payload column
    source.close()
    target.close()


def test_fetch_returns_known_ids_in_the_order_asked(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, batch = filled
    fetched = store.fetch([42, 7, 10_000, 42])
    assert fetched.ids == (42, 7)
    assert fetched.texts == (batch.texts[42], None)
    np.testing.assert_allclose(fetched.vectors, batch.vectors[[42, 7]], atol=1e-5)
    assert len(store.fetch([])) == 0


def test_search_finds_the_stored_vector_first(filled: tuple[VectorStore, RecordBatch]) -> None:
    store, batch = filled
    queries = [3, 150, 299]
    results = store.search(batch.vectors[queries], k=5)
    assert [hits[0] for hits in results] == [batch.ids[i] for i in queries]
    assert all(len(hits) == 5 for hits in results)


def test_upsert_twice_leaves_one_record_with_the_new_text(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, batch = filled
    changed = RecordBatch(batch.ids[:5], ("new",) * 5, batch.vectors[:5])
    store.upsert(changed)
    store.upsert(changed)
    assert store.describe().count == ROWS
    assert store.fetch(batch.ids[:2]).texts == ("new", "new")


def test_stores_written_from_several_threads_lose_nothing(
    new_store_uri: Callable[..., str],
) -> None:
    """Re-index workers share a process (and, in qdrant's local mode, one client per
    folder): concurrent upserts through separate store objects must all land intact."""
    uri = new_store_uri()
    store = open_store(uri)
    store.create(dims=DIMS, distance="l2")
    batch = make_batch(800, DIMS)

    def write(part: int) -> None:
        writer = open_store(uri)
        try:
            for start in range(part * 200, (part + 1) * 200, 20):
                writer.upsert(batch.take(list(range(start, start + 20))))
        finally:
            writer.close()

    threads = [threading.Thread(target=write, args=(part,)) for part in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = store.fetch(batch.ids)
    store.close()
    assert stored.ids == batch.ids
    np.testing.assert_allclose(stored.vectors, batch.vectors, rtol=1e-6)


def test_delete_removes_records_and_ignores_unknown_ids(
    filled: tuple[VectorStore, RecordBatch],
) -> None:
    store, _ = filled
    store.delete([1, 2, 10_000])
    store.delete([])
    assert store.describe().count == ROWS - 2
    assert store.fetch([1, 2, 3]).ids == (3,)


def test_create_refuses_an_existing_store_and_drop_removes_it(store: VectorStore) -> None:
    store.create(dims=4, distance="l2")
    with pytest.raises(StoreError, match="already exists"):
        store.create(dims=4, distance="l2")
    store.drop()
    with pytest.raises(StoreError, match="not found"):
        store.describe()
    store.drop()  # dropping what is gone is a no-op


def test_a_new_store_describes_as_empty(store: VectorStore) -> None:
    store.create(dims=4, distance="dot")
    info = store.describe()
    assert (info.count, info.dims, info.distance, info.records_without_text) == (0, 4, "dot", 0)
