"""`guard serve` as a real process on a free port, serving the F16 GGUF through llama.cpp:
the real `openai` and `ollama` client packages get the engine's own vectors (Ollama's
older /api/embeddings included), guard's own openai+http and ollama+http engines check a
store through it and approve, concurrent requests are batched and each gets its own
rows, bad requests and requests for another model get 4xx JSON in each API's shape
(unless --any-model), the fingerprint is a Prometheus info metric, and SIGTERM/SIGINT
stop it with exit 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_cli import SECRET, assert_one_line_error, guard

from guard.core.bridge import LinearMap
from guard.engines import EmbeddingEngine, bridgefile, open_engine
from guard.hashing import fingerprint_sha256
from guard.records import RecordBatch
from guard.serve.follow import serves_candidate
from guard.stores import open_store

RECORDS = 600  # zero failures in 600 puts the 99% bound under the 1% allowed share
MAX_INPUTS = 64
MAX_BODY = 256 * 1024


class Served:
    """A `guard serve` process: its base URL, served model id and stderr so far."""

    def __init__(
        self, process: subprocess.Popen[str], url: str, model: str, first_line: str
    ) -> None:
        self.process, self.url, self.model = process, url, model
        self.first_line = first_line
        self.stderr = ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        _, rest = self.process.communicate(timeout=60)
        self.stderr += rest
        return self.process.returncode


@contextmanager
def serving(engine: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    process = subprocess.Popen(
        [sys.executable, "-c", "from guard.cli import main; main()",
         "serve", "--engine", engine, "--port", "0", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()
    found = re.search(r"serving (\S+) .* on (http://[\d.]+:\d+)", line)
    if found is None:
        process.kill()
        raise AssertionError(f"guard serve did not start: {line}{process.stderr.read()}")
    served = Served(process, found.group(2), found.group(1), line)
    try:
        yield served
    finally:
        if process.poll() is None:
            code = served.stop()
            assert code == 0, served.stderr
        assert "Traceback" not in served.stderr, served.stderr


@pytest.fixture(scope="module")
def engine_uri(gguf_f16: Path) -> str:
    """truncate=false: a text over the model's limit is the engine's error, not a cut."""
    return f"llamacpp:{gguf_f16}?truncate=false"


@pytest.fixture(scope="module")
def engine(engine_uri: str) -> Iterator[EmbeddingEngine]:
    opened = open_engine(engine_uri)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def server(engine_uri: str) -> Iterator[Served]:
    limits = ("--max-inputs", str(MAX_INPUTS), "--max-body-bytes", str(MAX_BODY))
    with serving(engine_uri, *limits) as served:
        yield served


@pytest.fixture(scope="module")
def sentences(corpus: list[str]) -> list[str]:
    split = (s for text in corpus for s in re.split(r"(?<=[.!?])\s+", text))
    return list(dict.fromkeys(s for s in split if 40 <= len(s) <= 200))[:RECORDS]


def test_the_openai_client_gets_the_engines_vectors_usage_and_fingerprint(
    server: Served, engine: EmbeddingEngine, short_texts: list[str]
) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    texts = short_texts[:12]
    raw = client.embeddings.with_raw_response.create(model=server.model, input=texts)
    many = raw.parse()
    one = client.embeddings.create(model=server.model, input=texts[0], encoding_format="float")
    expected = engine.embed(texts)
    assert np.allclose(expected, [item.embedding for item in many.data], atol=1e-5)
    alone = engine.embed(texts[:1])  # llama.cpp's sums differ by 1e-4 with the batch
    assert np.allclose(alone, [item.embedding for item in one.data], atol=1e-5)
    assert list(range(12)) == [item.index for item in many.data]
    assert (server.model, sum(engine.count_tokens(texts))) == (many.model, many.usage.total_tokens)
    digest = fingerprint_sha256(engine.fingerprint())
    assert f"sha256:{digest}" == raw.headers["x-guard-fingerprint"]
    [listed] = client.models.list().data
    assert (server.model, digest) == (listed.id, listed.model_extra["fingerprint_sha256"])
    assert (
        json.loads(json.dumps(engine.fingerprint(), default=str))
        == listed.model_extra["fingerprint"]
    )


def test_the_ollama_client_gets_the_engines_vectors(
    server: Served, engine: EmbeddingEngine, short_texts: list[str]
) -> None:
    client = ollama.Client(host=server.url)
    texts = short_texts[12:20]
    many = client.embed(model=server.model, input=texts)
    one = client.embed(model=server.model, input=texts[0])
    assert np.allclose(engine.embed(texts), many.embeddings, atol=1e-5)
    assert np.allclose(engine.embed(texts[:1]), one.embeddings, atol=1e-5)  # alone, as served
    assert server.model == many.model
    assert [server.model] == [entry.model for entry in client.list().models]


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_guards_own_http_engines_check_a_store_through_it_and_approve(
    api: str,
    server: Served,
    engine: EmbeddingEngine,
    sentences: list[str],
    qdrant_dir: Path,
) -> None:
    store_uri = f"qdrant+local:{qdrant_dir}?collection=served"
    store = open_store(store_uri)
    store.create(dims=384, distance="cosine")
    store.upsert(RecordBatch(tuple(range(RECORDS)), tuple(sentences), engine.embed(sentences)))
    store.close()
    base = f"{server.url}/v1" if api == "openai" else server.url
    candidate = f"{api}+{base}?model={server.model}"
    result = guard(
        "check", "--store", store_uri, "--candidate", candidate,
        "--sample", str(RECORDS), "--format", "json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert (result.returncode, report["verdict"]) == (0, "approve"), result.stderr
    served = report["candidate"]["model"]
    if api == "openai":
        assert server.model == served["served"]
    else:
        assert f"sha256:{fingerprint_sha256(engine.fingerprint())}" == served["digest"]


def test_a_bridge_engine_is_served_with_its_bridge_applied(
    gguf_f16: Path, tmp_path: Path, short_texts: list[str]
) -> None:
    rng = np.random.default_rng(5)
    path = bridgefile.save(
        LinearMap("affine", rng.normal(size=(384, 64)), rng.normal(size=64)),
        tmp_path / "bridge.npz",
        fitted_between={},
        validation={},
    )
    uri = f"llamacpp:{gguf_f16}?bridge={path}"
    bridged = open_engine(uri)
    texts = short_texts[:5]
    try:
        with serving(uri) as served:
            answer = httpx.post(f"{served.url}/v1/embeddings", json={"input": texts}).json()
            listed = httpx.get(f"{served.url}/v1/models").json()["data"][0]
        rows = [item["embedding"] for item in answer["data"]]
        assert np.allclose(bridged.embed(texts), rows, atol=1e-4)
        assert (64, bridgefile.load(path).sha256) == (
            listed["dims"],
            listed["fingerprint"]["settings"]["bridge"]["sha256"],
        )
    finally:
        bridged.close()


def _metric(url: str, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metric family ``name``: (sample name, labels) -> value."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
    }


def test_sixteen_concurrent_requests_are_one_batch_and_each_gets_its_own_rows(
    engine_uri: str, engine: EmbeddingEngine, sentences: list[str], tmp_path: Path
) -> None:
    """The engine thread is held before its first batch (GUARD_FAULT) until all 16
    requests wait, so the batch is certain, not a matter of timing."""
    release = tmp_path / "release"
    requests = [sentences[4 * i : 4 * i + 4] for i in range(16)]
    with serving(engine_uri, env={"GUARD_FAULT": f"serve_batch:wait={release}"}) as served:
        with ThreadPoolExecutor(16) as pool:
            answers = [
                pool.submit(httpx.post, f"{served.url}/v1/embeddings", json={"input": texts})
                for texts in requests
            ]
            while (
                _metric(served.url, "guard_serve_queue_depth").get(
                    ("guard_serve_queue_depth", ()), 0
                )
                < 15
            ):  # one taken by the held thread, fifteen waiting
                threading.Event().wait(0.05)
            release.touch()
            results = [answer.result(timeout=120).json() for answer in answers]
        batches = _metric(served.url, "guard_serve_batch_requests")
    for texts, result in zip(requests, results, strict=True):
        rows = [item["embedding"] for item in result["data"]]
        # in a batch of 64 texts whose order is the queue's: llama.cpp's sums vary by 1e-4
        assert np.allclose(engine.embed(texts), rows, atol=1e-3)
    assert batches[("guard_serve_batch_requests_count", ())] == 1.0
    assert batches[("guard_serve_batch_requests_sum", ())] == 16.0


LONG = "word " * 2000


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b'{"input": ["unclosed"', 400, "bad_json", "not valid JSON"),
        (b'["input"]', 400, "bad_request", "JSON object"),
        (b'{"input": 5}', 400, "bad_request", "string or a list of strings"),
        (b'{"input": [[101, 2023]]}', 400, "bad_request", "string or a list of strings"),
        (b'{"model": 3, "input": "x"}', 400, "bad_request", "model"),
        (b'{"input": []}', 400, "empty_input", "empty"),
        (b'{"input": ""}', 400, "empty_input", "empty"),
        (b'{"model": "m"}', 400, "bad_request", "'input' is required"),
        (json.dumps({"input": ["x"] * (MAX_INPUTS + 1)}).encode(), 400, "too_many_inputs",
         "at most"),
        (json.dumps({"input": "y" * MAX_BODY}).encode(), 413, "too_large", "over the limit"),
        (json.dumps({"input": ["fine", LONG]}).encode(), 400, "text_too_long", "over the limit"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_bad_requests_get_4xx_json_in_each_apis_shape(
    server: Served, api: str, body: bytes, status: int, code: str, message: str
) -> None:
    body = body.replace(b'"model": "m"', f'"model": "{server.model}"'.encode())
    if api == "ollama" and b'"model"' not in body and body.startswith(b"{"):
        body = f'{{"model": "{server.model}", '.encode() + body[1:]
    path = "/v1/embeddings" if api == "openai" else "/api/embed"
    response = httpx.post(f"{server.url}{path}", content=body)
    answer = response.json()
    assert status == response.status_code, answer
    if api == "openai":
        error = answer["error"]
        assert {"message", "type", "param", "code"} == set(error)
        assert (code, "invalid_request_error") == (error["code"], error["type"])
        assert message in error["message"]
    else:
        assert list(answer) == ["error"]
        assert message in answer["error"]
    assert response.headers["x-guard-fingerprint"].startswith("sha256:")
    assert httpx.get(f"{server.url}/healthz").status_code == 200


OTHER_MODEL = "nomic-embed-text"


def test_a_request_for_another_model_is_404_in_each_apis_shape(server: Served) -> None:
    """The served model answers to its id, its file name and Ollama's :latest tag; any
    other name is refused through the real clients, with each API's error body."""
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as refused:
        openai_client.embeddings.create(model=OTHER_MODEL, input="a text")
    error = refused.value
    assert (error.status_code, error.code, error.type, error.param) == (
        404, "model_not_found", "invalid_request_error", "model",
    )  # fmt: skip
    assert f"model '{OTHER_MODEL}' not found" in error.message
    assert f"serves '{server.model}'" in error.message

    ollama_client = ollama.Client(host=server.url)
    for call in (
        lambda: ollama_client.embed(model=OTHER_MODEL, input="a text"),
        lambda: ollama_client.embeddings(model=OTHER_MODEL, prompt="a text"),
        lambda: ollama_client.show(OTHER_MODEL),
    ):
        with pytest.raises(ollama.ResponseError) as missing:
            call()
        assert missing.value.status_code == 404
        assert missing.value.error.startswith(f"model '{OTHER_MODEL}' not found")
    raw = httpx.post(f"{server.url}/api/embed", json={"model": OTHER_MODEL, "input": "x"})
    assert (raw.status_code, list(raw.json())) == (404, ["error"])

    for alias in (f"{server.model}.gguf", f"{server.model}:latest"):
        assert len(ollama_client.embed(model=alias, input="a text").embeddings[0]) == 384
        answer = openai_client.embeddings.create(model=alias, input="a text")
        assert answer.model == server.model
    assert (
        _metric(server.url, "guard_serve_errors")[
            ("guard_serve_errors_total", (("kind", "model_not_found"),))
        ]
        >= 4
    )


def test_any_model_answers_every_name_with_the_served_vectors(
    engine_uri: str, engine: EmbeddingEngine, short_texts: list[str]
) -> None:
    texts = short_texts[:3]
    with serving(engine_uri, "--any-model") as served:
        assert "any model name" in served.first_line
        got = ollama.Client(host=served.url).embed(model=OTHER_MODEL, input=texts)
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        other = client.embeddings.create(model="text-embedding-3-small", input=texts)
    assert np.allclose(engine.embed(texts), got.embeddings, atol=1e-5)
    assert np.allclose(engine.embed(texts), [item.embedding for item in other.data], atol=1e-5)
    assert got.model == served.model  # the answer names what was really served


def test_ollamas_older_embeddings_endpoint(
    server: Served, engine: EmbeddingEngine, short_texts: list[str]
) -> None:
    client = ollama.Client(host=server.url)
    one = client.embeddings(model=server.model, prompt=short_texts[0])
    assert np.allclose(engine.embed(short_texts[:1])[0], one.embedding, atol=1e-5)
    empty = httpx.post(f"{server.url}/api/embeddings", json={"model": server.model, "prompt": ""})
    assert (empty.status_code, empty.json()) == (200, {"embedding": []})
    bad = httpx.post(f"{server.url}/api/embeddings", json={"model": server.model, "prompt": 5})
    assert (bad.status_code, list(bad.json())) == (400, ["error"])
    assert "'prompt' must be a string" in bad.json()["error"]
    assert (
        _metric(server.url, "guard_serve_texts")[
            ("guard_serve_texts_total", (("api", "ollama_legacy"),))
        ]
        >= 1
    )


def test_the_fingerprint_is_an_info_metric(server: Served, engine: EmbeddingEngine) -> None:
    """prometheus_client's Info: in the text format a gauge ``..._info`` of value 1 whose
    labels say which engine answers."""
    samples = _metric(server.url, "guard_serve_engine_info")
    [((name, labels), value)] = samples.items()
    assert (name, value) == ("guard_serve_engine_info", 1.0)
    assert dict(labels) == {
        "fingerprint_sha256": fingerprint_sha256(engine.fingerprint()),
        "model": server.model,
        "engine": "llamacpp",
        "file_type": "F16",
        "dims": "384",
    }


def test_unknown_paths_and_methods_are_json_errors(server: Served) -> None:
    missing = httpx.get(f"{server.url}/v1/nothing")
    wrong = httpx.get(f"{server.url}/api/embed")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "route")
    assert (wrong.status_code, list(wrong.json())) == (405, ["error"])


def test_metrics_parse_and_count_requests_texts_and_errors(server: Served) -> None:
    httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a metric", "another"]})
    httpx.post(f"{server.url}/v1/embeddings", json={"input": []})
    text = httpx.get(f"{server.url}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {
        "guard_serve_requests", "guard_serve_texts", "guard_serve_errors",
        "guard_serve_request_seconds", "guard_serve_batch_texts",
        "guard_serve_batch_requests", "guard_serve_queue_depth",
    } <= set(families)  # fmt: skip
    assert (
        _metric(server.url, "guard_serve_texts")[("guard_serve_texts_total", (("api", "openai"),))]
        >= 2
    )
    assert (
        _metric(server.url, "guard_serve_errors")[
            ("guard_serve_errors_total", (("kind", "empty_input"),))
        ]
        >= 1
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_with_exit_0(engine_uri: str, sig: int) -> None:
    with serving(engine_uri) as served:
        assert httpx.get(f"{served.url}/healthz").json()["status"] == "ok"
        assert served.stop(sig) == 0, served.stderr


def test_a_bad_engine_or_a_taken_port_is_one_line_exit_2_without_secrets(
    server: Served, engine_uri: str
) -> None:
    missing = guard("serve", "--engine", "llamacpp:/nonexistent/model.gguf")
    assert "model.gguf" in assert_one_line_error(missing)
    unreachable = f"openai+http://app:{SECRET}@127.0.0.1:1/v1?model=m&retries=0"
    assert_one_line_error(guard("serve", "--engine", unreachable))
    port = server.url.rsplit(":", 1)[1]
    taken = guard("serve", "--engine", engine_uri, "--port", port)
    assert f"cannot listen on 127.0.0.1:{port}" in assert_one_line_error(taken)


def test_without_the_serve_extra_it_says_so_in_one_line() -> None:
    """uvicorn made unimportable, as in an install without the extra."""
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['uvicorn'] = None\n"
         "from guard.cli import main; main()", "serve", "--engine", "llamacpp:/m.gguf"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "pip install 'vector-migration-guard[serve]'" in assert_one_line_error(result)


@pytest.mark.parametrize(
    ("state", "intent", "expected"),
    [
        ("active", None, False),
        ("cut_over", None, True),
        ("rolled_back", None, False),
        ("active", {"step": "cutover", "writers_held": True}, True),
        ("cut_over", {"step": "rollback", "writers_held": True}, False),
    ],
)
def test_follow_reads_the_side_from_the_state_database_without_opening_the_store(
    state: str, intent: dict[str, object] | None, expected: bool
) -> None:
    """`serve --follow` leaves the store alone once a switch is settled or holds writers:
    a `qdrant+local:` folder admits one process, the one migrating it."""

    def store_asked() -> bool:
        raise AssertionError("the store was asked")

    job = SimpleNamespace(state=state, intent=intent)
    assert expected == serves_candidate(job, store_asked)


@pytest.mark.parametrize(("state", "intent"), [("active", {"step": "cutover"}), ("cleaned", None)])
def test_follow_asks_the_store_for_an_unsettled_switch_or_a_cleaned_job(
    state: str, intent: dict[str, object] | None
) -> None:
    """A switch recorded but not holding writers (perhaps left by a crash), or a job
    cleaned up: only the store knows which side is served."""
    job = SimpleNamespace(state=state, intent=intent)
    assert serves_candidate(job, lambda: True) is True
    assert serves_candidate(job, lambda: False) is False
