"""Qdrant through qdrant-client: a server over HTTP(S), or the embedded local mode.

    qdrant+http://HOST:6333/COLLECTION
    qdrant+https://HOST:6333/COLLECTION?api_key_env=QDRANT_API_KEY
    qdrant+local:PATH?collection=NAME

Options: ``vector=`` (named vector), ``text_field=``, ``api_key_env=``,
``filter=FIELD:VALUE`` (points whose payload field equals VALUE; ``meta.tenant`` for a
nested key) and ``embed_text=TEMPLATE``; any other is refused. Point ids are
unsigned integers or UUIDs (Qdrant allows nothing else); UUIDs come back as strings.
Every driver error leaves through ``QdrantStore.translate_errors`` as a ``StoreError``.

This module is the store itself: its options, error map, reads and writes. The clients
it connects through are ``guard.adapters.qdrant_clients``, what the collection's config
and payloads say ``guard.adapters.qdrant_collection``, the point reads in id order
``guard.adapters.qdrant_points``, how a sample is drawn ``guard.adapters.qdrant_sampling``,
the re-index ``guard.adapters.qdrant_reindex``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import QdrantException
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from qdrant_client.local.persistence import STORAGE_FILE_NAME

from guard.adapters import qdrant_sampling
from guard.adapters.layouts import EmbedTemplate, PayloadLayout
from guard.adapters.qdrant_clients import acquire_local, release_local, server_client, turns
from guard.adapters.qdrant_collection import (
    DISTANCES,
    QDRANT_DISTANCES,
    detect_layout,
    listed,
    local_collections,
    vector_params,
)
from guard.adapters.qdrant_points import Points, normal_id, payload_filter
from guard.closing import Closing
from guard.errors import ConfigError, GuardError, StoreError
from guard.records import (
    Distance,
    RecordBatch,
    RecordId,
    Sample,
    StoreInfo,
    Vectors,
    as_vectors,
)
from guard.uri import ParsedURI, parse_filter, refuse_unknown

UPSERT_BATCH = 256
LAYOUT_PROBE = 16  # points read to detect the payload layout
OPTIONS = ("vector", "vector_column", "text_field", "text_column", "filter", "embed_text")
LOCAL_OPTIONS = (*OPTIONS, "collection")
SERVER_OPTIONS = (*OPTIONS, "api_key_env")
# Points up to which sample() lists every id (exact, and cheap); read here at each call,
# where tests and bench/sample_bias.py lower it.
ID_LIST_MAX = 100_000


class QdrantStore(Closing):
    """One Qdrant collection as a ``guard.stores.VectorStore``."""

    def __init__(self, parsed: ParsedURI) -> None:
        self.uri = parsed.redacted
        params = parsed.params
        local = parsed.scheme == "qdrant+local"
        refuse_unknown(parsed, LOCAL_OPTIONS if local else SERVER_OPTIONS)
        self._vector_name: str | None = params.get("vector") or params.get("vector_column")
        self._text_field = params.get("text_field") or params.get("text_column")
        template = params.get("embed_text")
        self._template = EmbedTemplate.parse(template) if template is not None else None
        self._filter_text = params.get("filter")
        self._filter: models.Filter | None = None
        if self._filter_text is not None:
            self._filter = payload_filter(*parse_filter(self._filter_text))
        self._local_path: Path | None = None
        self._url = ""
        self._api_key: str | None = None
        self._key_env: str | None = None
        if parsed.scheme == "qdrant+local":
            location = parsed.netloc + parsed.path
            self.collection = params.get("collection", "")
            if not location:
                raise ConfigError(f"qdrant+local needs a folder: qdrant+local:PATH ({self.uri})")
            self._local_path = Path(location).expanduser().resolve()
            self._turn: AbstractContextManager[Any] = turns(self._local_path)
        else:
            self.collection = parsed.path.strip("/")
            self._turn = nullcontext()
            self._url = f"{parsed.scheme.removeprefix('qdrant+')}://{parsed.netloc}"
            self._key_env = params.get("api_key_env")
            # A key goes over plain http only when the URI asks for one explicitly.
            if self._key_env is None and parsed.scheme == "qdrant+https":
                self._key_env = "QDRANT_API_KEY"
            self._api_key = os.environ.get(self._key_env) if self._key_env else None
        self._client: QdrantClient | None = None
        self._layout: PayloadLayout | None = None
        if not self.collection:
            raise ConfigError(self._no_collection_named())

    def _no_collection_named(self) -> str:
        """What to add to a URI that names no collection, with those there to pick from
        (a local folder's meta.json; a server is asked, briefly, since this fails anyway)."""
        if self._local_path is not None:
            return (
                f"no Qdrant collection named in {self.uri}: add ?collection=NAME"
                f"{listed(local_collections(self._local_path))}"
            )
        return (
            f"no Qdrant collection named in {self.uri}: add /NAME to the URL"
            f"{listed(self._server_collections())}"
        )

    def _server_collections(self) -> list[str] | None:
        try:
            with closing(server_client(self._url, self._api_key)) as client:
                return [found.name for found in client.get_collections().collections]
        except (QdrantException, UnexpectedResponse, ResponseHandlingException, httpx.HTTPError,
                ValueError, RuntimeError):  # fmt: skip
            return None

    # --- connection and errors -----------------------------------------------------------

    @property
    def client(self) -> QdrantClient:
        return self._connect(create=False)

    def _connect(self, *, create: bool) -> QdrantClient:
        """The client; only writes (``create``, ``drop``) may make a new local folder: a
        read of a mistyped ``qdrant+local:`` folder is an error."""
        if self._client is None:
            if self._local_path is not None and not create and not self._local_path.is_dir():
                raise StoreError(f"no Qdrant local folder at {self._local_path}", uri=self.uri)
            with self.translate_errors():
                if self._local_path is not None:
                    self._client = acquire_local(self._local_path)
                else:
                    self._client = server_client(self._url, self._api_key)
        return self._client

    @contextmanager
    def translate_errors(self, what: str | None = None) -> Iterator[None]:
        """Turn qdrant-client's and httpx's errors into one-line ``StoreError``s without
        the API key, led by ``what`` (the step that failed) when given. Every client call
        of this store and of its re-index (guard.adapters.qdrant_reindex) goes through
        here: in local mode it also waits for this folder's turn. The guard's own errors
        pass unchanged."""
        with self._turn:
            try:
                yield
            except GuardError:
                raise
            except UnexpectedResponse as exc:
                raise self._fail(what, self._http_message(exc)) from exc
            except QdrantException as exc:  # rate limits and the like
                raise self._fail(what, f"Qdrant: {self._one_line(exc)}") from exc
            except (ResponseHandlingException, httpx.HTTPError) as exc:
                source = exc.source if isinstance(exc, ResponseHandlingException) else exc
                if isinstance(source, httpx.TransportError):
                    message = f"Qdrant unreachable ({type(source).__name__})"
                else:
                    message = f"unexpected answer from Qdrant: {self._one_line(source)}"
                raise self._fail(what, message) from exc
            except (ValueError, RuntimeError) as exc:  # local mode, id and payload validation
                raise self._fail(what, self._one_line(exc)) from exc

    def _fail(self, what: str | None, message: str) -> StoreError:
        return StoreError(f"{what}: {message}" if what else message, uri=self.uri)

    def _http_message(self, exc: UnexpectedResponse) -> str:
        if exc.status_code in (401, 403):
            where = f"${self._key_env}" if self._key_env else "api_key_env="
            return f"Qdrant refused the API key (HTTP {exc.status_code}); check {where}"
        try:
            detail = str(exc.structured()["status"]["error"])
        except (ValueError, KeyError, TypeError):
            return f"HTTP {exc.status_code} from a server that does not answer like Qdrant"
        if exc.status_code == 404:
            return f"collection {self.collection!r} not found"
        return f"Qdrant answered HTTP {exc.status_code}: {self._one_line(detail)}"

    def _one_line(self, error: object) -> str:
        lines = str(error).strip().splitlines()
        text = lines[0] if lines else type(error).__name__
        return text.replace(self._api_key, "***") if self._api_key else text

    # --- reading -------------------------------------------------------------------------

    def _vector_params(self) -> tuple[models.VectorParams, str | None]:
        """The vector this URI reads; the only named vector becomes the one it names.
        Every read asks this first: a missing collection is named here, with the
        collections there are."""
        with self.translate_errors():
            try:
                config = self.client.get_collection(self.collection).config.params.vectors
            except (UnexpectedResponse, ValueError) as exc:  # server 404; local mode
                self._refuse_missing_collection(exc)
                raise
        params, self._vector_name = vector_params(config, self._vector_name, uri=self.uri)
        return params, self._vector_name

    def _refuse_missing_collection(self, exc: Exception) -> None:
        """A StoreError listing the collections there, when ``exc`` came of asking for
        one that is not among them; nothing where they cannot be listed."""
        if isinstance(exc, UnexpectedResponse) and exc.status_code != 404:
            return
        try:
            names = [found.name for found in self.client.get_collections().collections]
        except (QdrantException, UnexpectedResponse, ResponseHandlingException, httpx.HTTPError,
                ValueError, RuntimeError):  # fmt: skip
            return
        if self.collection not in names:
            message = f"collection {self.collection!r} not found{listed(names)}"
            raise StoreError(message, uri=self.uri) from exc

    def _points(self) -> Points:
        """The points this URI selects, read with the vector known so far (callers ask
        ``_vector_params`` first)."""
        return Points(self, self._filter, self._vector_name)

    def others(self) -> models.Filter | None:
        """The points this URI does not select (None: it selects them all): a re-index of
        one tenant copies them unchanged."""
        return None if self._filter is None else models.Filter(must_not=[self._filter])

    def _text_layout(self, hint: Sequence[Mapping[str, Any]] = ()) -> PayloadLayout:
        """Detected from the first stored points; an empty collection takes the layout of
        the payloads about to be written (``hint``), else plain ``text``."""
        if self._layout is not None:
            return self._layout
        with self.translate_errors():
            points, _ = self.client.scroll(
                self.collection, scroll_filter=self._points().where(), limit=LAYOUT_PROBE
            )
        stored = [p.payload or {} for p in points]
        layout = detect_layout(stored, hint, self._text_field, self._template, uri=self.uri)
        if stored:
            self._layout = layout
        return layout

    def describe(self) -> StoreInfo:
        """Dims and distance from the collection config; count 0 for an empty collection
        (so a fresh re-index target can be described); ``sample`` is what refuses it."""
        params, name = self._vector_params()
        layout = self._text_layout()
        selected = self._points()
        count = selected.count()
        without_text: int | None = None
        if layout.name != "llamaindex" and layout.template is None:  # built, not filterable
            key = models.PayloadField(key=layout.field)
            without_text = selected.count(
                models.Filter(
                    should=[
                        models.IsEmptyCondition(is_empty=key),
                        models.IsNullCondition(is_null=key),
                        models.FieldCondition(key=layout.field, match=models.MatchValue(value="")),
                    ]
                )
            )
        first = selected.first()
        details: dict[str, Any] = {"collection": self.collection}
        if self._filter_text is not None:
            details["filter"] = self._filter_text
        if layout.template is not None:
            details["embed_text"] = layout.template.source
        if first:
            details["id_type"] = "int" if isinstance(first[0].id, int) else "uuid"
        return StoreInfo(
            uri=self.uri,
            count=count,
            dims=params.size,
            distance=DISTANCES[params.distance],
            layout=layout.name,
            text_field=layout.field,
            vector_field=name,
            records_without_text=without_text,
            details=details,
        )

    def _batch(self, points: Sequence[Any], dims: int, with_payload: bool) -> RecordBatch:
        layout = self._text_layout()
        if not points:
            return RecordBatch.empty(dims)
        vectors = [p.vector[self._vector_name] if self._vector_name else p.vector for p in points]
        return RecordBatch(
            ids=tuple(p.id for p in points),
            texts=tuple(layout.read(p.payload) for p in points),
            vectors=as_vectors(vectors, dims=dims),
            payloads=tuple(dict(p.payload or {}) for p in points) if with_payload else (),
        )

    def sample(self, n: int, *, seed: int) -> Sample:
        """Up to ``n`` distinct points drawn uniformly, in random order; never reads every
        vector (README, "How the sample is drawn"):
        - ``uniform_id_list``: collections of up to ``ID_LIST_MAX`` points (or ``2 n``):
          every id scrolled without payload or vector, ``n`` of them drawn with the seed,
          then fetched;
        - ``uniform_ids``: larger collections whose integer ids fill at least a tenth of
          their range: random ids drawn with the seed, fetched in batches, kept where a
          point exists;
        - ``qdrant_random``: otherwise (UUIDs, sparse integers), Qdrant's own uniform
          random sample (``SampleQuery(sample=Sample.RANDOM)``, Qdrant 1.11 or later).
          It takes no seed, so this draw is not reproducible. (Keyset probes at seeded
          positions would be, but they draw a point by the id gap before it: a burst of
          time-ordered UUIDs holding 30% of a collection came out at 4% of the sample,
          bench/sample_bias.py.)
        A collection mixing both id kinds is drawn from the kind of its smallest id.
        """
        params, _ = self._vector_params()
        selected = self._points()
        count = selected.count()
        if count == 0:
            raise StoreError("store is empty", uri=self.uri)
        rng = np.random.default_rng(seed % 2**64)  # numpy wants seeds >= 0
        if count <= max(ID_LIST_MAX, 2 * n):
            ids = qdrant_sampling.all_ids(selected)
            picks = [ids[i] for i in rng.choice(len(ids), size=min(n, len(ids)), replace=False)]
            return Sample.of(self._retrieve(picks, with_payload=True), "uniform_id_list")
        span = qdrant_sampling.dense_id_span(selected, count)
        if span is not None:
            points = qdrant_sampling.draw_ids(selected, rng, n, *span, count)
            return Sample.of(self._batch(points, params.size, True), "uniform_ids")
        points = qdrant_sampling.qdrant_random(selected, n)
        return Sample.of(self._batch(points, params.size, True), "qdrant_random")

    def scan(
        self, *, batch_size: int, after: RecordId | None = None, with_payload: bool = False
    ) -> Iterator[RecordBatch]:
        """Ascending ids by Qdrant's own keyset cursor (scroll's next_page_offset)."""
        params, _ = self._vector_params()
        for points in self._points().pages(after, batch_size):
            yield self._batch(points, params.size, with_payload)

    def fetch(self, ids: Sequence[RecordId], *, with_payload: bool = False) -> RecordBatch:
        return self._retrieve(ids, with_payload=with_payload)

    def _retrieve(self, ids: Sequence[RecordId], *, with_payload: bool) -> RecordBatch:
        """The points with these ids, in the order given (unknown ids left out)."""
        params, _ = self._vector_params()
        with self.translate_errors():
            wanted = list(dict.fromkeys(normal_id(i) for i in ids))
        found = self._points().get(wanted)
        by_id = {p.id: p for p in found}
        order = [by_id[i] for i in wanted if i in by_id]
        return self._batch(order, params.size, with_payload)

    def search(self, vectors: Vectors, k: int) -> list[list[RecordId]]:
        params, name = self._vector_params()
        queries = as_vectors(vectors, dims=params.size)
        where = self._points().where()
        requests = [
            models.QueryRequest(
                query=q.tolist(), using=name, filter=where, limit=k, with_payload=False
            )
            for q in queries
        ]
        with self.translate_errors():
            answers = self.client.query_batch_points(self.collection, requests) if requests else []
        return [[p.id if isinstance(p.id, int) else str(p.id) for p in a.points] for a in answers]

    # --- writing -------------------------------------------------------------------------

    def create(self, *, dims: int, distance: Distance, like: StoreInfo | None = None) -> None:
        """A collection with the same distance (and vector name, from ``vector=``).

        ``like`` is not needed: payloads copied from the source keep its layout."""
        config = models.VectorParams(size=dims, distance=QDRANT_DISTANCES[distance])
        self._connect(create=True)
        with self.translate_errors():
            if self.client.collection_exists(self.collection):
                raise StoreError(f"collection {self.collection!r} already exists", uri=self.uri)
            self.client.create_collection(
                self.collection,
                vectors_config={self._vector_name: config} if self._vector_name else config,
            )
        self._layout = None
        self.use_wal_journal()

    def use_wal_journal(self) -> None:
        """Put a collection the guard created in local mode in SQLite's WAL journal.

        qdrant-client commits each point on its own; with the default rollback journal a
        commit creates, syncs and deletes a journal file, with WAL it appends and syncs
        once. Same durability, half the CPU per point (2,000 points: 0.81 s -> 0.43 s),
        which a re-index's writer otherwise takes from the engine. Only for collections
        the guard creates: a source is never touched. No-op on a server."""
        if self._local_path is None:
            return
        storage = self._local_path / "collection" / self.collection / STORAGE_FILE_NAME
        if not storage.exists():
            return
        try:
            with closing(sqlite3.connect(storage)) as db:
                db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            message = f"cannot set the local collection's journal: {exc}"
            raise StoreError(message, uri=self.uri) from exc

    def upsert(self, batch: RecordBatch) -> None:
        """Points by id (so repeating a batch changes nothing); the text is written where
        the layout keeps it, next to the batch's payload."""
        if not len(batch):
            return
        payloads: Sequence[Mapping[str, Any]] = batch.payloads or [{}] * len(batch)
        layout = self._text_layout(batch.payloads)
        points = [
            models.PointStruct(
                id=point_id,
                vector={self._vector_name: vector.tolist()}
                if self._vector_name
                else vector.tolist(),
                payload=layout.write(payload, text),
            )
            for point_id, text, vector, payload in zip(
                batch.ids, batch.texts, batch.vectors, payloads, strict=True
            )
        ]
        with self.translate_errors():
            for start in range(0, len(points), UPSERT_BATCH):
                self.client.upsert(self.collection, points[start : start + UPSERT_BATCH])

    def delete(self, ids: Sequence[RecordId]) -> None:
        if not ids:
            return
        with self.translate_errors():
            self.client.delete(self.collection, models.PointIdsList(points=list(ids)))

    def drop(self) -> None:
        """Delete the collection; dropping one that does not exist is a no-op."""
        client = self._connect(create=True)
        with self.translate_errors():
            client.delete_collection(self.collection)
        self._layout = None

    def close(self) -> None:
        if self._client is None:
            return
        if self._local_path is not None:
            release_local(self._local_path)
        else:
            self._client.close()
        self._client = None
