"""What `guard compare` costs beyond embedding: a compare of four candidates against the
sum of the candidates' raw embedding time on the same texts.

    python bench/compare.py [--records 600] [--store qdrant|pgserver]

Fills an embedded store with demo-corpus paragraphs embedded by llama.cpp F16, runs one
compare of F16, Q8_0, Q4_0 and the model2vec static model (synthetic queries, the
re-index sub-corpus on), then times each candidate's raw ``embed`` on the texts the
compare needed from it: the check's sample, the sub-corpus and the queries. Prints the
ratio (target: at most 1.2).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from check_overhead import _fill  # the script's folder is on sys.path

from guard.checking.retrieval import SUBCORPUS_DISTRACTORS, synthetic_queries
from guard.checking.sample import draw_sample
from guard.comparing.run import run_compare
from guard.config import thresholds_from
from guard.corpus import demo_corpus
from guard.engines import open_engine
from guard.logs import configure
from guard.models import build_demo_models, build_static_model
from guard.paths import models_dir
from guard.stores import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--store", choices=["pgserver", "qdrant"], default="qdrant")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    configure()

    built = build_demo_models(models_dir())
    static = build_static_model(models_dir())
    texts = [text for text in demo_corpus(args.records * 2) if len(text) < 1000][: args.records]
    f16 = f"llamacpp:{built['F16']}"
    engine = open_engine(f16)
    vectors = engine.embed(texts)
    engine.close()
    folder = Path(tempfile.mkdtemp(prefix="vmg-bench-", dir="/tmp"))
    uri = _fill(folder, args.store, "docs", texts, vectors)
    candidates = [f16, f"llamacpp:{built['Q8_0']}", f"llamacpp:{built['Q4_0']}",
                  f"model2vec:{static}"]  # fmt: skip
    thresholds = thresholds_from({})

    store = open_store(uri)
    started = time.perf_counter()
    report = run_compare(store, candidates, thresholds=thresholds, seed=args.seed)
    compare_seconds = time.perf_counter() - started
    drawn = draw_sample(store, thresholds, args.seed)
    store.close()
    usable = [text or "" for text in drawn.usable.texts]
    queries = list(synthetic_queries(drawn.usable).texts)
    by_uri = {row.candidate: row for row in report.candidates}

    raw_seconds = 0.0
    print(f"{'candidate':<48} {'verdict':<10} {'texts':>6} {'raw s':>7}")
    for candidate in candidates:
        row = by_uri[candidate]
        checked = row.check.sample["size"] if row.check is not None else 0
        needed = usable[: max(checked, min(SUBCORPUS_DISTRACTORS, len(usable)))] + queries
        engine = open_engine(candidate)
        engine.embed(needed[:8])  # the same warm-up compare gives every candidate
        started = time.perf_counter()
        engine.embed(needed)
        seconds = time.perf_counter() - started
        engine.close()
        raw_seconds += seconds
        name = candidate.rsplit("/", 1)[-1][:48]
        print(f"{name:<48} {row.verdict or '-':<10} {len(needed):>6} {seconds:>7.2f}")
    print(f"compare of {len(candidates)} candidates: {compare_seconds:.2f} s")
    print(f"sum of raw embedding time:   {raw_seconds:.2f} s")
    print(f"compare / raw:               {compare_seconds / raw_seconds:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
