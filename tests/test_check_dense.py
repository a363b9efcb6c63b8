"""The EmbeddingGemma case built for real: a sentence-transformers model with a Dense
projection after pooling writes the store, and the candidate is the GGUF that llama.cpp's
converter makes of that very model.

What the converter does, checked by ``test_the_converter_drops_the_dense_module``:
convert_hf_to_gguf.py writes only the BERT transformer of the folder and ignores
modules.json (its ``--sentence-transformers-dense-modules`` flag is off by default and
honoured for Gemma models only). The GGUF of MiniLM + Dense(384 -> 768) says
``bert.embedding_length`` 384 and holds the 101 tensors of the plain model, none of them
a dense projection: its vectors are the stored ones before the projection and the
normalisation, which is exactly what a bridge can undo.

Cases, each on qdrant local mode and pgvector, all through the ``guard`` process:
- Dense 384 -> 768 and a Dense 384 -> 384 that is not orthogonal (seeded N(0, 1/384)
  weights, identity activation, no bias as in EmbeddingGemma): ``fix_config`` /
  ``projection_mismatch`` with an affine bridge, then ``?bridge=PATH`` approves;
- MiniLM cut to its first two layers writes the store, the full MiniLM GGUF is the
  candidate: ``reindex``, no bridge file, the best bridge's figures in the report.

Sizes: the bridge follows ``plan_bridge``: 578 fitting rows (1.5 per parameter of
384 inputs plus a bias), a first look on 100 held-out rows that only stops a hopeless
bridge, then the fewest held-out rows that carry the 99% bound under 1% with no failure
(the fitting rows' own cosines counted as measured, the rest bounded exactly). The
bridge's input is the candidate's 384, so the 768 case needs no more records.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures_stores import write_store
from test_cli import guard

from guard.core.bridge import plan_bridge
from guard.engines import open_engine
from guard.models import build_cut_model, build_projection_model
from guard.records import RecordBatch, Vectors
from guard.stores import open_store

RECORDS = 1100


@pytest.fixture(scope="module")
def sentences(corpus: list[str]) -> list[str]:
    """Short distinct sentences: many records at a small embedding cost."""
    split = (s for text in corpus for s in re.split(r"(?<=[.!?])\s+", text))
    unique = list(dict.fromkeys(s for s in split if 40 <= len(s) <= 200))
    assert len(unique) >= RECORDS
    return unique[:RECORDS]


@pytest.fixture(scope="module")
def projections(models_cache: Path, llama_cpp_src: Path) -> dict[int, tuple[Path, Path]]:
    """Output size -> (sentence-transformers folder with the Dense layer, its GGUF)."""
    return {
        size: build_projection_model(models_cache, size, seed=size, llama_cpp_src=llama_cpp_src)
        for size in (768, 384)
    }


@pytest.fixture(scope="module")
def written_by(sentences: list[str]) -> Callable[[Path], Vectors]:
    """The stored vectors each sentence-transformers folder writes, embedded once."""
    made: dict[Path, Vectors] = {}

    def rows(folder: Path) -> Vectors:
        if folder not in made:
            engine = open_engine(f"st:{folder}")
            try:
                made[folder] = engine.embed(sentences)
            finally:
                engine.close()
        return made[folder]

    return rows


@pytest.fixture
def filled(new_store_uri: Callable[..., str], sentences: list[str]) -> Callable[[Vectors], str]:
    def make(vectors: Vectors) -> str:
        return write_store(new_store_uri(), sentences, vectors)

    return make


def _check(store: str, candidate: str, *more: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = guard(
        "check", "--store", store, "--candidate", candidate, "--sample", str(RECORDS),
        "--format", "json", *more,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def test_the_converter_drops_the_dense_module(
    projections: dict[int, tuple[Path, Path]], llama_cpp_src: Path
) -> None:
    """The GGUF of MiniLM + Dense(384 -> 768) is 384 wide and has no dense tensor."""
    folder, gguf = projections[768]
    assert (folder / "2_Dense" / "config.json").is_file()
    script = (
        "import json, sys; from gguf import GGUFReader; r = GGUFReader(sys.argv[1]); "
        "f = r.fields['bert.embedding_length']; "
        "print(json.dumps([int(f.parts[f.data[0]][0]), [t.name for t in r.tensors]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(gguf)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(llama_cpp_src / "gguf-py")},
    )
    width, tensors = json.loads(result.stdout)
    assert width == 384
    assert [name for name in tensors if "dense_2" in name or "dense_3" in name] == []
    assert [name for name in tensors if not name.startswith(("token", "blk.", "position"))] == []
    assert len(tensors) == 101


@pytest.mark.parametrize("size", [768, 384])
def test_a_store_written_through_a_dense_layer_gets_a_bridge_that_then_approves(
    size: int,
    projections: dict[int, tuple[Path, Path]],
    written_by: Callable[[Path], Vectors],
    filled: Callable[[Vectors], str],
    tmp_path: Path,
) -> None:
    """Stored by MiniLM + Dense(384 -> size), checked against its own converted GGUF."""
    folder, gguf = projections[size]
    store = filled(written_by(folder))
    out = tmp_path / "bridge.npz"

    code, report = _check(store, f"llamacpp:{gguf}", "--bridge-out", str(out))

    assert (code, report["verdict"]) == (3, "fix_config"), report["diagnosis"]
    assert [f["cause"] for f in report["diagnosis"]] == ["projection_mismatch"]
    bridge = report["bridge"]
    assert (str(out), True, "affine") == (bridge["path"], bridge["passed"], bridge["kind"])
    assert (384, size) == (bridge["input_dims"], bridge["output_dims"])
    look = plan_bridge(RECORDS, 384, allowed_share=0.01, confidence=0.99, population=RECORDS)
    assert (bridge["fitted_on"], bridge["validated_on"]) == (578, look.looks[1].held_out)
    assert bridge["held_out_cosine"]["min"] >= 0.999
    assert bridge["overlap_at_k"] >= 0.9

    code, approved = _check(store, f"llamacpp:{gguf}?bridge={out}")

    assert (code, approved["verdict"]) == (0, "approve"), approved["diagnosis"]
    assert approved["metrics"]["cosine"]["min"] >= 0.999


def test_a_store_written_by_another_model_stays_reindex_without_a_bridge(
    models_cache: Path,
    gguf_f16: Path,
    written_by: Callable[[Path], Vectors],
    filled: Callable[[Vectors], str],
    tmp_path: Path,
) -> None:
    """MiniLM cut to two layers wrote the store; the full MiniLM GGUF is the candidate."""
    store = filled(written_by(build_cut_model(models_cache, 2)))
    out = tmp_path / "bridge.npz"

    code, report = _check(store, f"llamacpp:{gguf_f16}", "--bridge-out", str(out))

    assert (code, report["verdict"]) == (1, "reindex")
    assert [f["cause"] for f in report["diagnosis"]] == ["different_space"]
    assert "the best linear bridge" in report["diagnosis"][0]["evidence"]
    assert not out.exists()
    bridge = report["bridge"]
    assert (bridge["path"], bridge["passed"], bridge["fitted_on"]) == (None, False, 578)
    assert (bridge["stopped"], bridge["validated_on"]) == ("ruled_out", 100)
    assert bridge["failures"] > 0
    assert bridge["held_out_cosine"]["median"] < 0.99
    assert bridge["share_below_threshold_upper"] > 0.01


FEW = 200  # records of the monitor's and the re-index's stores (the bridge is fitted once)


@pytest.fixture(scope="module")
def bridge_768(
    projections: dict[int, tuple[Path, Path]],
    written_by: Callable[[Path], Vectors],
    sentences: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict]:  # type: ignore[type-arg]
    """The bridge `guard check` fits for the 768 case, once, and its report's figures."""
    folder, gguf = projections[768]
    where = tmp_path_factory.mktemp("bridge")
    uri = f"qdrant+local:{where / 'qdrant'}?collection=dense768"
    store = open_store(uri)
    store.create(dims=768, distance="cosine")
    store.upsert(RecordBatch(tuple(range(RECORDS)), tuple(sentences), written_by(folder)))
    store.close()
    code, report = _check(uri, f"llamacpp:{gguf}", "--bridge-out", str(where / "bridge.npz"))
    assert code == 3, report["diagnosis"]
    return Path(report["bridge"]["path"]), report["bridge"]


@pytest.fixture
def few_768(
    projections: dict[int, tuple[Path, Path]],
    written_by: Callable[[Path], Vectors],
    new_store_uri: Callable[..., str],
    sentences: list[str],
) -> str:
    """A store of the first FEW records the Dense 768 model wrote."""
    uri = new_store_uri()
    store = open_store(uri)
    store.create(dims=768, distance="cosine")
    rows = written_by(projections[768][0])[:FEW]
    store.upsert(RecordBatch(tuple(range(FEW)), tuple(sentences[:FEW]), rows))
    store.close()
    return uri


def _monitor(toml: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = guard("monitor", "--config", str(toml), "--once", "--format", "json")
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def test_monitor_with_the_bridge_reports_no_drift(
    few_768: str,
    projections: dict[int, tuple[Path, Path]],
    bridge_768: tuple[Path, dict],  # type: ignore[type-arg]
    state_dsn: str,
    tmp_path: Path,
) -> None:
    """The production engine is the GGUF with bridge=PATH: ok (exit 0); without it the
    same watch is not ok."""
    gguf, (path, _) = projections[768][1], bridge_768
    toml = tmp_path / "guard.toml"
    for name, engine in (
        ("bridged", f"llamacpp:{gguf}?bridge={path}"),
        ("plain", f"llamacpp:{gguf}"),
    ):
        toml.write_text(
            f'[monitor]\nstate_dsn = "{state_dsn}"\n\n'
            f'[[watch]]\nname = "{name}"\nstore = "{few_768}"\nengine = "{engine}"\n'
            'schedule = "every 15m"\n',
            encoding="utf-8",
        )
        code, report = _monitor(toml)
        if name == "bridged":
            assert (code, report["runs"][0]["status"]) == (0, "ok"), report
        else:
            assert code != 0
            assert report["runs"][0]["status"] != "ok"


def test_reindex_through_the_bridge_writes_into_the_stored_space(
    few_768: str,
    projections: dict[int, tuple[Path, Path]],
    bridge_768: tuple[Path, dict],  # type: ignore[type-arg]
    state_dsn: str,
) -> None:
    """`guard reindex plan|run|verify` with bridge=PATH: the target's vectors are the
    stored ones to the bridge's held-out cosine."""
    gguf, (path, figures) = projections[768][1], bridge_768
    planned = guard(
        "reindex", "plan", "--store", few_768, "--candidate", f"llamacpp:{gguf}?bridge={path}",
        "--batch-size", "50", "--format", "json",
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    job_id, target = (json.loads(planned.stdout)[key] for key in ("job_id", "target"))
    ran = guard("reindex", "run", job_id, "--format", "json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["stopped"] == "done"
    verified = guard("reindex", "verify", job_id, "--format", "json")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    stored, rewritten = _by_id(few_768), _by_id(target)
    assert sorted(stored) == sorted(rewritten)
    ids = sorted(stored)
    a = np.stack([stored[i] for i in ids]).astype(np.float64)
    b = np.stack([rewritten[i] for i in ids]).astype(np.float64)
    cosines = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (a.shape[1], b.shape[1]) == (768, 768)
    # 1e-4: llama.cpp rows move that little with the batch they are embedded in
    assert float(cosines.min()) >= figures["held_out_cosine"]["min"] - 1e-4


def _by_id(uri: str) -> dict[object, np.ndarray]:  # type: ignore[type-arg]
    store = open_store(uri)
    try:
        return {
            record_id: batch.vectors[i]
            for batch in store.scan(batch_size=100)
            for i, record_id in enumerate(batch.ids)
        }
    finally:
        store.close()


PROBED = 1600  # records: a first look (578 fitted, 100 held out) and two more planned


@pytest.mark.parametrize(("writer", "bridged"), [("cut2", False), ("dense768", True)])
def test_the_bridge_plan_stops_a_hopeless_bridge_and_lets_a_linear_one_through(
    writer: str,
    bridged: bool,
    models_cache: Path,
    corpus: list[str],
    gguf_f16: Path,
    projections: dict[int, tuple[Path, Path]],
    new_store_uri: Callable[..., str],
    tmp_path: Path,
) -> None:
    """The 2-layer model's store stops at the plan's first look (578 fitted, 100 held
    out); the Dense layer's store goes on past it and its bridge passes at the next."""
    split = (s for text in corpus for s in re.split(r"(?<=[.!?])\s+", text))
    texts = list(dict.fromkeys(s for s in split if 40 <= len(s) <= 200))[:PROBED]
    folder, gguf = projections[768]
    source, candidate = (
        (build_cut_model(models_cache, 2), f"llamacpp:{gguf_f16}")
        if writer == "cut2"
        else (folder, f"llamacpp:{gguf}")
    )
    with open_engine(f"st:{source}") as engine:
        store = write_store(new_store_uri(), texts, engine.embed(texts))

    result = guard(
        "check", "--store", store, "--candidate", candidate, "--sample", str(PROBED),
        "--format", "json", "--bridge-out", str(tmp_path / "b.npz"),
    )  # fmt: skip
    bridge = json.loads(result.stdout)["bridge"]

    assert bridge["passed"] is bridged
    if bridged:
        assert (bridge["fitted_on"], bridge["held_out_cosine"]["min"] >= 0.999) == (578, True)
        assert (bridge["stopped"], bridge["looks_taken"]) == ("passed", 2)
    else:
        assert (bridge["fitted_on"], bridge["validated_on"]) == (578, 100)
        assert (bridge["stopped"], bridge["looks_taken"]) == ("ruled_out", 1)
        assert bridge["held_out_cosine"]["median"] < 0.99
