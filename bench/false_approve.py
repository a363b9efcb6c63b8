"""How often the sequential check approves a store it should not: measured, not assumed.

    python bench/false_approve.py [--seeds 200] [--records 20000]

A real embedded PostgreSQL table of ``--records`` records, of which a known share sits
below the cosine threshold against the candidate, all of them at the highest ids (the
newest records, where a sample read in id order never looks). ``run_check``, the code
behind `guard check`, runs once per seed with the default thresholds (allowed share 1%,
confidence 99%, rounds of 100 doubling to 2,000). Printed per true share: approvals,
the measured false-approve rate with its 95% Clopper-Pearson interval, the stated
1 - confidence, and the mean number of records the check re-embedded.

The candidate is a lookup table, not a model: no real engine can be made to miss
exactly a chosen share of records. Each text maps to its stored vector, or for the
records meant to fail to a vector at cosine 0.9 from it. It keeps the engine contract
(batches, fingerprint, token counts) and refuses other settings, as an HTTP engine does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guard.checking.run import run_check
from guard.core.policy import Thresholds
from guard.core.stats import clopper_pearson
from guard.engines import EmbeddingEngine, EngineOptions
from guard.errors import ConfigError
from guard.logs import configure
from guard.pgserver import embedded_dsn
from guard.records import RecordBatch, Vectors
from guard.stores import open_store

DIMS = 32
FAILING_COSINE = 0.9


class LookupEngine:
    """A synthetic candidate: see the module docstring for why it is not a model."""

    def __init__(self, vectors: dict[str, Vectors]) -> None:
        self.uri = "lookup:bench"
        self.options = EngineOptions()
        self._vectors = vectors

    def embed(self, texts: Sequence[str]) -> Vectors:
        return np.stack([self._vectors[text] for text in texts]).astype(np.float32)

    def fingerprint(self) -> dict[str, Any]:
        return {"engine": self.uri, "model": "lookup"}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text) for text in texts]

    def with_options(self, **changes: Any) -> EmbeddingEngine:
        raise ConfigError("the lookup engine has no settings")

    def close(self) -> None:
        pass


def _unit(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build(dsn: str, records: int, share: float) -> tuple[str, LookupEngine]:
    """A table whose highest ``share`` of ids fail, and the candidate that fails them."""
    rng = np.random.default_rng(0)
    stored = _unit(rng.normal(size=(records, DIMS))).astype(np.float32)
    noise = rng.normal(size=stored.shape)
    noise -= np.sum(noise * stored, axis=1, keepdims=True) * stored
    noise = _unit(noise)
    failing = np.arange(records) >= records - round(share * records)
    cosine = np.where(failing, FAILING_COSINE, 1.0)[:, None]
    candidate = (cosine * stored + np.sqrt(1 - cosine**2) * noise).astype(np.float32)
    texts = tuple(f"record {i}" for i in range(records))
    uri = f"{dsn}{'&' if '?' in dsn else '?'}table=bench_{round(share * 1e5)}"
    store = open_store(uri)
    store.drop()
    store.create(dims=DIMS, distance="cosine")
    for start in range(0, records, 5000):
        stop = min(start + 5000, records)
        store.upsert(RecordBatch(tuple(range(start, stop)), texts[start:stop], stored[start:stop]))
    store.close()
    return uri, LookupEngine(dict(zip(texts, candidate, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--power", action="store_true", help="also a store with no failures")
    args = parser.parse_args()
    configure()
    thresholds = Thresholds()
    dsn = embedded_dsn(Path(tempfile.mkdtemp(prefix="vmg-bench-")))
    boundary = thresholds.allowed_share
    shares = (boundary, 1.2 * boundary) + ((0.0,) if args.power else ())

    print(
        f"{args.records:,} records, failing ones at the highest ids; allowed share "
        f"{boundary:.1%}, confidence {thresholds.confidence:.0%}, {args.seeds} seeds per row"
    )
    print(f"{'true share':>10}  {'approved':>9}  {'rate':>6}  {'95% interval':>15}  "
          f"{'stated max':>10}  {'mean records':>12}")  # fmt: skip
    started = time.perf_counter()
    for share in shares:
        uri, engine = build(dsn, args.records, share)
        approved, sizes = 0, []
        for seed in range(args.seeds):
            store = open_store(uri)
            report = run_check(store, engine, thresholds=thresholds, seed=seed)
            store.close()
            approved += report.verdict == "approve"
            sizes.append(report.sample["size"])
        low, high = clopper_pearson(approved, args.seeds, 0.975)
        stated = f"{1 - thresholds.confidence:.1%}" if share >= boundary else "-"
        print(
            f"{share:>10.2%}  {approved:>4}/{args.seeds:<4}  {approved / args.seeds:>6.1%}  "
            f"{low:>6.1%} - {high:>6.1%}  {stated:>10}  {np.mean(sizes):>12.0f}"
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
