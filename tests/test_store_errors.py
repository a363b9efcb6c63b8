"""Every store failure comes out as one line naming the store, with no secret in it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures_stores import STORE_KINDS, make_batch
from qdrant_client import QdrantClient, models

from guard.errors import ConfigError, GuardError, StoreError
from guard.records import RecordBatch
from guard.stores import open_store

PASSWORD = "S3cret-pw-123"
ENV_PASSWORD = "Env-S3cret-456"
API_KEY = "qdrant-key-789"
QDRANT_KINDS = [kind for kind in STORE_KINDS if kind.startswith("qdrant")]


def assert_clean(error: GuardError, *secrets: str) -> None:
    """One line, and no secret anywhere in it."""
    message = str(error)
    assert message and "\n" not in message
    for secret in (PASSWORD, ENV_PASSWORD, API_KEY, *secrets):
        assert secret not in message


def with_option(uri: str, key: str, value: str) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}{key}={value}"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def filled_uri(new_store_uri: Callable[..., str]) -> str:
    """The URI of a store of the test's kind holding a few records."""
    uri = new_store_uri()
    store = open_store(uri)
    store.create(dims=4, distance="cosine")
    store.upsert(make_batch(5, 4))
    store.close()
    return uri


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(f"milvus://admin:{PASSWORD}@localhost:19530/docs")
    assert "milvus" in str(caught.value)
    assert_clean(caught.value)


def test_opening_a_store_connects_to_nothing() -> None:
    """Opening is lazy: nothing reaches a listening server until the store is used."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        open_store(f"postgresql://guard@127.0.0.1:{port}/db?table=t")
        open_store(f"qdrant+http://127.0.0.1:{port}/docs")
        with pytest.raises(BlockingIOError):
            server.accept()
        with socket.create_connection(("127.0.0.1", port)):  # the probe itself can see one
            server.setblocking(True)
            server.settimeout(5)
            server.accept()[0].close()


def test_missing_collection_or_table_is_a_store_error(new_store_uri: Callable[..., str]) -> None:
    uri = new_store_uri()
    with pytest.raises(StoreError, match="not found") as caught:
        open_store(uri).describe()
    assert caught.value.uri == open_store(uri).uri
    assert_clean(caught.value)


def test_a_missing_text_field_or_column_is_named(filled_uri: str) -> None:
    option = "text_field" if filled_uri.startswith("qdrant") else "text_column"
    with pytest.raises(StoreError, match="'nope' not found") as caught:
        open_store(with_option(filled_uri, option, "nope")).describe()
    assert_clean(caught.value)


def test_a_missing_vector_is_named(filled_uri: str) -> None:
    option = "vector" if filled_uri.startswith("qdrant") else "vector_column"
    with pytest.raises(StoreError, match="'nope'") as caught:
        open_store(with_option(filled_uri, option, "nope")).sample(2, seed=0)
    assert_clean(caught.value)


def test_empty_store_describes_as_count_zero_and_refuses_to_sample(
    new_store_uri: Callable[..., str],
) -> None:
    """The choice: describe works (a fresh re-index target is empty), sample raises."""
    store = open_store(new_store_uri())
    store.create(dims=4, distance="cosine")
    assert store.describe().count == 0
    with pytest.raises(StoreError, match="store is empty") as caught:
        store.sample(10, seed=0)
    assert_clean(caught.value)
    store.close()


def test_writing_vectors_of_the_wrong_size_is_a_store_error(filled_uri: str) -> None:
    store = open_store(filled_uri)
    with pytest.raises(StoreError) as caught:
        store.upsert(make_batch(2, 6, start=100))
    assert_clean(caught.value)
    store.close()


# --- pgvector ------------------------------------------------------------------------------


def test_pgvector_refuses_a_column_that_is_not_a_vector(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute("CREATE TABLE items (id int PRIMARY KEY, text text, emb vector(4))")
    uri = f"{pg_dsn}&schema={pg_schema}&table=items&vector_column=text"
    with pytest.raises(StoreError, match="'text' is not a vector") as caught:
        open_store(uri).describe()
    assert_clean(caught.value)


def test_pgvector_wants_vector_column_when_there_are_several(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute("CREATE TABLE items (id int PRIMARY KEY, text text, a vector(4), b vector(4))")
    with pytest.raises(StoreError, match="vector_column=") as caught:
        open_store(f"{pg_dsn}&schema={pg_schema}&table=items").describe()
    assert_clean(caught.value)


def test_pgvector_unreachable_server_fails_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGPASSWORD", ENV_PASSWORD)
    store = open_store(f"postgresql://guard:{PASSWORD}@127.0.0.1:{closed_port()}/db?table=t")
    with pytest.raises(StoreError, match="PostgreSQL") as caught:
        store.describe()
    assert "guard:***@" in str(caught.value)
    assert_clean(caught.value)


def test_pgvector_without_a_table_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="table=") as caught:
        open_store(f"postgresql://guard:{PASSWORD}@db.example/vectors")
    assert_clean(caught.value)


# --- Qdrant --------------------------------------------------------------------------------


def test_qdrant_unreachable_server_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMG_TEST_KEY", API_KEY)
    store = open_store(f"qdrant+http://127.0.0.1:{closed_port()}/docs?api_key_env=VMG_TEST_KEY")
    with pytest.raises(StoreError, match="unreachable") as caught:
        store.describe()
    assert_clean(caught.value)


class CannedAnswer(BaseHTTPRequestHandler):
    """Answers every request with one status and body; keeps the API keys it was sent."""

    status = 200
    body = b""
    keys_seen: list[str | None]

    def do_GET(self) -> None:
        self.keys_seen.append(self.headers.get("api-key"))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_POST = do_PUT = do_GET

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        return


@pytest.fixture
def http_stand_in() -> Iterator[Callable[[int, bytes], int]]:
    """``serve(status, body)``: a local HTTP server giving that answer; returns its port.

    A stand-in for a Qdrant server: no Qdrant server binary can be installed here, so
    these tests replay the answers Qdrant gives (JSON ``{"status": {"error": ...}}``)."""
    servers: list[ThreadingHTTPServer] = []

    def serve(status: int, body: bytes) -> int:
        answer = {"status": status, "body": body, "keys_seen": KEYS_SEEN}
        handler = type("Handler", (CannedAnswer,), answer)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


KEYS_SEEN: list[str | None] = []


def qdrant_error(message: str) -> bytes:
    return json.dumps({"status": {"error": message}, "time": 0.0}).encode()


@pytest.mark.parametrize("status", [401, 403])
def test_qdrant_wrong_api_key_says_which_variable_without_the_key(
    status: int, http_stand_in: Callable[[int, bytes], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMG_TEST_KEY", API_KEY)
    port = http_stand_in(status, qdrant_error("Invalid API key or JWT"))
    store = open_store(f"qdrant+http://127.0.0.1:{port}/docs?api_key_env=VMG_TEST_KEY")
    expected = rf"refused the API key \(HTTP {status}\); check \$VMG_TEST_KEY"
    with pytest.raises(StoreError, match=expected) as caught:
        store.describe()
    assert_clean(caught.value)
    assert KEYS_SEEN[-1] == API_KEY  # api_key_env= names where the key comes from


def test_qdrant_missing_collection_on_a_server(http_stand_in: Callable[[int, bytes], int]) -> None:
    port = http_stand_in(404, qdrant_error("Not found: Collection `docs` doesn't exist!"))
    with pytest.raises(StoreError, match="collection 'docs' not found") as caught:
        open_store(f"qdrant+http://127.0.0.1:{port}/docs").describe()
    assert_clean(caught.value)


class QdrantStandIn(BaseHTTPRequestHandler):
    """A Qdrant server holding the collections ``names``: it lists them on GET
    /collections and answers 404 as Qdrant does for any other collection."""

    names: tuple[str, ...] = ()

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/collections":
            listed = [{"name": name} for name in self.names]
            status, body = 200, {"result": {"collections": listed}, "status": "ok", "time": 0}
        else:
            name = self.path.split("/")[2].split("?")[0]
            status = 404
            body = {"status": {"error": f"Not found: Collection `{name}` doesn't exist!"}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def qdrant_holding() -> Iterator[Callable[..., int]]:
    """``serve(*names)``: the port of a Qdrant stand-in holding those collections."""
    servers: list[ThreadingHTTPServer] = []

    def serve(*names: str) -> int:
        handler = type("Handler", (QdrantStandIn,), {"names": names})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_qdrant_missing_collection_lists_those_on_the_server(
    qdrant_holding: Callable[..., int],
) -> None:
    port = qdrant_holding("products", "docs_v2")
    with pytest.raises(StoreError) as caught:
        open_store(f"qdrant+http://127.0.0.1:{port}/docs").describe()
    assert str(caught.value).startswith("collection 'docs' not found (here: docs_v2, products)")
    assert_clean(caught.value)


def test_a_qdrant_server_uri_without_a_collection_says_what_to_add(
    qdrant_holding: Callable[..., int],
) -> None:
    port = qdrant_holding("products", "docs_v2")
    with pytest.raises(ConfigError, match=r"add /NAME to the URL \(here: docs_v2, products\)"):
        open_store(f"qdrant+http://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"add /NAME to the URL$"):  # nothing there to list
        open_store(f"qdrant+http://127.0.0.1:{closed_port()}/")


def test_qdrant_local_missing_collection_lists_those_in_the_folder(qdrant_dir: Path) -> None:
    client = QdrantClient(path=str(qdrant_dir))
    params = models.VectorParams(size=4, distance=models.Distance.COSINE)
    for name in ("products", "docs_v2"):
        client.create_collection(name, vectors_config=params)
    client.close()
    with pytest.raises(StoreError) as caught:
        open_store(f"qdrant+local:{qdrant_dir}?collection=docs").describe()
    assert str(caught.value).startswith("collection 'docs' not found (here: docs_v2, products)")
    with pytest.raises(ConfigError) as unnamed:
        open_store(f"qdrant+local:{qdrant_dir}")
    assert str(unnamed.value).endswith("add ?collection=NAME (here: docs_v2, products)")
    with pytest.raises(ConfigError) as empty:
        open_store(f"qdrant+local:{qdrant_dir / 'nothing'}")
    assert str(empty.value).endswith("add ?collection=NAME")


def test_a_server_that_is_not_qdrant_is_named_as_such(
    http_stand_in: Callable[[int, bytes], int],
) -> None:
    port = http_stand_in(404, b"<html>Not Found</html>")
    with pytest.raises(StoreError, match="does not answer like Qdrant") as caught:
        open_store(f"qdrant+http://127.0.0.1:{port}/docs").describe()
    assert_clean(caught.value)


@pytest.mark.parametrize("store_kind", QDRANT_KINDS)
def test_qdrant_refuses_ids_that_are_neither_integers_nor_uuids(
    new_store_uri: Callable[..., str],
) -> None:
    store = open_store(new_store_uri())
    store.create(dims=4, distance="cosine")
    batch = make_batch(1, 4)
    with pytest.raises(StoreError) as caught:
        store.upsert(RecordBatch(("not-a-uuid",), batch.texts, batch.vectors))
    assert_clean(caught.value)
    store.close()


def test_qdrant_wants_vector_when_there_are_several_named_vectors(qdrant_dir: Path) -> None:
    client = QdrantClient(path=str(qdrant_dir))
    params = models.VectorParams(size=4, distance=models.Distance.COSINE)
    client.create_collection("docs", vectors_config={"a": params, "b": params})
    client.close()
    store = open_store(f"qdrant+local:{qdrant_dir}?collection=docs")
    with pytest.raises(StoreError, match=r"pick one with vector= \(has: a, b\)") as caught:
        store.describe()
    assert_clean(caught.value)
    store.close()
