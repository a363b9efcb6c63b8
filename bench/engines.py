"""How closely each GGUF build reproduces the sentence-transformers reference on the demo
corpus, and how fast llama.cpp embeds with packed decodes versus one text per call.

    python bench/engines.py [--limit N] [--llama-cpp-src DIR]

Prints cosine statistics by token-length bucket and texts per second. Not a test.
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
from guard.models import build_demo_models, default_models_dir
from guard.paths import reference_model_dir

BUCKETS = ((1, 64), (65, 128), (129, 256), (257, 10_000))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray(np.einsum("ij,ij->i", a, b), dtype=np.float64)


def rate(engine: EmbeddingEngine, texts: Sequence[str]) -> float:
    engine.embed(texts[:8])  # load and warm up
    started = time.perf_counter()
    engine.embed(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="corpus paragraphs (default all)")
    parser.add_argument("--rate-texts", type=int, default=400)
    parser.add_argument("--llama-cpp-src", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers loads

    texts = demo_corpus(args.limit)
    models = build_demo_models(default_models_dir(), args.llama_cpp_src)
    reference = open_engine(f"st:{reference_model_dir()}")
    lengths = np.array(reference.count_tokens(texts))
    started = time.perf_counter()
    expected = reference.embed(texts)
    st_rate = len(texts) / (time.perf_counter() - started)
    print(f"{len(texts)} texts, {int((lengths > 256).sum())} over 256 tokens")

    for name, path in models.items():
        for query in ("?max_tokens=256", ""):
            engine = open_engine(f"llamacpp:{path}{query}")
            cos = cosines(engine.embed(texts), expected)
            buckets = "  ".join(
                f"{lo}-{hi}: min {cos[(lengths >= lo) & (lengths <= hi)].min():.6f}"
                for lo, hi in BUCKETS
                if ((lengths >= lo) & (lengths <= hi)).any()
            )
            label = f"{name}{query or ' (no max_tokens)'}"
            print(
                f"{label:28} min {cos.min():.6f}  p1 {np.percentile(cos, 1):.6f}  "
                f"median {np.median(cos):.7f}  | {buckets}"
            )
            engine.close()

    sample = texts[: args.rate_texts]
    packed = open_engine(f"llamacpp:{models['F16']}?max_tokens=256")
    single = packed.with_options(batch_size=1)
    packed_rate, single_rate = rate(packed, sample), rate(single, sample)
    print(
        f"F16 texts/s: packed batches {packed_rate:.1f}, one by one {single_rate:.1f} "
        f"(x{packed_rate / single_rate:.2f}); sentence-transformers {st_rate:.1f}"
    )


if __name__ == "__main__":
    main()
