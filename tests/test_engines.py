"""Engine behaviour beyond the shared contract: truncation that matches the reference,
quantization levels, the HTTP engines against real servers, retries and errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_models import OpenAIServer, free_port
from ollama_server import OllamaStandIn
from structlog.testing import capture_logs

from guard.engines import EmbeddingEngine, open_engine
from guard.engines.llamacpp import LlamaCppEngine, read_gguf_metadata
from guard.errors import ConfigError, EngineError, TextTooLongError

pytestmark = pytest.mark.slow


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray(np.einsum("ij,ij->i", a, b))


@pytest.fixture(scope="module")
def reference(st_model_dir: Path) -> Iterator[EmbeddingEngine]:
    """The sentence-transformers model as shipped: max_seq_length 256, Normalize module."""
    engine = open_engine(f"st:{st_model_dir}")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def f16(gguf_f16: Path) -> Iterator[LlamaCppEngine]:
    engine = open_engine(f"llamacpp:{gguf_f16}?max_tokens=256")
    assert isinstance(engine, LlamaCppEngine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference_long(reference: EmbeddingEngine, long_texts: list[str]) -> np.ndarray:
    return reference.embed(long_texts)


@pytest.fixture(scope="module")
def reference_short(reference: EmbeddingEngine, short_texts: list[str]) -> np.ndarray:
    return reference.embed(short_texts)


# -- truncation -----------------------------------------------------------------------------


def test_corpus_has_texts_longer_than_the_reference_limit(long_texts: list[str]) -> None:
    assert len(long_texts) >= 10


def test_max_tokens_truncates_like_the_reference_on_every_long_text(
    f16: LlamaCppEngine, reference_long: np.ndarray, long_texts: list[str]
) -> None:
    """max_tokens=256 keeps [SEP] after the cut, as sentence-transformers does."""
    agreement = cosines(f16.embed(long_texts), reference_long)
    assert (agreement >= 0.99999).all(), sorted(agreement)[:3]


def test_a_plain_cut_of_the_token_list_does_not_match_the_reference(
    f16: LlamaCppEngine, reference_long: np.ndarray, long_texts: list[str]
) -> None:
    """What the fix is for: the first 256 tokens without [SEP] give other vectors."""
    model = f16._load()
    plain = [model.tokenize(text)[:256] for text in long_texts]
    agreement = cosines(model.embed_tokens(plain, engine=f16.uri), reference_long)
    assert agreement.min() < 0.9999
    assert (agreement < 0.99999).all()


def test_without_max_tokens_long_texts_use_the_whole_context(
    f16: LlamaCppEngine, reference_long: np.ndarray, long_texts: list[str]
) -> None:
    """No max_tokens: cut at the model's 512-token context, as Llama.embed does, so
    texts longer than 256 tokens drift away from the 256-token reference."""
    untruncated = f16.with_options(max_tokens=None)
    agreement = cosines(untruncated.embed(long_texts[:6]), reference_long[:6])
    assert (agreement < 0.9999).all()
    assert "plain cut" in untruncated.fingerprint()["settings"]["truncation"]
    assert untruncated.fingerprint()["settings"]["token_limit"] == 512


@pytest.mark.parametrize("engine_name", ["f16", "reference"])
def test_truncate_false_refuses_long_texts_and_changes_nothing_else(
    engine_name: str,
    request: pytest.FixtureRequest,
    long_texts: list[str],
    short_texts: list[str],
) -> None:
    """llama.cpp and sentence-transformers, both at 256 tokens: a long text is an error
    instead of a cut; short texts get the very same vectors and the fingerprint stays."""
    engine: EmbeddingEngine = request.getfixturevalue(engine_name)
    strict = engine.with_options(truncate=False)
    with pytest.raises(TextTooLongError, match="over the limit of 256"):
        strict.embed([short_texts[0], long_texts[0]])
    np.testing.assert_allclose(
        strict.embed(short_texts[:5]), engine.embed(short_texts[:5]), atol=1e-6
    )
    assert strict.fingerprint() == engine.fingerprint()


def test_f16_matches_the_reference_on_short_texts(
    f16: LlamaCppEngine, reference_short: np.ndarray, short_texts: list[str]
) -> None:
    agreement = cosines(f16.embed(short_texts), reference_short)
    assert (agreement >= 0.9999).all()


def test_count_tokens_matches_the_reference_tokenizer(
    f16: LlamaCppEngine, reference: EmbeddingEngine, corpus: list[str]
) -> None:
    sample = corpus[::20]
    assert reference.count_tokens(sample) == f16.count_tokens(sample)


def test_truncation_keeps_the_closing_token(f16: LlamaCppEngine) -> None:
    model = f16._load()
    tokens = model.tokenize("word " * 600)
    cut = f16._truncate(tokens, 256, model)
    assert len(cut) == 256
    assert tokens[:255] + tokens[-1:] == cut


# -- quantization ---------------------------------------------------------------------------


def test_quantized_models_drift_in_order(
    demo_models: dict[str, Path], reference_short: np.ndarray, short_texts: list[str]
) -> None:
    """F16 reproduces the reference, Q8_0 nearly, Q4_0 clearly less."""
    medians = {}
    for name in ("F16", "Q8_0", "Q4_0"):
        engine = open_engine(f"llamacpp:{demo_models[name]}?max_tokens=256")
        medians[name] = float(np.median(cosines(engine.embed(short_texts), reference_short)))
        engine.close()
    assert medians["F16"] >= 0.99999
    assert medians["F16"] > medians["Q8_0"] > medians["Q4_0"]
    assert medians["F16"] - medians["Q4_0"] > 10 * (medians["F16"] - medians["Q8_0"])
    assert medians["Q4_0"] < 0.999


def test_fingerprint_identifies_the_file(demo_models: dict[str, Path]) -> None:
    for name, path in demo_models.items():
        fingerprint = open_engine(f"llamacpp:{path}").fingerprint()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == fingerprint["model"]["sha256"]
        assert name == fingerprint["model"]["file_type"]
        assert fingerprint["model"]["architecture"] == "bert"
        assert fingerprint["settings"]["pooling"] == "mean"


def test_gguf_metadata_reader(gguf_f16: Path) -> None:
    meta = read_gguf_metadata(gguf_f16)
    assert (
        meta["general.architecture"],
        meta["bert.context_length"],
        meta["bert.embedding_length"],
    ) == ("bert", 512, 384)


def test_pooling_option_changes_vectors_and_fingerprint(
    f16: LlamaCppEngine, short_texts: list[str]
) -> None:
    cls = f16.with_options(pooling="cls")
    assert cls.fingerprint()["settings"]["pooling"] == "cls"
    assert (cosines(cls.embed(short_texts[:4]), f16.embed(short_texts[:4])) < 0.99).all()
    cls.close()


def test_another_pooling_is_a_new_context_on_the_loaded_weights(
    gguf_f16: Path, short_texts: list[str]
) -> None:
    """The diagnosis's pooling alternatives: the same vectors as a freshly loaded engine
    with that pooling, without reading the file a second time."""
    fresh = open_engine(f"llamacpp:{gguf_f16}?max_tokens=256&pooling=cls")
    expected = fresh.embed(short_texts[:6])
    fresh.close()
    engine = open_engine(f"llamacpp:{gguf_f16}?max_tokens=256")
    with capture_logs() as events:
        mean = engine.embed(short_texts[:6])
        cls = engine.with_options(pooling="cls", max_tokens=128)
        engine.close()  # the alternative keeps the weights it shares
        actual = cls.embed(short_texts[:6])
        cls.close()
    loads = [e for e in events if e["event"] == "llamacpp.loaded"]
    assert len(loads) == 1
    assert (cosines(expected, actual) > 0.99999).all()
    assert (cosines(mean, actual) < 0.99).all()


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="llama-cpp-python's own default is right on one CPU"
)
def test_llamacpp_threads_follow_the_cpus_the_process_may_use(gguf_f16: Path) -> None:
    """A process given one CPU (a cpuset, taskset) runs one llama.cpp thread, in the
    loaded context and in a pooling alternative's; ``n_threads`` in the URI still wins."""
    script = (
        "import os, sys, llama_cpp\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from guard.engines import open_engine\n"
        "def threads(engine):\n"
        "    engine.embed(['one text'])\n"
        "    ctx = engine._model._ctx.ctx\n"
        "    return [llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)]\n"
        "plain = open_engine('llamacpp:' + sys.argv[1])\n"
        "print(threads(plain), threads(plain.with_options(pooling='cls')),\n"
        "      threads(open_engine('llamacpp:' + sys.argv[1] + '?n_threads=3')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(gguf_f16)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[1, 1] [1, 1] [3, 3]"


# -- the ST and model2vec engines -----------------------------------------------------------


def test_st_max_tokens_sets_the_sequence_limit(
    reference: EmbeddingEngine, reference_long: np.ndarray, long_texts: list[str]
) -> None:
    longer = reference.with_options(max_tokens=512)
    assert longer.fingerprint()["settings"]["token_limit"] == 512
    assert (cosines(longer.embed(long_texts[:3]), reference_long[:3]) < 0.9999).all()
    # the shared model is back at its own limit for the original engine
    assert reference.fingerprint()["settings"]["token_limit"] == 256


def test_st_packaged_name_resolves_to_the_packaged_model(reference: EmbeddingEngine) -> None:
    by_name = open_engine("st:sentence-transformers/all-MiniLM-L6-v2")
    assert reference.fingerprint()["model"]["sha256"] == by_name.fingerprint()["model"]["sha256"]


def test_model2vec_zero_vector_stays_zero_when_normalized(static_model_dir: Path) -> None:
    """A text with no known token embeds to zeros, and normalize must not make NaN."""
    engine = open_engine(f"model2vec:{static_model_dir}?normalize=true")
    vectors = engine.embed(["", "hello world"])
    assert np.isfinite(vectors).all()
    assert float(np.abs(vectors[0]).max()) == 0.0
    assert pytest.approx(float(np.linalg.norm(vectors[1])), abs=1e-5) == 1.0


def test_model2vec_refuses_pooling_it_cannot_do(static_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="pooling"):
        open_engine(f"model2vec:{static_model_dir}?pooling=cls")


# -- HTTP engines against real servers ------------------------------------------------------


@pytest.fixture
def openai_uri(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GUARD_TEST_KEY", openai_server.api_key)
    return f"openai+{openai_server.url}?model={openai_server.model}&api_key_env=GUARD_TEST_KEY"


def test_openai_engine_matches_in_process_llamacpp(
    openai_uri: str, gguf_f16: Path, short_texts: list[str]
) -> None:
    """Same file, same library: llama_cpp.server cuts at its 512-token batch, like the
    in-process engine without max_tokens."""
    texts = short_texts[:10]
    served = open_engine(openai_uri).embed(texts)
    local = open_engine(f"llamacpp:{gguf_f16}").embed(texts)
    assert (cosines(served, local) >= 0.99999).all()


def test_openai_fingerprint_names_the_served_model(openai_uri: str) -> None:
    fingerprint = open_engine(openai_uri).fingerprint()
    assert fingerprint["model"] == {"requested": "minilm-f16", "served": "minilm-f16"}
    assert fingerprint["settings"]["truncation"] == "server"


def test_openai_wrong_key_fails_without_showing_it(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sk-wrong-key-that-must-not-leak"
    monkeypatch.setenv("GUARD_TEST_KEY", wrong)
    uri = f"openai+{openai_server.url}?model=m&api_key_env=GUARD_TEST_KEY"
    with pytest.raises(EngineError, match="401") as caught:
        open_engine(uri).embed(["x"])
    assert wrong not in str(caught.value)
    assert openai_server.api_key not in str(caught.value)
    assert "GUARD_TEST_KEY" in str(caught.value)


def test_openai_refuses_settings_only_the_server_has() -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        open_engine("openai+http://127.0.0.1:1/v1?model=m&max_tokens=256")
    with pytest.raises(ConfigError, match="truncate"):
        open_engine("openai+http://127.0.0.1:1/v1?model=m&truncate=false")
    with pytest.raises(ConfigError, match="model"):
        open_engine("openai+http://127.0.0.1:1/v1")


def test_ollama_engine_matches_in_process_llamacpp(
    ollama_server: OllamaStandIn, gguf_f16: Path, short_texts: list[str]
) -> None:
    texts = short_texts[:10]
    served = open_engine(f"ollama+{ollama_server.url}?model=all-minilm").embed(texts)
    local = open_engine(f"llamacpp:{gguf_f16}").embed(texts)
    assert (cosines(served, local) >= 0.99999).all()
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_ollama_request_carries_truncation_and_batches(
    ollama_server: OllamaStandIn, long_texts: list[str]
) -> None:
    engine = open_engine(f"ollama+{ollama_server.url}?model=all-minilm&max_tokens=128")
    before = len(ollama_server.requests)
    vectors = engine.embed(long_texts[:3])
    sent = ollama_server.requests[before:]
    assert len(sent) == 1
    assert sent[0]["body"]["options"] == {"num_ctx": 128}
    assert sent[0]["body"]["truncate"] is True
    untruncated = open_engine(f"ollama+{ollama_server.url}?model=all-minilm").embed(long_texts[:3])
    assert (cosines(vectors, untruncated) < 0.999).all()


def test_ollama_truncate_false_lets_the_server_refuse_long_inputs(
    ollama_server: OllamaStandIn, long_texts: list[str], short_texts: list[str]
) -> None:
    uri = f"ollama+{ollama_server.url}?model=all-minilm&max_tokens=128&truncate=false"
    engine = open_engine(uri)
    before = len(ollama_server.requests)
    with pytest.raises(TextTooLongError, match="context"):
        engine.embed([short_texts[0], long_texts[0]])
    assert ollama_server.requests[before]["body"]["truncate"] is False
    assert engine.embed(short_texts[:2]).shape == (2, 384)


def test_ollama_fingerprint_uses_the_digest(ollama_server: OllamaStandIn) -> None:
    fingerprint = open_engine(f"ollama+{ollama_server.url}?model=all-minilm").fingerprint()
    assert ollama_server.digest == fingerprint["model"]["digest"]
    assert fingerprint["model"]["details"]["quantization_level"] == "F16"
    assert fingerprint["settings"]["server_normalizes"] is True
    assert fingerprint["model"]["info"]["bert.embedding_length"] == 384


def test_ollama_unknown_model_is_an_engine_error(ollama_server: OllamaStandIn) -> None:
    engine = open_engine(f"ollama+{ollama_server.url}?model=nomic-embed-text&retries=0")
    with pytest.raises(EngineError, match="nomic-embed-text"):
        engine.fingerprint()
    with pytest.raises(EngineError, match="404"):
        engine.embed(["x"])


# -- retries and malformed answers, against a scripted local server ---------------------------


class Scripted:
    """A local HTTP server that answers each request with the next scripted reply and
    records what it was sent."""

    def __init__(self, replies: list[tuple[int, Any]]) -> None:
        self.replies = list(replies)
        self.seen: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.seen.append({"auth": self.headers.get("authorization"), "body": body})
                status, payload = owner.replies.pop(0) if owner.replies else (500, {})
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                if status == 429:
                    self.send_header("retry-after", "0")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[type[Scripted]]:
    made: list[Scripted] = []

    class Tracked(Scripted):
        def __init__(self, replies: list[tuple[int, Any]]) -> None:
            super().__init__(replies)
            made.append(self)

    yield Tracked
    for server in made:
        server.close()


def _answer(n: int, dims: int = 3) -> dict[str, Any]:
    data = [{"index": i, "embedding": [float(i + 1)] * dims} for i in range(n)]
    return {"model": "m", "data": data}


def test_retries_after_503_then_succeeds(scripted: type[Scripted]) -> None:
    server = scripted([(503, {}), (503, {}), (200, _answer(2))])
    engine = open_engine(f"openai+{server.url}?model=m")
    vectors = engine.embed(["a", "b"])
    assert len(server.seen) == 3
    assert vectors.tolist() == [[1.0] * 3, [2.0] * 3]


def test_retries_after_429(scripted: type[Scripted]) -> None:
    server = scripted([(429, {}), (200, _answer(1))])
    assert open_engine(f"openai+{server.url}?model=m").embed(["a"]).shape == (1, 3)
    assert len(server.seen) == 2


def test_gives_up_after_the_retries(scripted: type[Scripted]) -> None:
    server = scripted([(502, {})] * 3)
    with pytest.raises(EngineError, match="HTTP 502 after 2 attempt"):
        open_engine(f"openai+{server.url}?model=m&retries=1").embed(["a"])
    assert len(server.seen) == 2


def test_401_fails_at_once_and_never_shows_the_key(
    scripted: type[Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-live-abcdef0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    server = scripted([(401, {"error": {"message": f"Incorrect API key provided: {key}"}})])
    with pytest.raises(EngineError) as caught:
        open_engine(f"openai+{server.url}?model=m").embed(["a"])
    assert len(server.seen) == 1
    assert f"Bearer {key}" == server.seen[0]["auth"]
    assert key not in str(caught.value)
    assert "$OPENAI_API_KEY" in str(caught.value)


def test_texts_go_in_batches(scripted: type[Scripted]) -> None:
    server = scripted([(200, _answer(2)), (200, _answer(2)), (200, _answer(1))])
    engine = open_engine(f"openai+{server.url}?model=m&batch_size=2&prefix=q:%20")
    assert engine.embed(list("abcde")).shape == (5, 3)
    sent = [json.loads(seen["body"]) for seen in server.seen]
    assert [body["input"] for body in sent] == [["q: a", "q: b"], ["q: c", "q: d"], ["q: e"]]


def test_answers_out_of_order_are_put_back_in_order(scripted: type[Scripted]) -> None:
    answer = _answer(2)
    answer["data"].reverse()
    server = scripted([(200, answer)])
    vectors = open_engine(f"openai+{server.url}?model=m").embed(["a", "b"])
    assert vectors.tolist() == [[1.0] * 3, [2.0] * 3]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (_answer(1), "returned 1 vectors for 2 texts"),
        ({"model": "m"}, "no 'data' list"),
        (b"<html>gateway</html>", "not JSON"),
        ({"data": [{"index": 0}, {"index": 1}]}, "malformed answer"),
        ({"data": [{"embedding": [1, 2]}, {"embedding": [1]}]}, "not numbers"),
    ],
)
def test_malformed_answers_are_engine_errors(
    scripted: type[Scripted], reply: Any, message: str
) -> None:
    server = scripted([(200, reply)])
    with pytest.raises(EngineError, match=message) as caught:
        open_engine(f"openai+{server.url}?model=m").embed(["a", "b"])
    assert server.url.replace("http://", "") in str(caught.value.engine)


def test_server_down_is_an_engine_error_naming_the_url_it_tried() -> None:
    port = free_port()
    url = f"openai+http://127.0.0.1:{port}/v1?model=m&retries=1"
    with pytest.raises(EngineError, match="ConnectError") as caught:
        open_engine(url).embed(["a"])
    assert f"POST http://127.0.0.1:{port}/v1/embeddings failed" in str(caught.value)


# -- errors of local engines ----------------------------------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found"):
        open_engine(f"llamacpp:{tmp_path}/absent.gguf").embed(["a"])


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("this is not a model")
    with pytest.raises(EngineError, match="not a GGUF model"):
        open_engine(f"llamacpp:{path}").fingerprint()


def test_a_truncated_gguf(tmp_path: Path, gguf_f16: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(gguf_f16.read_bytes()[:4096])
    with pytest.raises(EngineError, match="not a GGUF model"):
        open_engine(f"llamacpp:{path}").embed(["a"])


def test_gguf_header_with_broken_tensors(tmp_path: Path, gguf_f16: Path) -> None:
    """A header that parses but weights that do not: llama.cpp's own error, mapped."""
    path = tmp_path / "broken.gguf"
    path.write_bytes(gguf_f16.read_bytes()[: 2 << 20])
    with pytest.raises(EngineError, match="cannot load"):
        open_engine(f"llamacpp:{path}").embed(["a"])


def test_unknown_options_are_refused(gguf_f16: Path) -> None:
    with pytest.raises(ConfigError, match="max_token"):
        open_engine(f"llamacpp:{gguf_f16}?max_token=256")


def test_st_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found"):
        open_engine(f"st:{tmp_path}/absent").embed(["a"])


def test_model2vec_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found"):
        open_engine(f"model2vec:{tmp_path}/absent").embed(["a"])
