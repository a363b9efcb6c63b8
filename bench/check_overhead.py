"""What `guard check` costs beyond embedding, and how many records the bound needs.

    python bench/check_overhead.py [--records 1000] [--store pgserver|qdrant]

Fills an embedded store with demo-corpus paragraphs embedded by llama.cpp F16 (with the
reference's 256-token limit), then, in one run:
- checks the same engine and divides the check's wall time by the raw engine's time on
  exactly the texts the check embedded (target: at most 1.10);
- reports how many records the sequential bound needed before it decided, for an
  identical, a Q8_0, a Q4_0 and a rotated (different-space) candidate, next to the
  fewest any exact test needs for the store's size (target for the identical engine:
  at most 1.10x).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from guard.checking.run import run_check
from guard.core.policy import Thresholds
from guard.core.stats import fewest_to_approve
from guard.corpus import demo_corpus
from guard.engines import open_engine
from guard.logs import configure
from guard.models import build_demo_models
from guard.paths import models_dir
from guard.records import RecordBatch
from guard.stores import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--store", choices=["pgserver", "qdrant"], default="pgserver")
    args = parser.parse_args()
    configure()

    built = build_demo_models(models_dir())
    texts = demo_corpus(args.records)
    f16 = f"llamacpp:{built['F16']}?max_tokens=256"
    engine = open_engine(f16)
    vectors = engine.embed(texts)
    engine.close()
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(vectors.shape[1],) * 2))

    folder = Path(tempfile.mkdtemp(prefix="vmg-bench-", dir="/tmp"))
    stores = {
        "F16": _fill(folder, args.store, "f16", texts, vectors),
        "rotated": _fill(folder, args.store, "rot", texts, (vectors @ rotation).astype(np.float32)),
    }
    thresholds = Thresholds()

    # 1. Overhead: the whole check against the raw engine on the same texts.
    store = open_store(stores["F16"])
    engine = open_engine(f16)
    started = time.perf_counter()
    report = run_check(store, engine, thresholds=thresholds, seed=1)
    check_seconds = time.perf_counter() - started
    embedded = (
        store.sample(thresholds.max_sample, seed=1).with_text().texts[: report.sample["size"]]
    )
    raw = open_engine(f16)
    started = time.perf_counter()
    raw.embed([text or "" for text in embedded])
    raw_seconds = time.perf_counter() - started
    print(
        f"check of {report.sample['size']} records: {check_seconds:.2f} s, verdict {report.verdict}"
    )
    print(f"raw engine on the same texts:  {raw_seconds:.2f} s")
    print(f"check / raw engine:            {check_seconds / raw_seconds:.3f}  (target <= 1.10)")
    print("check phases:", {k: round(v, 2) for k, v in report.timing.items()})
    store.close()

    # 2. Records the sequential bound needed before deciding.
    print()
    fewest = fewest_to_approve(thresholds.allowed_share, thresholds.confidence, len(texts))
    print(f"fewest records any exact test can approve with on {len(texts)}: {fewest}")
    print(f"{'candidate':<10} {'verdict':<17} {'records':>7} {'/ fewest':>8} {'rounds':>6}  causes")
    for name, store_key, uri in [
        ("identical", "F16", f16),
        ("Q8_0", "F16", f"llamacpp:{built['Q8_0']}?max_tokens=256"),
        ("Q4_0", "F16", f"llamacpp:{built['Q4_0']}?max_tokens=256"),
        ("rotated", "rotated", f16),
    ]:
        store = open_store(stores[store_key])
        candidate = open_engine(uri)
        result = run_check(store, candidate, thresholds=thresholds, seed=1)
        causes = ",".join(f["cause"] for f in result.diagnosis) or "-"
        measured = result.bound["n"] if result.bound else result.sample["size"]
        print(
            f"{name:<10} {result.verdict:<17} {measured:>7} {measured / fewest:>8.2f} "
            f"{result.sample['rounds']:>6}  {causes}"
        )
        candidate.close()
        store.close()


def _fill(folder: Path, kind: str, name: str, texts: list[str], vectors: np.ndarray) -> str:
    uri = (
        f"pgserver:{folder / 'pg'}?table={name}"
        if kind == "pgserver"
        else f"qdrant+local:{folder / 'qdrant'}?collection={name}"
    )
    store = open_store(uri)
    store.create(dims=vectors.shape[1], distance="cosine")
    for start in range(0, len(texts), 500):
        stop = min(start + 500, len(texts))
        store.upsert(
            RecordBatch(tuple(range(start, stop)), tuple(texts[start:stop]), vectors[start:stop])
        )
    store.close()
    return uri


if __name__ == "__main__":
    main()
