"""The ``onnx:`` engine on real ONNX Runtime, with exports of the reference model made in
the session's fixtures (``onnx_models``: torch.onnx.export FP32, quantize_dynamic INT8).

What a user relies on: a faithful FP32 export reproduces the sentence-transformers
vectors with no options and is approved; INT8 gets the verdict its cosines call for;
options override the model's own configuration; bad input is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from fixtures_stores import write_store
from test_cli import assert_one_line_error, guard

from guard.checking.run import run_check
from guard.core.policy import Thresholds
from guard.demo import demo_candidates
from guard.engines import open_engine
from guard.errors import ConfigError, TextTooLongError
from guard.hashing import file_sha256
from guard.models import build_onnx_models
from guard.records import Vectors
from guard.stores import open_store

pytestmark = pytest.mark.slow

THRESHOLDS = Thresholds()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray(np.einsum("ij,ij->i", a, b), dtype=np.float64)


def embed(uri: str, texts: Sequence[str]) -> Vectors:
    with open_engine(uri) as engine:
        return engine.embed(list(texts))


@pytest.fixture(scope="module")
def fidelity_texts(corpus: list[str], long_texts: list[str]) -> list[str]:
    """Every paragraph over 256 tokens and every fourth of the others (about 380)."""
    longs = set(long_texts)
    return long_texts + [text for text in corpus if text not in longs][::4]


@pytest.fixture(scope="module")
def reference(st_model_dir: Path, fidelity_texts: list[str]) -> Vectors:
    return embed(f"st:{st_model_dir}", fidelity_texts)


@pytest.fixture(scope="module")
def check_texts(fidelity_texts: list[str], long_texts: list[str]) -> list[str]:
    """About 140 of them: 20 over 256 tokens, the others short."""
    return fidelity_texts[:20] + fidelity_texts[len(long_texts) :: 3][:130]


@pytest.fixture
def st_store(
    new_store_uri: Callable[..., str],
    fidelity_texts: list[str],
    check_texts: list[str],
    reference: Vectors,
) -> str:
    """A store of the test's kind written by sentence-transformers (the reference)."""
    index = {text: i for i, text in enumerate(fidelity_texts)}
    vectors = reference[[index[text] for text in check_texts]]
    return write_store(new_store_uri(), check_texts, vectors)


# -- fidelity --------------------------------------------------------------------------------


def test_fp32_reproduces_the_reference_with_no_options(
    onnx_dir: Path, fidelity_texts: list[str], reference: Vectors, long_texts: list[str]
) -> None:
    vectors = embed(f"onnx:{onnx_dir}", fidelity_texts)
    cos = cosines(vectors, reference)
    assert np.percentile(cos, 1) >= 0.99999, np.percentile(cos, 1)
    assert cos[: len(long_texts)].min() >= 0.99999  # cut at 256 tokens, [SEP] kept
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_int8_is_an_int8_model_of_the_same_space(
    onnx_models: dict[str, Path], fidelity_texts: list[str], reference: Vectors
) -> None:
    assert onnx_models["ONNX_INT8"].stat().st_size < onnx_models["ONNX_FP32"].stat().st_size / 3
    folder = onnx_models["ONNX_FP32"].parents[1]
    cos = cosines(embed(f"onnx:{folder}?file=onnx/model_qint8.onnx", fidelity_texts), reference)
    assert 0.8 < np.median(cos) < 1.0


def test_int8_vectors_do_not_depend_on_the_batch(onnx_dir: Path, corpus: list[str]) -> None:
    """Dynamic quantisation scales activations over the whole input tensor, so batched
    runs would tie a text's vector to its batch-mates: the engine runs it text by text."""
    texts = corpus[:24]
    with open_engine(f"onnx:{onnx_dir}?file=onnx/model_qint8.onnx") as engine:
        assert engine.fingerprint()["model"]["dynamic_quantization"] is True
        batched = engine.embed(texts)
        alone = np.concatenate([engine.embed([text]) for text in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-6)


# -- the check ---------------------------------------------------------------------------------


def test_check_approves_the_fp32_export_with_no_options(st_store: str, onnx_dir: Path) -> None:
    """Through the real command line, as the issue's done-when says."""
    result = guard(
        "check", "--store", st_store, "--candidate", f"onnx:{onnx_dir}", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["verdict"], report["diagnosis"]) == ("approve", [])
    assert report["metrics"]["cosine"]["min"] >= 0.99999
    assert report["candidate"]["engine"] == "onnx"


def expected_verdict(cos: np.ndarray, thresholds: Thresholds) -> str:
    """What the cosines of every stored record call for under ``thresholds``, on a store
    read whole: approve when no more than ``allowed_share`` of the records fall below
    ``min_cosine`` (min above it: none do), else a re-index (quantisation noise is no
    setting to fix)."""
    share = float(np.mean(cos < thresholds.min_cosine))
    return "approve" if share <= thresholds.allowed_share else "reindex"


def test_int8_gets_the_verdict_its_cosines_call_for(
    st_store: str,
    onnx_dir: Path,
    check_texts: list[str],
    fidelity_texts: list[str],
    reference: Vectors,
) -> None:
    uri = f"onnx:{onnx_dir}?file=onnx/model_qint8.onnx"
    index = {text: i for i, text in enumerate(fidelity_texts)}
    cos = cosines(embed(uri, check_texts), reference[[index[t] for t in check_texts]])
    store = open_store(st_store)
    try:
        with open_engine(uri) as engine:
            report = run_check(store, engine, thresholds=THRESHOLDS, seed=1)
    finally:
        store.close()
    expected = expected_verdict(cos, THRESHOLDS)
    measured = report.metrics["cosine"]
    print(f"INT8 on {len(cos)} records: min {cos.min():.4f} p1 {np.percentile(cos, 1):.4f}")
    assert report.verdict == expected, (report.verdict, report.diagnosis, measured)
    assert measured["min"] >= cos.min() - 1e-4  # the check saw the same cosines
    assert measured["median"] == pytest.approx(np.median(cos), abs=0.01)


# -- options override the model's configuration ----------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "last"])
def test_pooling_option_overrides_the_pooling_module(
    onnx_dir: Path, st_model_dir: Path, short_texts: list[str], pooling: str
) -> None:
    texts = short_texts[:12]
    pooled = embed(f"onnx:{onnx_dir}?pooling={pooling}", texts)
    assert (cosines(pooled, embed(f"onnx:{onnx_dir}", texts)) < 0.99).all()
    expected = embed(f"st:{st_model_dir}?pooling={pooling}", texts)
    assert cosines(pooled, expected).min() >= 0.99999


def test_normalize_false_drops_the_normalize_module(onnx_dir: Path, short_texts: list[str]) -> None:
    texts = short_texts[:12]
    raw = embed(f"onnx:{onnx_dir}?normalize=false", texts)
    assert (np.abs(np.linalg.norm(raw, axis=1) - 1.0) > 0.01).all()
    assert cosines(raw, embed(f"onnx:{onnx_dir}", texts)).min() >= 0.99999


def test_max_tokens_cuts_the_tokenizers_way(
    onnx_dir: Path, st_model_dir: Path, long_texts: list[str]
) -> None:
    """Kept: the first 62 text tokens between [CLS] and [SEP], as sentence-transformers'
    max_seq_length cuts."""
    texts = long_texts[:8]
    with open_engine(f"onnx:{onnx_dir}?max_tokens=64") as engine:
        assert min(engine.count_tokens(texts)) > 256  # counted before the cut
        cut = engine.embed(texts)
    expected = embed(f"st:{st_model_dir}?max_tokens=64", texts)
    assert cosines(cut, expected).min() >= 0.99999
    assert (cosines(cut, embed(f"onnx:{onnx_dir}", texts)) < 0.999).all()


def test_truncate_false_refuses_long_texts(onnx_dir: Path, long_texts: list[str]) -> None:
    with (
        open_engine(f"onnx:{onnx_dir}?truncate=false") as engine,
        pytest.raises(TextTooLongError, match="over the limit of 256"),
    ):
        engine.embed(long_texts[:1])


def test_fingerprint_names_files_runtime_and_effective_settings(
    onnx_dir: Path, onnx_models: dict[str, Path]
) -> None:
    with open_engine(f"onnx:{onnx_dir}") as engine:
        base = engine.fingerprint()
        assert base["model"]["sha256"] == file_sha256(onnx_models["ONNX_FP32"])
        assert base["model"]["tokenizer_sha256"] == file_sha256(onnx_dir / "tokenizer.json")
        assert base["versions"]["onnxruntime"]
        assert (base["settings"]["pooling"], base["settings"]["token_limit"]) == ("mean", 256)
        assert (base["settings"]["model_normalizes"], base["settings"]["provider"]) == (
            True,
            "cpu",
        )
        assert base == engine.with_options(n_threads=1, batch_size=3).fingerprint()
        for changed in ({"pooling": "cls"}, {"max_tokens": 64}, {"normalize": False}):
            assert base != engine.with_options(**changed).fingerprint(), changed
    with open_engine(f"onnx:{onnx_dir}?file=onnx/model_qint8.onnx") as int8:
        assert int8.fingerprint()["model"]["sha256"] == file_sha256(onnx_models["ONNX_INT8"])


def test_threads_and_batches_do_not_change_vectors(onnx_dir: Path, corpus: list[str]) -> None:
    """Length-sorted, padded batches come back in the order given."""
    texts = [*corpus[:40:3], "a", "b c"]
    with open_engine(f"onnx:{onnx_dir}") as engine:
        base = engine.embed(texts)
        other = engine.with_options(n_threads=1, batch_size=4).embed(texts)
        single = np.concatenate([engine.embed([text]) for text in texts])
    assert cosines(other, base).min() >= 0.99999
    assert cosines(single, base).min() >= 0.99999


# -- layouts ------------------------------------------------------------------------------------


def _folder(tmp_path: Path, onnx_dir: Path, **files: str) -> Path:
    """A folder of symlinks: name -> path inside the export folder."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (tmp_path / name).symlink_to(onnx_dir / source)
    return tmp_path


def test_an_optimum_folder_uses_its_own_config(
    tmp_path: Path, onnx_dir: Path, st_model_dir: Path, corpus: list[str], long_texts: list[str]
) -> None:
    """model.onnx, tokenizer.json, config.json: no Pooling or Normalize module and no
    max_seq_length, so mean pooling, raw lengths and the tokenizer's 512 tokens."""
    folder = _folder(
        tmp_path / "optimum",
        onnx_dir,
        **{
            "model.onnx": "onnx/model.onnx",
            "tokenizer.json": "tokenizer.json",
            "tokenizer_config.json": "tokenizer_config.json",
            "config.json": "config.json",
        },
    )
    texts = [*corpus[:6], *long_texts[:4]]
    expected = embed(f"st:{st_model_dir}", texts)
    with open_engine(f"onnx:{folder}") as engine:
        settings = engine.fingerprint()["settings"]
        assert (settings["token_limit"], settings["model_normalizes"]) == (512, False)
        assert engine.fingerprint()["model"]["layout"] == "optimum"
        vectors = engine.embed(texts)
        assert cosines(vectors[:6], expected[:6]).min() >= 0.99999
        assert (cosines(vectors[6:], expected[6:]) < 0.9999).all()  # 512 tokens, not 256
        like_st = engine.with_options(max_tokens=256, normalize=True).embed(texts)
    np.testing.assert_allclose(like_st, expected, atol=1e-4)


def test_a_bare_onnx_file_with_its_tokenizer(
    tmp_path: Path, onnx_dir: Path, st_model_dir: Path, corpus: list[str]
) -> None:
    folder = _folder(
        tmp_path, onnx_dir, **{"minilm.onnx": "onnx/model.onnx", "tokenizer.json": "tokenizer.json"}
    )
    texts = corpus[:6]
    with open_engine(f"onnx:{folder / 'minilm.onnx'}") as engine:
        assert engine.fingerprint()["model"]["layout"] == "file"
        vectors = engine.embed(texts)
    assert cosines(vectors, embed(f"st:{st_model_dir}", texts)).min() >= 0.99999


def test_a_file_inside_a_sentence_transformers_folder_finds_its_config(
    onnx_dir: Path, corpus: list[str]
) -> None:
    with open_engine(f"onnx:{onnx_dir / 'onnx' / 'model_qint8.onnx'}") as engine:
        model = engine.fingerprint()["model"]
        assert (model["layout"], model["file"]) == (
            "sentence-transformers",
            "onnx/model_qint8.onnx",
        )
        by_file = engine.embed(corpus[:4])
    np.testing.assert_allclose(
        by_file, embed(f"onnx:{onnx_dir}?file=onnx/model_qint8.onnx", corpus[:4]), atol=1e-6
    )


def test_bad_options_are_refused_before_loading(onnx_dir: Path) -> None:
    with pytest.raises(ConfigError, match="provider must be cpu or cuda"):
        open_engine(f"onnx:{onnx_dir}?provider=tpu")
    with pytest.raises(ConfigError, match="unknown engine option"):
        open_engine(f"onnx:{onnx_dir}?files=onnx/model.onnx")
    with pytest.raises(ConfigError, match="file= picks a file in a folder"):
        open_engine(f"onnx:{onnx_dir / 'onnx' / 'model.onnx'}?file=x.onnx").embed(["x"])


# -- bad input through the real command line -----------------------------------------------------


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory, onnx_dir: Path, corpus: list[str]) -> str:
    folder = tmp_path_factory.mktemp("onnx-store")
    texts = corpus[:20]
    return write_store(
        f"qdrant+local:{folder}?collection=docs", texts, embed(f"onnx:{onnx_dir}", texts)
    )


def _no_outputs_model(path: Path) -> None:
    """A real ONNX graph that takes the inputs and returns token counts (int64, rank 1):
    neither token embeddings nor a sentence embedding."""
    from onnx import TensorProto, helper, save

    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask")
    ]
    output = helper.make_tensor_value_info("token_count", TensorProto.INT64, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceSum", ["attention_mask", "axes"], ["token_count"], keepdims=0)
    graph = helper.make_graph([node], "counts", inputs, [output], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))


def _bad_candidate(kind: str, tmp_path: Path, onnx_dir: Path) -> tuple[str, str]:
    """(candidate URI, what the one line says) for each kind of bad input."""
    if kind == "missing":
        return f"onnx:{tmp_path / 'nowhere'}", "ONNX model not found"
    if kind == "not_onnx":
        folder = _folder(tmp_path, onnx_dir, **{"tokenizer.json": "tokenizer.json"})
        (folder / "model.onnx").write_text("not a model\n" * 3)
        return f"onnx:{folder}", "is not an ONNX model"
    if kind == "no_tokenizer":
        folder = _folder(tmp_path, onnx_dir, **{"model.onnx": "onnx/model.onnx"})
        return f"onnx:{folder}", "no tokenizer.json"
    if kind == "no_embeddings":
        folder = _folder(tmp_path, onnx_dir, **{"tokenizer.json": "tokenizer.json"})
        _no_outputs_model(folder / "model.onnx")
        return f"onnx:{folder}", "neither token embeddings"
    if kind == "max_pooling":
        files = {name: name for name in ("tokenizer.json", "modules.json", "config.json")}
        folder = _folder(tmp_path, onnx_dir, **{"model.onnx": "onnx/model.onnx"}, **files)
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False})
        )
        return f"onnx:{folder}", "set pooling=mean, cls or last"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: provider=cuda is no error here")
    return f"onnx:{onnx_dir}?provider=cuda", "provider=cuda asked"


@pytest.mark.parametrize(
    "kind", ["missing", "not_onnx", "no_tokenizer", "no_embeddings", "max_pooling", "no_cuda"]
)
def test_bad_input_is_one_line_and_exit_2(
    kind: str, tmp_path: Path, onnx_dir: Path, small_store: str
) -> None:
    candidate, expected = _bad_candidate(kind, tmp_path, onnx_dir)
    line = assert_one_line_error(guard("check", "--store", small_store, "--candidate", candidate))
    assert line.startswith("error:")
    assert expected in line


# -- the demo models ------------------------------------------------------------------------------


def test_build_demo_makes_both_exports_in_the_sentence_transformers_layout(
    demo_models: dict[str, Path], models_cache: Path, onnx_models: dict[str, Path]
) -> None:
    """build_demo_models (the demo_models fixture) made them; asking again is a cache hit."""
    stamps = {name: path.stat().st_mtime_ns for name, path in onnx_models.items()}
    started = time.perf_counter()
    again = build_onnx_models(models_cache)
    assert again == onnx_models
    assert stamps == {name: path.stat().st_mtime_ns for name, path in again.items()}
    assert time.perf_counter() - started < 2.0
    folder = onnx_models["ONNX_FP32"].parents[1]
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "model.safetensors").exists()  # no torch weights: ONNX only
    assert not [p for p in models_cache.iterdir() if p.name.endswith(".tmp")]
    candidates = demo_candidates(demo_models)
    assert candidates["ONNX FP32"] == f"onnx:{folder}"
    assert candidates["ONNX INT8"] == f"onnx:{folder}?file=onnx/model_qint8.onnx"


def test_the_engine_needs_no_torch(onnx_dir: Path, tmp_path: Path) -> None:
    """Run time is onnxruntime and tokenizers: embedding in a fresh process imports
    neither torch nor transformers."""
    script = (
        "import sys\n"
        "from guard.engines import open_engine\n"
        f"open_engine({f'onnx:{onnx_dir}'!r}).embed(['hello'])\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GUARD_HOME": str(tmp_path)},
    )
    assert result.stdout.strip() == "[]"
