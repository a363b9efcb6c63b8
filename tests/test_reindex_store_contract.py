"""The ReindexStore contract (guard/stores.py), run unchanged on every store that
implements it: qdrant-local, pgvector, and a Qdrant server when QDRANT_URL is set."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
from fixtures_stores import make_batch

from guard.errors import GuardError, ReindexError
from guard.records import RecordBatch
from guard.stores import ReindexStore, Switch, VectorStore, open_reindex, open_store

DIMS = 16
ROWS = 40


@dataclass
class Source:
    uri: str
    store: VectorStore
    batch: RecordBatch
    reindex: ReindexStore

    def named(self, suffix: str) -> str:
        return f"{self.reindex.name()}{suffix}"


@pytest.fixture
def source(new_store_uri: Callable[..., str]) -> Iterator[Source]:
    """A filled cosine source and its re-index side; every table or collection the test
    names with a suffix of the source's name is dropped afterwards."""
    uri = new_store_uri()
    store = open_store(uri)
    batch = make_batch(ROWS, DIMS, missing_text_every=7)
    store.create(dims=DIMS, distance="cosine")
    store.upsert(batch)
    opened = Source(uri, store, batch, open_reindex(uri))
    yield opened
    for suffix in ("__t", "__old"):
        with contextlib.suppress(GuardError):  # served: the store's teardown takes it
            opened.reindex.drop(opened.named(suffix), live=None)
    opened.reindex.close()
    store.close()


def with_target(src: Source, *, dims: int = DIMS) -> str:
    """A target created like the source and filled with the source's records."""
    target = src.reindex.renamed(src.named("__t"))
    src.reindex.create_target(target, dims=dims, info=src.store.describe())
    filled = open_store(target)
    filled.upsert(src.batch)
    filled.close()
    return target


def planned(src: Source, target: str) -> Switch:
    return src.reindex.plan_switch(target, kept=src.named("__old"), alias=src.named("_live"))


def served(src: Source, switch: Switch) -> tuple[int, list[str | None]]:
    """(count, texts in id order) of what readers are served: the alias or the table."""
    name = switch.get("alias") or switch["table"]
    store = open_store(src.reindex.renamed(str(name)))
    try:
        batch = store.fetch(list(src.batch.ids))
        return store.describe().count, [batch.texts[batch.ids.index(i)] for i in src.batch.ids]
    finally:
        store.close()


def one_line(error: pytest.ExceptionInfo[GuardError]) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_store_satisfies_the_protocol(source: Source) -> None:
    assert isinstance(source.reindex, ReindexStore)


def test_names_are_what_the_uri_names_and_renamed_keeps_the_rest(source: Source) -> None:
    other = source.reindex.renamed(source.named("__t"))
    assert source.named("__t") == open_reindex(other).name()
    assert source.uri == source.reindex.renamed(source.reindex.name())


@pytest.mark.parametrize("dims", [DIMS, 8])
def test_the_target_is_created_like_the_source(source: Source, dims: int) -> None:
    info = source.store.describe()
    target_uri = source.reindex.renamed(source.named("__t"))
    source.reindex.create_target(target_uri, dims=dims, info=info)
    target = open_store(target_uri)
    target.upsert(make_batch(3, dims))
    made = target.describe()
    target.close()
    expected = (3, dims, info.distance, info.layout, info.text_field, info.vector_field)
    assert expected == (
        made.count, made.dims, made.distance, made.layout, made.text_field, made.vector_field
    )  # fmt: skip


def test_a_target_name_that_exists_is_one_line_and_leaves_it_alone(source: Source) -> None:
    target = with_target(source)
    with pytest.raises(GuardError) as error:
        source.reindex.create_target(target, dims=DIMS, info=source.store.describe())
    assert source.named("__t") in one_line(error)
    store = open_store(target)
    assert store.describe().count == ROWS
    store.close()


def test_switch_then_back_serves_the_whole_target_then_the_whole_source(
    source: Source,
) -> None:
    target = with_target(source)
    target_store = open_store(target)
    fresh = make_batch(ROWS, DIMS, seed=5)
    target_store.upsert(replace(fresh, texts=tuple(f"new {i}" for i in fresh.ids)))
    target_store.close()
    switch = planned(source, target)
    assert source.reindex.serves_target(switch) is False
    source.reindex.switch(switch, to_target=True)
    assert source.reindex.serves_target(switch) is True
    count, texts = served(source, switch)
    assert (ROWS, [f"new {i}" for i in source.batch.ids]) == (count, texts)
    source.reindex.switch(switch, to_target=False)
    assert source.reindex.serves_target(switch) is False
    assert (ROWS, list(source.batch.texts)) == served(source, switch)


def test_cleanup_refuses_to_drop_what_readers_are_served(source: Source) -> None:
    target = with_target(source)
    switch = planned(source, target)
    source.reindex.switch(switch, to_target=True)
    live, dropped = source.reindex.plan_cleanup(switch, target, cut_over=True)
    assert source.reindex.serves_target(switch) is True
    served_now = str(switch.get("alias") or switch["table"])
    for name in {live, served_now, str(switch.get("new") or switch["table"])}:
        with pytest.raises(ReindexError) as error:
            source.reindex.drop(name, live=None)
        one_line(error)
    assert (ROWS, list(source.batch.texts)) == served(source, switch)
    source.reindex.drop(dropped, live=live)
    source.reindex.drop(dropped, live=live)  # gone already: nothing to do
    assert (ROWS, list(source.batch.texts)) == served(source, switch)


def test_a_vanished_target_is_one_line_and_readers_stay_on_the_source(source: Source) -> None:
    target = with_target(source)
    switch = planned(source, target)
    open_store(target).drop()
    with pytest.raises(GuardError) as error:
        source.reindex.switch(switch, to_target=True)
    one_line(error)
    assert source.reindex.serves_target(switch) is False
