"""How closely each GGUF build and ONNX export reproduces the sentence-transformers
reference on the demo corpus, and how fast each engine embeds it with equal threads.

    python bench/engines.py [--limit N] [--rate-texts 400] [--threads N] [--llama-cpp-src DIR]

Prints cosine statistics by token-length bucket; texts per second of llama.cpp (packed
batches and one by one), sentence-transformers on torch, model2vec and the guard's ONNX
engine (FP32, INT8) on the same texts with the same thread count; and the ratio of the
ONNX engine to sentence-transformers on torch. Not a test.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from guard.corpus import demo_corpus
from guard.engines import EmbeddingEngine, open_engine
from guard.models import (
    build_demo_models,
    build_onnx_models,
    build_static_model,
    default_models_dir,
)
from guard.paths import reference_model_dir

BUCKETS = ((1, 64), (65, 128), (129, 256), (257, 10_000))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray(np.einsum("ij,ij->i", a, b), dtype=np.float64)


def rate(engine: EmbeddingEngine, texts: Sequence[str], repeats: int = 3) -> float:
    """Texts per second, the best of ``repeats`` runs: on a shared machine the best run
    is the one least disturbed by others."""
    engine.embed(texts[:8])  # load and warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        engine.embed(texts)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def st_onnx_rate(folder: Path, texts: Sequence[str]) -> float | str:
    """Texts/s of sentence-transformers' own ONNX backend on the same FP32 file, or why
    it cannot run here."""
    try:
        import optimum.onnxruntime  # noqa: F401
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return (
            "sentence-transformers' own ONNX backend (backend='onnx') needs optimum-onnx, "
            "whose optimum pins transformers<4.58; this environment has transformers 5 "
            "(pip install --dry-run 'optimum-onnx[onnxruntime]' would downgrade it to "
            "4.57.6), so it is not measured here"
        )
    model = SentenceTransformer(
        str(folder), backend="onnx", device="cpu", model_kwargs={"file_name": "onnx/model.onnx"}
    )
    model.encode(list(texts[:8]))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        model.encode(list(texts), batch_size=32)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="corpus paragraphs (default all)")
    parser.add_argument("--rate-texts", type=int, default=400)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-cpp-src", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch and llama.cpp share it

    texts = demo_corpus(args.limit)
    models = build_demo_models(default_models_dir(), args.llama_cpp_src)
    onnx = build_onnx_models(default_models_dir())
    folder = onnx["ONNX_FP32"].parents[1]
    threads = f"n_threads={args.threads}"
    reference = open_engine(f"st:{reference_model_dir()}?{threads}")
    lengths = np.array(reference.count_tokens(texts))
    expected = reference.embed(texts)
    print(f"{len(texts)} texts, {int((lengths > 256).sum())} over 256 tokens")

    candidates = [
        (f"{name}{query or ' (no max_tokens)'}", f"llamacpp:{path}{query}")
        for name, path in models.items()
        for query in ("?max_tokens=256", "")
    ]
    candidates += [
        ("ONNX FP32", f"onnx:{folder}"),
        ("ONNX INT8", f"onnx:{folder}?file={onnx['ONNX_INT8'].relative_to(folder)}"),
    ]
    for label, uri in candidates:
        with open_engine(uri) as engine:
            cos = cosines(engine.embed(texts), expected)
        buckets = "  ".join(
            f"{lo}-{hi}: min {cos[(lengths >= lo) & (lengths <= hi)].min():.6f}"
            for lo, hi in BUCKETS
            if ((lengths >= lo) & (lengths <= hi)).any()
        )
        print(
            f"{label:28} min {cos.min():.6f}  p1 {np.percentile(cos, 1):.6f}  "
            f"median {np.median(cos):.7f}  | {buckets}"
        )

    sample = texts[: args.rate_texts]
    print(f"texts/s on {len(sample)} paragraphs, {args.threads} threads each, best of 3 runs:")
    f16 = open_engine(f"llamacpp:{models['F16']}?max_tokens=256&{threads}")
    speeds = {
        "llama.cpp F16": rate(f16, sample),
        "llama.cpp F16 one by one": rate(f16.with_options(batch_size=1), sample),
    }
    for name in ("Q8_0", "Q4_0"):
        with open_engine(f"llamacpp:{models[name]}?max_tokens=256&{threads}") as engine:
            speeds[f"llama.cpp {name}"] = rate(engine, sample)
    f16.close()
    speeds["sentence-transformers (torch)"] = rate(reference, sample)
    with open_engine(f"model2vec:{build_static_model(default_models_dir())}") as engine:
        speeds["model2vec (static)"] = rate(engine, sample)
    for label, uri in candidates[-2:]:
        with open_engine(f"{uri}{'&' if '?' in uri else '?'}{threads}") as engine:
            speeds[f"guard {label}"] = rate(engine, sample)
    backend = st_onnx_rate(folder, sample)
    if isinstance(backend, float):
        speeds["sentence-transformers ONNX FP32"] = backend
    torch_rate = speeds["sentence-transformers (torch)"]
    for name, value in speeds.items():
        print(f"  {name:32} {value:8.1f}   x{value / torch_rate:.2f} of sentence-transformers")
    print(
        f"guard ONNX FP32 / sentence-transformers on torch: "
        f"x{speeds['guard ONNX FP32'] / torch_rate:.2f}; "
        f"INT8: x{speeds['guard ONNX INT8'] / torch_rate:.2f}"
    )
    if isinstance(backend, str):
        print(backend)
    else:
        ratio = speeds["guard ONNX FP32"] / backend
        print(f"guard ONNX FP32 / sentence-transformers' ONNX backend: x{ratio:.2f}")


if __name__ == "__main__":
    main()
