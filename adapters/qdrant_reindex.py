"""The re-index on Qdrant (``guard.stores.ReindexStore``): a new collection, an alias.

The target is a new collection with the source's vector names, distance, HNSW settings
and payload indexes; readers query through an alias, switched in one
``update_collection_aliases`` call. When the source URI names an alias, that alias is
switched; when it names a real collection, the operator names the alias the application
queries (created if missing).

One tenant of a shared collection (``filter=``): the other points are copied into the
target unchanged, and again just before the alias switch; Qdrant has no transaction
across collections, so a write that lands between that copy and the switch is not
carried over (README, "One collection at a time"). Points are compared by payload and
vector; Qdrant re-normalises cosine vectors on every write, which moves some of them by
one float32 rounding step, so those compare within ``COSINE_RTOL``.

Every client call goes through ``QdrantStore.translate_errors``, the adapter's one error map.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from qdrant_client import models

from guard.adapters.qdrant import QdrantStore
from guard.closing import Closing
from guard.errors import ReindexError
from guard.records import Changes, RecordBatch, StoreInfo
from guard.stores import LastWrites, OthersCheck, Switch
from guard.streams import Row, differences, merge, rows
from guard.uri import ParsedURI, parse

PAGE = 256
COSINE_RTOL = 1e-6  # Qdrant's re-normalisation moves a unit vector by ~1e-7 at most
EXAMPLES = 5  # differing points named in a check


def _collection(uri: str) -> str:
    """The collection (or alias) a URI of this store names (the store's own parsing)."""
    return QdrantStore(parse(uri)).collection


class QdrantReindex(Closing):
    """One Qdrant collection's re-index: new collection, alias switch, drop."""

    def __init__(self, parsed: ParsedURI) -> None:
        self._parsed = parsed
        self._store = QdrantStore(parsed)
        self.uri = self._store.uri

    def name(self) -> str:
        return self._store.collection

    def renamed(self, name: str) -> str:
        if self._parsed.scheme == "qdrant+local":
            return self._parsed.with_param("collection", name)
        return self._parsed.with_path(f"/{name}")

    def selects_part(self) -> bool:
        return "filter" in self._parsed.params

    def close(self) -> None:
        self._store.close()

    # --- the target ----------------------------------------------------------------------

    def create_target(self, target_uri: str, *, dims: int, info: StoreInfo) -> None:
        store, target = self._store, QdrantStore(parse(target_uri))
        client, new = store.client, target.collection
        try:
            with target.translate_errors("cannot create the target collection"):
                if client.collection_exists(new):
                    raise ReindexError(f"the target collection {new!r} already exists")
                config = client.get_collection(store.collection)
                vectors = config.config.params.vectors
                if isinstance(vectors, models.VectorParams):
                    vectors_config: Any = vectors.model_copy(update={"size": dims})
                else:
                    vectors_config = {
                        key: value.model_copy(update={"size": dims})
                        for key, value in (vectors or {}).items()  # None: sparse only
                    }
                hnsw = config.config.hnsw_config
                client.create_collection(
                    new,
                    vectors_config=vectors_config,
                    hnsw_config=models.HnswConfigDiff(**hnsw.model_dump()) if hnsw else None,
                    on_disk_payload=config.config.params.on_disk_payload,
                )
                for field, schema in (config.payload_schema or {}).items():
                    client.create_payload_index(new, field, field_schema=schema.data_type)
                target.use_wal_journal()
        finally:
            target.close()

    # --- the points outside a selection --------------------------------------------------

    def copy_others(self, live_uri: str, into_uri: str) -> int:
        live, into = QdrantStore(parse(live_uri)), QdrantStore(parse(into_uri))
        try:
            writes: list[models.PointStruct] = []
            deletes: list[Any] = []
            changed = 0
            for left, right in _pairs(live, into):
                changed += 1
                if left is None:
                    assert right is not None
                    deletes.append(right.id)
                else:
                    vector, payload = left.payload["vector"], left.payload["payload"]
                    writes.append(models.PointStruct(id=left.id, vector=vector, payload=payload))
                if len(writes) >= PAGE or len(deletes) >= PAGE:
                    _write(into, writes, deletes)
            _write(into, writes, deletes)
        finally:
            into.close()
            live.close()
        return changed

    def check_others(self, live_uri: str, into_uri: str) -> OthersCheck:
        live, into = QdrantStore(parse(live_uri)), QdrantStore(parse(into_uri))
        try:
            result = OthersCheck()
            for left, right in _pairs(live, into):
                result.count += 1
                point = left or right
                if point is not None and len(result.differ) < EXAMPLES:
                    result.differ.append(point.id)
            with live.translate_errors():
                others = live.others()
                result.records = live.client.count(live.collection, count_filter=others).count
        finally:
            into.close()
            live.close()
        return result

    def repair(self, live_uri: str, batch: RecordBatch) -> int:
        """Qdrant has no conditional write: the points still holding the texts are read,
        then rewritten with their payloads (a write between the two is overwritten)."""
        with QdrantStore(parse(live_uri)) as live:
            held = live.fetch(list(batch.ids), with_payload=True)
            now = dict(zip(held.ids, zip(held.texts, held.payloads, strict=True), strict=True))
            keep = [
                i for i, (record_id, text) in enumerate(zip(batch.ids, batch.texts, strict=True))
                if record_id in now and now[record_id][0] == text
            ]  # fmt: skip
            chosen = batch.take(keep)
            live.upsert(
                RecordBatch(
                    chosen.ids, chosen.texts, chosen.vectors,
                    tuple(dict(now[i][1]) for i in chosen.ids),
                )
            )  # fmt: skip
        return len(keep)

    def changes(self, live_uri: str, into_uri: str) -> Changes:
        """One merged scan of both collections (Qdrant cannot join them on its side)."""
        with QdrantStore(parse(live_uri)) as live, QdrantStore(parse(into_uri)) as into:
            return differences(
                rows(live.scan(batch_size=PAGE, with_payload=True)),
                rows(into.scan(batch_size=PAGE, with_payload=True)),
            )

    # --- switching -----------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        """Every alias of the store's Qdrant and the collection it points at."""
        with self._store.translate_errors():
            found = self._store.client.get_aliases().aliases
        return {a.alias_name: a.collection_name for a in found}

    def point_alias(self, alias: str, to: str) -> str | None:
        """Point ``alias`` at collection ``to`` in one atomic call; returns the collection
        it pointed at before (None when it did not exist)."""
        before = self.aliases().get(alias)
        operations: list[Any] = []
        if before is not None:
            operations.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            )
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=to, alias_name=alias)
            )
        )
        with self._store.translate_errors():
            self._store.client.update_collection_aliases(change_aliases_operations=operations)
        return before

    def switch_notes(self) -> list[str]:
        name = self.name()
        if name in self.aliases():
            return []
        return [
            f"{name!r} is a real collection: readers can only switch atomically through an "
            f"alias, so give cutover --alias NAME, the alias your application queries"
        ]

    def plan_switch(self, target_uri: str, *, kept: str, alias: str | None) -> Switch:
        """Which alias to point at the target, and at what it points now (the source)."""
        name, new = self.name(), _collection(target_uri)
        aliases = self.aliases()
        points_at = aliases.get(name)
        if points_at is not None:  # the source URI names the alias the application queries
            if alias not in (None, name):
                raise ReindexError(f"the source {name!r} is itself an alias; leave out --alias")
            if points_at == new:
                raise ReindexError(f"alias {name!r} already points at the target {new!r}")
            return {"kind": "qdrant_alias", "alias": name, "old": points_at, "new": new}
        if alias is None:
            raise ReindexError(
                f"{name!r} is a real collection, not an alias, so readers cannot be switched "
                f"atomically; give --alias NAME, the alias your application queries (it will "
                f"point at {new!r}; rollback points it at {name!r})"
            )
        current = aliases.get(alias)
        if current not in (None, name):
            raise ReindexError(f"alias {alias!r} points at {current!r}, not the source {name!r}")
        return {"kind": "qdrant_alias", "alias": alias, "old": name, "new": new}

    def serves_target(self, switch: Switch) -> bool:
        points_at = self.aliases().get(switch["alias"])
        if points_at == switch["new"]:
            return True
        if points_at in (None, switch["old"]):
            return False
        raise ReindexError(
            f"alias {switch['alias']!r} points at {points_at!r}, neither the source "
            f"{switch['old']!r} nor the target {switch['new']!r}; fix it by hand"
        )

    def switch(self, switch: Switch, *, to_target: bool, settle: LastWrites | None = None) -> None:
        """With one tenant re-indexed, its other points are copied once more first: into
        the target at cutover, back into the source at rollback (writes since stay).
        ``settle`` runs just before the alias moves: Qdrant cannot hold writers off, so a
        write landing between its last read and the alias switch stays behind (README)."""
        old, new = self.renamed(switch["old"]), self.renamed(switch["new"])
        if settle is not None:
            settle.ahead()
            settle()
        if self.selects_part() and to_target:
            self.copy_others(old, new)
        elif self.selects_part():
            self.copy_others(new, old)
        self.point_alias(switch["alias"], switch["new" if to_target else "old"])

    def shown(self, switch: Switch, *, cut_over: bool) -> tuple[str, str]:
        live, kept = ("new", "old") if cut_over else ("old", "new")
        return f"alias {switch['alias']} -> {switch[live]}", str(switch[kept])

    def locations(self, switch: Switch, target_uri: str) -> tuple[str, str]:
        return self.renamed(switch["old"]), target_uri

    # --- cleanup -------------------------------------------------------------------------

    def plan_cleanup(
        self, switch: Switch | None, target_uri: str, *, cut_over: bool
    ) -> tuple[str, str]:
        if cut_over and switch:
            live, dropped = str(switch["new"]), str(switch["old"])
        else:
            live, dropped = self.name(), _collection(target_uri)
        self._refuse_served(dropped)
        return live, dropped

    def _refuse_served(self, name: str) -> None:
        """Readers query aliases: a collection an alias points at, or an alias itself, is
        served and never dropped (checked at plan time and again at the drop itself)."""
        aliases = self.aliases()
        if name in aliases:
            raise ReindexError(f"{name!r} is the alias readers query; not dropping it")
        serving = sorted(a for a, c in aliases.items() if c == name)
        if serving:
            raise ReindexError(f"alias {serving[0]!r} serves {name!r}; not dropping it")

    def drop(self, name: str, *, live: str | None) -> None:
        self._refuse_served(name)
        with self._store.translate_errors():
            self._store.client.delete_collection(name)


def _others(store: QdrantStore) -> Iterator[Row]:
    """The points outside the selection in id order, with payloads and every vector."""
    offset: Any = None
    while True:
        with store.translate_errors():
            points, offset = store.client.scroll(
                store.collection,
                scroll_filter=store.others(),
                offset=offset,
                limit=PAGE,
                with_payload=True,
                with_vectors=True,
            )
        for point in points:
            point_id = point.id if isinstance(point.id, int) else str(point.id)
            yield Row(point_id, None, {"payload": point.payload or {}, "vector": point.vector})
        if offset is None:
            return


def _cosine_vectors(store: QdrantStore) -> dict[str | None, bool]:
    """Which vectors (None: the unnamed one) Qdrant re-normalises on write."""
    with store.translate_errors():
        vectors = store.client.get_collection(store.collection).config.params.vectors
    if isinstance(vectors, models.VectorParams):
        return {None: vectors.distance == models.Distance.COSINE}
    return {name: p.distance == models.Distance.COSINE for name, p in (vectors or {}).items()}


def _same_vector(left: Any, right: Any, cosine: bool) -> bool:
    if not isinstance(left, list) or not isinstance(right, list):
        return bool(left == right)  # sparse or multi-vectors: exactly equal
    a, b = np.asarray(left, np.float32), np.asarray(right, np.float32)
    if a.shape != b.shape:
        return False
    return bool(np.allclose(a, b, rtol=COSINE_RTOL, atol=0.0)) if cosine else bool((a == b).all())


def _same_point(left: Row, right: Row, cosine: dict[str | None, bool]) -> bool:
    if left.payload["payload"] != right.payload["payload"]:
        return False
    a, b = left.payload["vector"], right.payload["vector"]
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(
            _same_vector(a[name], b[name], cosine.get(name, False)) for name in a
        )
    return _same_vector(a, b, cosine.get(None, False))


def _pairs(live: QdrantStore, into: QdrantStore) -> Iterator[tuple[Row | None, Row | None]]:
    """(live point, target point) pairs of the points outside the selection that differ."""
    cosine = _cosine_vectors(live)
    for left, right in merge(_others(live), _others(into)):
        if left is None or right is None or not _same_point(left, right, cosine):
            yield left, right


def _write(store: QdrantStore, writes: list[Any], deletes: list[Any]) -> None:
    """Apply and clear the pending writes and deletes. Points are written with the
    vectors and payloads read (not through ``upsert``, which writes the text field)."""
    with store.translate_errors():
        if writes:
            store.client.upsert(store.collection, writes)
        if deletes:
            store.client.delete(store.collection, models.PointIdsList(points=deletes))
    writes.clear()
    deletes.clear()
