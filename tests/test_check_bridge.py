"""Fitted bridges end to end: a store a linear map away from the candidate gets
``fix_config`` / ``projection_mismatch`` and a bridge file; the candidate with
``bridge=PATH`` is then approved; an unrelated model stays ``reindex`` with the best
bridge's figures. Real stores, llama.cpp F16 as the candidate, the `guard` process.

The store holds 1,300 sentences of the demo corpus and the check samples all of them.
The bridge follows ``plan_bridge``: fitted on the first 578 (1.5 rows per parameter of
MiniLM's 384 inputs plus a bias), a first look on 100 held-out records that only stops
a hopeless bridge, then the fewest held-out records for the 99% bound to fall under 1%
with no failure. A hopeless bridge stops at that first look, and on a store too small
for the fit plus the fewest held-out records nothing is fitted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures_stores import write_store
from test_cli import assert_one_line_error, guard

from guard.core.bridge import FIRST_HELD_OUT, LinearMap, plan_bridge
from guard.engines import bridgefile, open_engine
from guard.records import Vectors

RECORDS = 1300


@pytest.fixture(scope="module")
def sentences(corpus: list[str]) -> list[str]:
    """Short distinct sentences: many records at a small embedding cost."""
    split = (s for text in corpus for s in re.split(r"(?<=[.!?])\s+", text))
    unique = list(dict.fromkeys(s for s in split if 40 <= len(s) <= 200))
    return unique[:RECORDS]


@pytest.fixture(scope="module")
def f16_rows(gguf_f16: Path, sentences: list[str]) -> Vectors:
    engine = open_engine(f"llamacpp:{gguf_f16}")
    try:
        return engine.embed(sentences)
    finally:
        engine.close()


@pytest.fixture
def filled(new_store_uri: Callable[..., str], sentences: list[str]) -> Callable[[np.ndarray], str]:
    def make(vectors: np.ndarray) -> str:
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        return write_store(new_store_uri(), sentences, rows)

    return make


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _check(store: str, candidate: str, *more: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = guard(
        "check", "--store", store, "--candidate", candidate, "--sample", str(RECORDS),
        "--format", "json", *more,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize(
    ("name", "kind"), [("rotation", "orthogonal"), ("projection_384_to_256", "affine")]
)
def test_a_store_a_linear_map_away_gets_a_bridge_that_then_approves(
    name: str,
    kind: str,
    filled: Callable[[np.ndarray], str],
    f16_rows: Vectors,
    gguf_f16: Path,
    tmp_path: Path,
) -> None:
    """What a dropped dense layer (or a rotated space) looks like: stored = unit(F16 @ M)."""
    rng = np.random.default_rng(13)
    if name == "rotation":
        matrix, _ = np.linalg.qr(rng.normal(size=(384, 384)))
    else:
        matrix = rng.normal(size=(384, 256)) / 16.0
    store = filled(_unit(f16_rows.astype(np.float64) @ matrix))
    out = tmp_path / "bridge.npz"

    code, report = _check(store, f"llamacpp:{gguf_f16}", "--bridge-out", str(out))

    assert (code, report["verdict"]) == (3, "fix_config")
    assert [f["cause"] for f in report["diagnosis"]] == ["projection_mismatch"]
    assert f"add bridge={out} to the candidate URI" == report["diagnosis"][0]["suggestion"]
    bridge = report["bridge"]
    assert (str(out), True, kind) == (bridge["path"], bridge["passed"], bridge["kind"])
    plan = plan_bridge(RECORDS, 384, allowed_share=0.01, confidence=0.99, population=RECORDS)
    look = plan.looks[1]  # the first that can approve
    assert (bridge["fitted_on"], bridge["validated_on"]) == (578, look.held_out)
    assert (bridge["stopped"], bridge["looks_taken"]) == ("passed", 2)
    # the check's first 100 records (a re-index at its first look, or a size mismatch)
    # are the bridge's first fitting records: not embedded again
    assert bridge["embedded"] == look.rows - 100
    assert bridge["held_out_cosine"]["min"] >= 0.99
    assert bridge["overlap_at_k"] >= 0.9
    assert (384, matrix.shape[1]) == (bridge["input_dims"], bridge["output_dims"])

    code, approved = _check(store, f"llamacpp:{gguf_f16}?bridge={out}")

    assert (code, approved["verdict"]) == (0, "approve"), approved["diagnosis"]
    assert bridgefile.load(out).sha256 == approved["candidate"]["settings"]["bridge"]["sha256"]


def test_an_unrelated_model_stays_reindex_with_the_best_bridges_figures(
    filled: Callable[[np.ndarray], str],
    static_model_dir: Path,
    sentences: list[str],
    gguf_f16: Path,
) -> None:
    engine = open_engine(f"model2vec:{static_model_dir}")
    try:
        store = filled(engine.embed(sentences))
    finally:
        engine.close()

    code, report = _check(store, f"llamacpp:{gguf_f16}")

    assert (code, report["verdict"]) == (1, "reindex")
    assert [f["cause"] for f in report["diagnosis"]] == ["different_space"]
    assert "the best linear bridge" in report["diagnosis"][0]["evidence"]
    bridge = report["bridge"]
    assert (bridge["path"], bridge["passed"]) == (None, False)
    assert bridge["failures"] > 0
    assert bridge["held_out_cosine"]["p1"] < 0.99
    assert (bridge["stopped"], bridge["looks_taken"]) == ("ruled_out", 1)
    assert (bridge["fitted_on"], bridge["validated_on"]) == (578, FIRST_HELD_OUT)


def test_a_hopeless_bridge_embeds_a_small_share_of_a_large_store(
    new_store_uri: Callable[..., str],
    static_model_dir: Path,
    sentences: list[str],
    gguf_f16: Path,
) -> None:
    """6,000 records an unrelated model wrote, the default sample of 2,000: the check
    stops at its first 100 records, the bridge at its first look (578 fitted, 100 held
    out), having embedded 578 records itself: under a tenth of the store."""
    texts = [f"{s} ({copy})" for copy in range(5) for s in sentences][:6000]
    engine = open_engine(f"model2vec:{static_model_dir}")
    try:
        store = write_store(new_store_uri(), texts, engine.embed(texts))
    finally:
        engine.close()

    result = guard("check", "--store", store, "--candidate", f"llamacpp:{gguf_f16}",
                   "--format", "json")  # fmt: skip

    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert (result.returncode, report["verdict"]) == (1, "reindex")
    bridge = report["bridge"]
    assert (bridge["stopped"], bridge["looks_taken"]) == ("ruled_out", 1)
    assert (bridge["fitted_on"], bridge["validated_on"]) == (578, FIRST_HELD_OUT)
    assert bridge["embedded"] + report["sample"]["size"] == 578 + FIRST_HELD_OUT
    assert bridge["embedded"] <= 0.1 * len(texts)


def test_a_store_too_small_for_any_approving_look_fits_no_bridge(
    new_store_uri: Callable[..., str],
    static_model_dir: Path,
    sentences: list[str],
    gguf_f16: Path,
) -> None:
    """500 records: the 578 fitting rows alone exceed the store, so nothing is fitted or
    embedded for a bridge, and the report and the diagnosis say why."""
    engine = open_engine(f"model2vec:{static_model_dir}")
    try:
        store = write_store(new_store_uri(), sentences[:500], engine.embed(sentences[:500]))
    finally:
        engine.close()

    code, report = _check(store, f"llamacpp:{gguf_f16}")

    assert (code, report["verdict"]) == (1, "reindex")
    bridge = report["bridge"]
    assert (bridge["stopped"], bridge["looks"], bridge["embedded"]) == ("too_small", [], 0)
    assert (bridge["path"], bridge["fitted_on"], bridge["validated_on"]) == (None, 0, 0)
    assert bridge["stop_reason"].startswith("a sample of 500 records is too small for a bridge")
    assert "no linear bridge was fitted" in report["diagnosis"][0]["evidence"]


def _save(tmp_path: Path, input_dims: int, output_dims: int) -> Path:
    matrix = np.eye(input_dims, output_dims)
    bridge = LinearMap("affine", matrix, np.zeros(output_dims), {"ridge": 0.0})
    return bridgefile.save(bridge, tmp_path / "b.npz", fitted_between={}, validation={})


def test_a_bridge_of_the_wrong_input_size_is_one_line_exit_2(
    static_model_dir: Path, filled: Callable[[np.ndarray], str], tmp_path: Path
) -> None:
    f16_store = filled(_unit(np.random.default_rng(1).normal(size=(RECORDS, 384))))
    path = _save(tmp_path, 128, 384)
    result = guard(
        "check", "--store", f16_store, "--candidate", f"model2vec:{static_model_dir}?bridge={path}"
    )
    line = assert_one_line_error(result)
    assert "takes 128-dimensional vectors, but the engine makes 384-dimensional ones" in line


def test_a_file_that_is_not_a_bridge_is_one_line_exit_2(
    static_model_dir: Path, filled: Callable[[np.ndarray], str], tmp_path: Path
) -> None:
    f16_store = filled(_unit(np.random.default_rng(1).normal(size=(RECORDS, 384))))
    path = tmp_path / "not-a-bridge.npz"
    np.savez(path, matrix=np.eye(3))
    result = guard(
        "check", "--store", f16_store, "--candidate", f"model2vec:{static_model_dir}?bridge={path}"
    )
    assert f"{path} is not a guard bridge file" in assert_one_line_error(result)


def test_bridge_is_applied_before_normalize_and_its_sha256_is_in_the_fingerprint(
    static_model_dir: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    matrix, bias = rng.normal(size=(384, 64)), rng.normal(size=64)
    path = bridgefile.save(
        LinearMap("affine", matrix, bias), tmp_path / "b.npz", fitted_between={}, validation={}
    )
    plain = open_engine(f"model2vec:{static_model_dir}")
    bridged = open_engine(f"model2vec:{static_model_dir}?bridge={path}&normalize=true")
    texts = ["a bridge maps one space onto another", "the stored vectors stay put"]
    try:
        raw = plain.embed(texts).astype(np.float64) @ matrix + bias
        expected = _unit(raw)
        assert np.allclose(expected, bridged.embed(texts), atol=1e-5)
        assert bridgefile.load(path).sha256 == bridged.fingerprint()["settings"]["bridge"]["sha256"]
        assert "bridge" not in str(plain.fingerprint()["settings"].get("bridge") or "")
    finally:
        plain.close()
        bridged.close()


def test_compare_measures_retrieval_through_the_bridge_the_check_fitted(
    filled: Callable[[np.ndarray], str],
    f16_rows: Vectors,
    gguf_f16: Path,
    sentences: list[str],
    tmp_path: Path,
) -> None:
    """A rotated store: the candidate's own queries find next to nothing through the
    store's index; the same queries through the bridge the check fitted find their
    records (queries: the first six words of every tenth sentence)."""
    rotation, _ = np.linalg.qr(np.random.default_rng(13).normal(size=(384, 384)))
    store = filled(_unit(f16_rows.astype(np.float64) @ rotation))
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"query": " ".join(sentences[i].split()[:6]), "relevant": [i]}) + "\n"
            for i in range(0, RECORDS, 10)
        ),
        encoding="utf-8",
    )

    result = guard(
        "compare", "--store", store, "--candidate", f"llamacpp:{gguf_f16}",
        "--sample", str(RECORDS), "--queries", str(queries), "--format", "json",
    )  # fmt: skip

    assert "Traceback" not in result.stderr
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    (row,) = report["candidates"]
    assert row["verdict"] == "fix_config", row
    retrieval = row["retrieval"]
    assert report["queries"]["synthetic"] is False
    assert retrieval["switch"]["recall_at_k"] < 0.1
    assert retrieval["bridged"]["recall_at_k"] >= 0.8
    low, _high = retrieval["bridged"]["recall_at_k_ci"]
    assert low > retrieval["switch"]["recall_at_k_ci"][1]
