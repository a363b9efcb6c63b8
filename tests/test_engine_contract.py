"""The EmbeddingEngine contract, checked on every engine with real models and servers:
llamacpp (F16 GGUF in-process), openai (llama_cpp.server), ollama (the stand-in),
st (the sentence-transformers reference), model2vec (a static model) and onnx (the FP32
ONNX export in its sentence-transformers folder)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from guard.engines import EmbeddingEngine, open_engine
from guard.errors import ConfigError, EngineError

pytestmark = pytest.mark.slow

ENGINE_KINDS = ["llamacpp", "openai", "ollama", "st", "model2vec", "onnx"]


def _engine_uri(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "llamacpp":
        return f"llamacpp:{request.getfixturevalue('gguf_f16')}"
    if kind == "openai":
        server = request.getfixturevalue("openai_server")
        request.getfixturevalue("monkeypatch_session").setenv("GUARD_TEST_KEY", server.api_key)
        return f"openai+{server.url}?model={server.model}&api_key_env=GUARD_TEST_KEY"
    if kind == "ollama":
        return f"ollama+{request.getfixturevalue('ollama_server').url}?model=all-minilm"
    if kind == "st":
        return f"st:{request.getfixturevalue('st_model_dir')}"
    if kind == "onnx":
        return f"onnx:{request.getfixturevalue('onnx_dir')}"
    return f"model2vec:{request.getfixturevalue('static_model_dir')}"


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="session", params=ENGINE_KINDS)
def engine(request: pytest.FixtureRequest) -> Iterator[EmbeddingEngine]:
    """One engine per kind for the session; tests derive variants with ``with_options``,
    which share the loaded model."""
    opened = open_engine(_engine_uri(request.param, request))
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def texts(short_texts: list[str]) -> list[str]:
    return [*short_texts[:6], "a", "Ünïcode, emoji 🙂 and symbols ∑ survive embedding."]


def assert_same_vectors(actual: np.ndarray, expected: np.ndarray) -> None:
    """Row by row: the same direction (cosine >= 0.99999) and the same length (1e-3).
    Packing texts differently into decodes moves float32 sums in the last digits
    (llama.cpp with flash attention: lengths differ by up to 2e-4 relative)."""
    assert expected.shape == actual.shape
    norms_a, norms_e = np.linalg.norm(actual, axis=1), np.linalg.norm(expected, axis=1)
    cosines = np.einsum("ij,ij->i", actual, expected) / (norms_a * norms_e)
    assert (cosines >= 0.99999).all(), cosines.min()
    np.testing.assert_allclose(norms_a, norms_e, rtol=1e-3)


def test_engine_satisfies_the_protocol(engine: EmbeddingEngine) -> None:
    assert isinstance(engine, EmbeddingEngine)
    assert engine.options.batch_size == 32


def test_embed_returns_contiguous_float32_one_row_per_text(
    engine: EmbeddingEngine, texts: list[str]
) -> None:
    vectors = engine.embed(texts)
    assert (len(texts), 384) == vectors.shape
    assert np.float32 == vectors.dtype
    assert vectors.flags.c_contiguous
    assert np.isfinite(vectors).all()


def test_distinct_texts_give_distinct_vectors(engine: EmbeddingEngine, texts: list[str]) -> None:
    vectors = engine.embed(texts)
    assert len(texts) == len(np.unique(vectors.round(5), axis=0))


def test_embed_is_deterministic(engine: EmbeddingEngine, texts: list[str]) -> None:
    np.testing.assert_allclose(engine.embed(texts), engine.embed(texts), rtol=0, atol=1e-6)


def test_a_batch_of_n_equals_n_single_calls(engine: EmbeddingEngine, texts: list[str]) -> None:
    single = engine.with_options(batch_size=1)
    batched = engine.with_options(batch_size=5)  # 8 texts: a full batch and a partial one
    one_by_one = np.concatenate([single.embed([text]) for text in texts])
    assert_same_vectors(batched.embed(texts), one_by_one)


def test_prefix_is_put_before_every_text(engine: EmbeddingEngine, texts: list[str]) -> None:
    prefixed = engine.with_options(prefix="query: ")
    changed = np.abs(prefixed.embed(texts) - engine.embed(texts)).max(axis=1)
    assert (changed > 1e-3).all()
    assert_same_vectors(prefixed.embed(texts[:2]), engine.embed(["query: " + t for t in texts[:2]]))


def test_normalize_true_gives_unit_rows(engine: EmbeddingEngine, texts: list[str]) -> None:
    norms = np.linalg.norm(engine.with_options(normalize=True).embed(texts), axis=1)
    np.testing.assert_allclose(norms, np.ones(len(texts)), atol=1e-5)


def test_normalize_keeps_directions(engine: EmbeddingEngine, texts: list[str]) -> None:
    native = engine.embed(texts)
    unit = engine.with_options(normalize=True).embed(texts)
    scaled = native / np.linalg.norm(native, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, scaled, atol=1e-5)


def test_empty_input_gives_no_rows(engine: EmbeddingEngine) -> None:
    vectors = engine.embed([])
    assert vectors.shape[0] == 0
    assert np.float32 == vectors.dtype


def test_fingerprint_follows_vector_settings_only(engine: EmbeddingEngine) -> None:
    base = engine.fingerprint()
    assert base == engine.with_options(batch_size=7).fingerprint()
    assert base != engine.with_options(prefix="passage: ").fingerprint()
    assert base != engine.with_options(normalize=True).fingerprint()
    assert {"engine", "model", "settings", "versions"} <= set(base)


def test_count_tokens_grows_with_the_text(engine: EmbeddingEngine) -> None:
    short, longer = engine.count_tokens(["one two", "one two three four five six seven"])
    assert 0 < short < longer


def test_with_options_copy_outlives_the_original(engine: EmbeddingEngine, texts: list[str]) -> None:
    """Closing one engine must not break another that shares its loaded model."""
    first = engine.with_options(prefix="x: ")
    second = first.with_options(prefix="y: ")
    expected = second.embed(texts[:2])
    first.close()
    np.testing.assert_allclose(second.embed(texts[:2]), expected, atol=1e-6)
    second.close()


def test_engine_errors_name_the_engine(tmp_path: Path) -> None:
    uri = f"llamacpp:{tmp_path / 'missing.gguf'}?max_tokens=64"
    with pytest.raises(EngineError) as caught:
        open_engine(uri).embed(["x"])
    assert uri == caught.value.engine


def test_option_errors_never_show_secrets() -> None:
    with pytest.raises(ConfigError) as caught:
        open_engine("llamacpp:model.gguf?token=hunter2")
    assert "hunter2" not in str(caught.value)
