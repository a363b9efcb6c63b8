"""How far the sampling methods that are not a seeded exact draw are from uniform.

    python bench/sample_bias.py [--records 20000] [--qdrant-records 5000] [--seeds 50] [--n 400]

The stores hold ``--records`` records (Qdrant ``--qdrant-records``), of which the last
30% written form one group (think: the records another engine wrote). Each method draws
``--n`` records under ``--seeds`` seeds, with the id-list method switched off as it is
for stores above its size limit. Printed per method: the group's mean share in the
samples (uniform: 30%), and the design effect, the variance of that share over seeds
divided by a uniform sample's (1.0: as good as uniform; 2.0: the sample is worth half
its size).

- ``tablesample_system`` (pgvector, UUID ids): rows written together share pages.
- ``qdrant_random`` (Qdrant local mode), twice: random (v4) UUIDs, and time-ordered
  UUIDs (v7-like) where the group was written in a burst, ten times denser in id space
  (where seeded keyset probes, the method this one replaced, drew the group at 4%).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

import guard.adapters.pgvector
import guard.adapters.qdrant
from guard.logs import configure
from guard.pgserver import embedded_dsn
from guard.records import RecordBatch, StoreInfo
from guard.stores import VectorStore, open_store

GROUP = 0.3
DIMS = 4


def fill(store: VectorStore, ids: list[str]) -> None:
    like = StoreInfo(
        "src", len(ids), DIMS, "cosine", "plain", "text", None, details={"id_type": "uuid"}
    )
    store.drop()
    store.create(dims=DIMS, distance="cosine", like=like)
    vectors = np.random.default_rng(0).normal(size=(len(ids), DIMS)).astype(np.float32)
    for start in range(0, len(ids), 2000):
        part = ids[start : start + 2000]
        texts = tuple(f"text {start + i}" for i in range(len(part)))
        store.upsert(RecordBatch(tuple(part), texts, vectors[start : start + len(part)]))


def measure(store: VectorStore, group: set[str], n: int, seeds: int) -> tuple[str, float, float]:
    shares = []
    method = ""
    for seed in range(seeds):
        drawn = store.sample(n, seed=seed)
        method = drawn.method
        shares.append(np.mean([record_id in group for record_id in drawn.ids]))
    uniform_variance = GROUP * (1 - GROUP) / n
    return method, float(np.mean(shares)), float(np.var(shares) / uniform_variance)


def time_ordered(records: int) -> list[str]:
    """v7-like UUIDs: a time prefix, then random bits; the last 30% in a tight burst."""
    rng = np.random.default_rng(1)
    steps = np.where(np.arange(records) < records * (1 - GROUP), 10.0, 1.0)
    moments = np.cumsum(steps * rng.uniform(0.5, 1.5, records))
    return [str(uuid.UUID(int=(int(m * 1e6) << 80) | int(rng.integers(0, 2**62)))) for m in moments]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument(
        "--qdrant-records", type=int, default=5_000, help="local mode probes slowly"
    )
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args()
    configure()
    guard.adapters.pgvector.ID_LIST_MAX = 0  # as for a table above the id-list limit
    guard.adapters.qdrant.ID_LIST_MAX = 0
    folder = Path(tempfile.mkdtemp(prefix="vmg-bias-", dir="/tmp"))
    random_ids = [str(uuid.uuid4()) for _ in range(args.records)]
    dsn = embedded_dsn(folder / "pg")
    cases = {
        "pgvector, random UUIDs": (f"{dsn}{'&' if '?' in dsn else '?'}table=bias", random_ids),
        "qdrant, random UUIDs": (
            f"qdrant+local:{folder / 'q'}?collection=v4",
            [str(uuid.uuid4()) for _ in range(args.qdrant_records)],
        ),
        "qdrant, time-ordered UUIDs": (
            f"qdrant+local:{folder / 'q'}?collection=v7",
            time_ordered(args.qdrant_records),
        ),
    }
    print(
        f"the last {GROUP:.0%} of the records written as one group; samples of "
        f"{args.n} under {args.seeds} seeds"
    )
    print(
        f"{'store, ids':<28} {'records':>8} {'method':<20} {'group share':>11} "
        f"{'design effect':>13}"
    )
    for name, (uri, ids) in cases.items():
        store = open_store(uri)
        fill(store, ids)
        group = set(ids[round(len(ids) * (1 - GROUP)) :])
        method, share, effect = measure(store, group, args.n, args.seeds)
        print(f"{name:<28} {len(ids):>8,} {method:<20} {share:>11.1%} {effect:>13.2f}")
        store.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
