"""How often the sequential check approves a store it should not: measured, not assumed.

    python bench/false_approve.py [--seeds 200] [--records 20000,2000,1000] [--simulate]
                                  [--power] [--shares 0.015,0.03]

A real embedded PostgreSQL table of ``--records`` records, of which a known share sits
below the cosine threshold against the candidate, all of them at the highest ids (the
newest records, where a sample read in id order never looks). ``run_check``, the code
behind `guard check`, runs once per seed with the default thresholds (allowed share 1%,
confidence 99%, rounds of 100 doubling to 2,000). Printed per true share: approvals,
the measured false-approve rate with its 95% Clopper-Pearson interval, the stated
1 - confidence, and the mean number of records the check re-embedded.

``--shares`` takes other true shares instead of the boundary's two, e.g. stores with
1.5% and 3% of foreign vectors (written by another engine), which must never be
approved.

``--simulate`` runs the same sequential plan (guard.core.stats.plan_looks, the code
behind the check's rounds) on simulated draws without repeats instead of a real table:
thousands of seeds per store size in seconds, the statistics alone.

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
from guard.core.stats import clopper_pearson, plan_looks
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


def simulate(
    records: int, share: float, seeds: int, thresholds: Thresholds
) -> tuple[int, list[int]]:
    """(approvals, records measured per seed) of the plan on ``records`` records of which
    ``round(share * records)`` fail, each seed one uniform draw in random order."""
    plan = plan_looks(
        thresholds.initial_sample,
        min(thresholds.max_sample, records),
        allowed_share=thresholds.allowed_share,
        confidence=thresholds.confidence,
        population=records,
    )
    failing = np.zeros(records, dtype=bool)
    failing[: round(share * records)] = True
    approved, sizes = 0, []
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(records)[: plan.looks[-1].n]
        seen = np.cumsum(failing[order])
        for number, look in enumerate(plan.looks, start=1):
            decision = plan.bound(number, int(seen[look.n - 1]), threshold=0.99).decision
            if decision != "continue":
                break
        approved += decision == "pass"
        sizes.append(look.n)
    return approved, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--records", default="20000", help="store sizes, comma-separated")
    parser.add_argument("--simulate", action="store_true", help="the plan on simulated draws")
    parser.add_argument("--power", action="store_true", help="also a store with no failures")
    parser.add_argument("--shares", help="true shares below T instead of the boundary's two")
    args = parser.parse_args()
    configure()
    thresholds = Thresholds()
    dsn = None if args.simulate else embedded_dsn(Path(tempfile.mkdtemp(prefix="vmg-bench-")))
    boundary = thresholds.allowed_share
    shares = (
        tuple(float(share) for share in args.shares.split(","))
        if args.shares
        else (boundary, boundary + 0.001)
    ) + ((0.0,) if args.power else ())

    print(
        f"{'simulated draws' if args.simulate else 'real tables, failing ids highest'}; allowed"
        f" share {boundary:.1%}, confidence {thresholds.confidence:.0%}, {args.seeds} seeds/row"
    )
    print(f"{'records':>8}  {'true share':>10}  {'approved':>9}  {'rate':>6}  "
          f"{'95% interval':>15}  {'stated max':>10}  {'mean records':>12}")  # fmt: skip
    started = time.perf_counter()
    for records in (int(size) for size in args.records.split(",")):
        for share in shares:
            if dsn is None:
                approved, sizes = simulate(records, share, args.seeds, thresholds)
            else:
                uri, engine = build(dsn, records, share)
                approved, sizes = 0, []
                for seed in range(args.seeds):
                    store = open_store(uri)
                    report = run_check(store, engine, thresholds=thresholds, seed=seed)
                    store.close()
                    approved += report.verdict == "approve"
                    sizes.append(report.bound["n"] if report.bound else report.sample["size"])
            low, high = clopper_pearson(approved, args.seeds, 0.975)
            # At the boundary "at most 1% below T" is true: approving it is right. Above
            # it, every approval is a false one, and at most 1 - confidence may be.
            stated = f"{1 - thresholds.confidence:.1%}" if share > boundary else "-"
            print(
                f"{records:>8}  {share:>10.2%}  {approved:>4}/{args.seeds:<4}  "
                f"{approved / args.seeds:>6.1%}  {low:>6.1%} - {high:>6.1%}  {stated:>10}  "
                f"{np.mean(sizes):>12.0f}"
            )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
