"""Sampling and memory as the store grows to 10M records.

Small vectors (8 dims) are enough: the cost is in ids and pages, not in the vectors.

    python bench/scale.py [--sizes 10000,100000,1000000,10000000] [--dims 8] [--n 1000]
                          [--runs 5] [--worker-sizes 10000,100000] [--text-chars 100]

For each of ``--sizes``, a pgvector table in an embedded PostgreSQL, filled with COPY
BINARY (bench/sample_pgvector.py's ``fill``: ids 0..N-1, 12-character texts, random
vectors), then:
- ``sample(n)``: ``PgVectorStore.sample`` on it, the first call (connection, catalog, cold
  pages) and the median of the next ``--runs`` (sample_pgvector's ``timed``), and the
  method the adapter chose;
- ``guard check`` peak RSS: ``guard check --sample n`` on the table (n records drawn, the
  first look's embedded and compared) in a child process, with the demo static model
  cut to the table's dims as the candidate (model2vec: a real engine, quick enough that
  the check's own memory shows). The peak is the child's VmHWM, read by the child as it
  exits: ``getrusage``'s RUSAGE_CHILDREN is no good here, Linux carries the parent's
  peak into a child's ru_maxrss through fork and exec. The check's wall time and its
  top-k searches' share (overlap@k; the table has no vector index, so each search scans
  it) are printed too. The verdict is not the point: the stored vectors are random
  (``reindex``), and a static model averages its token vectors, so texts whose digits
  split into the same pieces may share one vector (``reject_candidate``, collisions).
The table is dropped before the next size, so the disk holds one size at a time (10M:
about 1.5 GB).

For each of ``--worker-sizes`` and each store (pgvector, qdrant-local): a source of that
many records (bench/reindex_rate.py's ``make_source``: demo-corpus texts, 16-dim vectors)
re-indexed by one ``guard reindex run`` worker process with the same candidate
(reindex_rate's ``_worker``), its peak RSS, and how much of it a process holds that only
opens the two stores and loads the engine (reindex_rate's ``_holds``): the rest grew
while re-indexing. qdrant-client's local mode reads every point of a collection into
the process when it opens it (README, "Scale"), so a qdrant-local worker holds its
source, and the target it fills, whatever the guard does.

Everything lives in one temporary folder, removed at the end. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql
from reindex_rate import _child as reindex_child
from reindex_rate import fresh_job, make_source, pipeline_rate
from sample_pgvector import fill, timed

from guard.models import build_static_model
from guard.pgserver import embedded_dsn
from guard.records import Sample
from guard.stores import open_store

# `guard ARGS` in a bare interpreter that reports its own peak RSS (KiB) on stderr as it
# exits, after the command's own exit code is set.
PEAK_RSS = """
import atexit, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("peak_rss_kib", line.split()[1], file=sys.stderr)
atexit.register(peak)
from guard.cli import main
sys.argv = ["guard", *sys.argv[1:]]
main()
"""

MIB = 1024


def sizes(text: str) -> list[int]:
    """``10000,100000`` (``_`` allowed as a separator: ``10_000_000``); empty: none."""
    if not text.strip():
        return []
    try:
        found = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"sizes are comma-separated integers: {text!r}") from exc
    if min(found) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return found


def small_static_model(folder: Path, dims: int) -> str:
    """The demo static model cut to its first ``dims`` dimensions: a real model2vec
    model whose vectors are the size of the stored ones, so the check compares them."""
    from model2vec import StaticModel

    full = StaticModel.from_pretrained(build_static_model(folder))
    small = StaticModel(
        full.embedding[:, :dims].copy(),
        full.tokenizer,
        normalize=True,
        base_model_name=f"{full.base_model_name}[:{dims}]",
    )
    path = folder / f"static-{dims}d"
    small.save_pretrained(path)
    return f"model2vec:{path}"


def check_peak(store: str, candidate: str, n: int) -> tuple[int, float, dict[str, object]]:
    """A `guard check` child's peak RSS (KiB), its wall time and its JSON report."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, "check", "--store", store, "--candidate", candidate,
         "--sample", str(n), "--no-cache", "--format", "json"],
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak_")]
    if done.returncode == 2 or not peaks:  # any verdict, but no error
        sys.exit(f"guard check failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return int(peaks[-1]), seconds, json.loads(done.stdout)


def sample_times(uri: str, n: int, runs: int) -> tuple[float, float, Sample]:
    """sample(n)'s first call and the median of the next ``runs``, and one draw."""
    store = open_store(uri)
    try:
        first, median = timed(lambda seed: store.sample(n, seed=seed), runs)
        return first, median, store.sample(n, seed=1)
    finally:
        store.close()


def sampling_rows(args: argparse.Namespace, pg: str, candidate: str) -> None:
    """One table line per size: fill, sample(n) first and median, the check's peak."""
    for rows in args.sizes:
        table = f"scale_{rows}_{args.dims}"
        filled = fill(pg, table, rows, args.dims)
        uri = f"{pg}{'&' if '?' in pg else '?'}table={table}"
        first, median, drawn = sample_times(uri, args.n, args.runs)
        if len(set(drawn.ids)) != min(args.n, rows):
            sys.exit(f"sample({args.n}) of {rows:,} rows drew {len(set(drawn.ids))} distinct")
        peak, seconds, report = check_peak(uri, candidate, args.n)
        sample, timing = report["sample"], report["timing"]
        assert isinstance(sample, dict) and isinstance(timing, dict)
        line = (
            f"| {rows:>10,} | {filled:6.1f} s | {drawn.method} | {first:.3f} s | {median:.3f} s "
            f"| {peak / MIB:.0f} MiB | {seconds:.1f} s | {timing.get('search', 0.0):.1f} s "
            f"| {report['verdict']}, {sample['size']} records compared |"
        )
        print(line, flush=True)
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


def worker_rows(args: argparse.Namespace, folder: Path, pg: str, candidate: str) -> None:
    """One table line per store and size: the worker's peak RSS and what it held first."""
    for kind in ("pgvector", "qdrant-local"):
        for n in args.worker_sizes:
            source = make_source(kind, folder, pg, n, args.text_chars)
            plan = fresh_job(source, candidate)
            chars = str(args.text_chars)
            held = int(reindex_child("_holds", source, plan.target, candidate, chars))
            rate, peak, _busy = pipeline_rate(plan, n)
            line = (
                f"| {kind} | {n:>7,} | {peak / MIB:.0f} MiB | {held / MIB:.0f} MiB "
                f"| {(peak - held) / MIB:+.0f} MiB | {rate:.0f} records/s |"
            )
            print(line, flush=True)
            store = open_store(source)
            store.drop()
            store.close()


def measure(folder: Path, args: argparse.Namespace) -> None:
    os.environ["GUARD_HOME"] = str(folder / "home")  # reports, caches: nothing outside
    os.environ["GUARD_STATE_DSN"] = embedded_dsn(folder / "state")
    pg = embedded_dsn(folder / "pg")
    candidate = small_static_model(folder, args.dims)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; candidate {candidate}")
    if args.sizes:
        print(f"\npgvector, {args.dims}-dim vectors: sample({args.n}), `guard check`")
        print(
            "| records | fill | method | first call | median | check peak RSS | check "
            "| of it top-k searches | verdict |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|---|", flush=True)
        sampling_rows(args, pg, candidate)
    if args.worker_sizes:
        print("\nre-index worker, one process:")
        print("| store | records | peak RSS | held before the first record | grown | rate |")
        print("|---|---:|---:|---:|---:|---:|", flush=True)
        worker_rows(args, folder, pg, candidate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=sizes,
        default=[10_000, 100_000, 1_000_000, 10_000_000],
        help="pgvector table sizes for sample(n) and the check (default 10k,100k,1M,10M)",
    )
    parser.add_argument(
        "--worker-sizes",
        type=sizes,
        default=[10_000, 100_000],
        help="source sizes for the worker's peak RSS, each store ('' for none)",
    )
    parser.add_argument("--dims", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000, help="records to sample and check")
    parser.add_argument("--runs", type=int, default=5, help="timed sample calls after the first")
    parser.add_argument("--text-chars", type=int, default=100, help="worker sources' texts")
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.folder:
        measure(args.folder, args)
        return
    # The embedded servers stop when the process that started them exits: measure in a
    # child, then remove what it wrote.
    folder = Path(tempfile.mkdtemp(prefix="vmg-scale-", dir="/tmp"))
    try:
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--folder", str(folder)])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
