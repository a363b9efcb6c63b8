"""What fitting and proving a bridge costs, as a share of the check's embedding time.

    python bench/bridge.py [--records 1100] [--size 768] [--store qdrant|pgserver]
                           [--texts paragraphs|sentences]

The real Dense case (guard.models.build_projection_model): all-MiniLM-L6-v2 plus a
Dense(384 -> size) layer writes the store through sentence-transformers; the candidate
is the F16 GGUF llama.cpp's converter makes of that model, which drops the Dense layer.
One `guard check` of the candidate then fits the bridge and proves it on held-out
records (the candidate cuts texts at 256 tokens as the model's sentence-transformers
configuration does, so the projection is the only difference). The candidate engine and
the store's searches are timed call by call, so the check's "bridge" phase splits into
the embedding it asked for, the overlap@k searches through the store's index, and the
bridge's own work: fitting the maps (ridge choice and the stored rows' free scales
included) and judging them on held-out records.
Goal: searches and own work together <= 5% of the check's embedding.

The texts are the demo corpus's paragraphs under 1,000 characters, as bench/compare.py
takes them (median 164 characters); `--texts sentences` takes the short sentences
tests/test_check_dense.py uses (40-200 characters), the cheapest records to embed and
so the largest share. On a machine whose cores other processes hold, run it with
OPENBLAS_NUM_THREADS=1: OpenBLAS's threads then fight for the cores and its
decompositions slow tenfold.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from guard.checking.run import run_check
from guard.core.policy import Thresholds
from guard.corpus import demo_corpus
from guard.engines import EmbeddingEngine, open_engine
from guard.logs import configure
from guard.models import build_projection_model
from guard.paths import models_dir
from guard.records import RecordBatch
from guard.stores import VectorStore, open_store


class _Timed:
    """An engine or a store, and the seconds its calls of one method took."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner = inner
        self.method = method
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name != self.method:
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1100)
    parser.add_argument("--size", type=int, default=768, help="the Dense layer's output size")
    parser.add_argument("--store", choices=["qdrant", "pgserver"], default="qdrant")
    parser.add_argument("--texts", choices=["paragraphs", "sentences"], default="paragraphs")
    args = parser.parse_args()
    configure()

    folder, gguf = build_projection_model(models_dir(), args.size, seed=args.size)
    if args.texts == "sentences":
        split = (s for text in demo_corpus() for s in re.split(r"(?<=[.!?])\s+", text))
        texts = list(dict.fromkeys(s for s in split if 40 <= len(s) <= 200))[: args.records]
    else:
        texts = [text for text in demo_corpus() if len(text) < 1000][: args.records]
    writer = open_engine(f"st:{folder}")
    vectors = writer.embed(texts)
    writer.close()

    where = Path(tempfile.mkdtemp(prefix="vmg-bench-", dir="/tmp"))
    uri = (
        f"pgserver:{where / 'pg'}?table=dense"
        if args.store == "pgserver"
        else f"qdrant+local:{where / 'qdrant'}?collection=dense"
    )
    store = open_store(uri)
    store.create(dims=vectors.shape[1], distance="cosine")
    store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), vectors))

    candidate = _Timed(open_engine(f"llamacpp:{gguf}?max_tokens=256"), "embed")
    searched = _Timed(store, "search")
    thresholds = Thresholds(max_sample=len(texts))
    started = time.perf_counter()
    report = run_check(
        cast(VectorStore, searched),
        cast(EmbeddingEngine, candidate),
        thresholds=thresholds,
        seed=1,
        bridge_out=where / "bridge.npz",
    )
    total = time.perf_counter() - started
    timing = report.timing
    before_bridge = sum(v for k, v in timing.items() if k not in ("bridge", "total"))
    embedded_in_bridge = candidate.seconds - min(candidate.seconds, timing["embed"])
    bridge_only = timing["bridge"] - embedded_in_bridge
    searches = searched.seconds - timing.get("search", 0.0)
    own = bridge_only - searches
    bridge = report.bridge or {}
    print(
        f"store: {args.store}, {len(texts)} {args.texts} written by MiniLM + "
        f"Dense(384 -> {args.size})"
    )
    print(f"check: {total:.2f} s, verdict {report.verdict}, phases before the bridge "
          f"{before_bridge:.2f} s")  # fmt: skip
    print(
        f"bridge: {bridge.get('kind')}, fitted on {bridge.get('fitted_on')}, validated on "
        f"{bridge.get('validated_on')}, held-out cosine {bridge.get('held_out_cosine', {})}"
    )
    embedded = candidate.seconds
    print(f"candidate embedding (whole check):      {embedded:.2f} s")
    print(f"  of it inside the bridge phase:        {embedded_in_bridge:.2f} s")
    print(f"bridge fitting + judging:               {own:.2f} s  {own / embedded:.1%}")
    print(f"overlap@k searches through the store:   {searches:.2f} s  {searches / embedded:.1%}")
    print(f"share of the check's embedding time:    {bridge_only / embedded:.1%}"
          "  (goal <= 5%)")  # fmt: skip
    candidate.inner.close()
    store.close()


if __name__ == "__main__":
    main()
