"""Re-index throughput and memory: the pipelined worker against the engine alone and
against a naive loop, on the same texts, on each store.

    python bench/reindex_rate.py [--rate-records 5000] [--naive-records 300] [--repeats 2]
                                 [--rss-records 10000 100000] [--text-chars 200]
                                 [--stores qdrant-local pgvector]

Prints, per store:
- pipeline / engine: end-to-end re-index rate (``guard reindex run``, in-process, start-up
  included) over the candidate engine's own rate embedding the same texts, model loading
  included (target >= 0.95);
- pipeline / naive: over a loop that reads one record, embeds it and writes it;
- engine busy: the share of the worker's time spent inside the engine; 1.0 means the
  stores never kept it waiting, whatever else runs on the machine;
- peak RSS of a worker process re-indexing N records, for each N, and how much of it a
  process holds that only opens the same stores (target still empty) and engine; the
  rest grew while re-indexing (target: flat).

A worker's start-up is fixed: on qdrant-local, importing qdrant-client (about 0.55 s) and
loading the folder; on a 1,000-record job that alone costs about 6% of the rate, on 5,000
about 1.5%. Each measurement opens a fresh engine, so model loading counts on both sides;
engine and pipeline runs alternate so both see the same background load. Each source
gets its own qdrant-local folder and each target is dropped after its run, so no run
loads another's collections. qdrant-local keeps whole collections in the worker's
memory (qdrant-client's local mode loads a folder whole), so its RSS grows with the
collection whatever the pipeline does: the target collection grows inside the worker.
The state database is an embedded PostgreSQL in a temporary folder. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from guard.corpus import demo_corpus
from guard.engines import open_engine
from guard.models import default_models_dir
from guard.pgserver import embedded_dsn
from guard.records import RecordBatch
from guard.reindex.plan import Plan, plan_job
from guard.reindex.worker import CHUNK, run_worker
from guard.stores import open_store

OLD_DIMS = 16
LOCAL_GROWTH = " (the target collection too: local mode keeps it in the worker)"
WRITE_PAGE = 2000


def texts_for(n: int, chars: int) -> list[str]:
    """``n`` distinct texts cycling over the demo corpus (first ``chars`` characters)."""
    corpus = [text[:chars] for text in demo_corpus()]
    return [f"{i}. {corpus[i % len(corpus)]}" for i in range(n)]


def candidate_uri() -> str:
    """The demo F16 GGUF from the models cache (the tests' cache as a fallback)."""
    folders = (Path(default_models_dir()), Path(__file__).resolve().parents[1] / ".cache/models")
    found = sorted(p for folder in folders for p in folder.glob("*.F16.*.gguf"))
    if not found:
        sys.exit("no demo F16 GGUF; run `guard models build-demo` first")
    return f"llamacpp:{found[0]}"


def make_source(kind: str, folder: Path, pg: str, n: int, chars: int) -> str:
    name = f"bench_{n}_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    if kind == "qdrant-local":
        uri = f"qdrant+local:{folder / name}?collection={name}"
    else:
        uri = f"{pg}{'&' if '?' in pg else '?'}table={name}"
    store = open_store(uri)
    store.create(dims=OLD_DIMS, distance="cosine")
    texts = texts_for(n, chars)
    rng = np.random.default_rng(0)
    for start in range(0, n, WRITE_PAGE):
        ids = tuple(range(start, min(n, start + WRITE_PAGE)))
        vectors = rng.normal(size=(len(ids), OLD_DIMS)).astype(np.float32)
        store.upsert(RecordBatch(ids, tuple(texts[i] for i in ids), vectors))
    store.close()
    return uri


def engine_rate(candidate: str, texts: list[str]) -> float:
    """The engine alone, in the chunks the worker uses, model loading included."""
    started = time.perf_counter()
    engine = open_engine(candidate)
    for start in range(0, len(texts), CHUNK):
        engine.embed(texts[start : start + CHUNK])
    engine.close()
    return len(texts) / (time.perf_counter() - started)


def fresh_job(source: str, candidate: str) -> Plan:
    return plan_job(store=source, candidate=candidate, batch_size=1000)


def pipeline_rate(plan: Plan, n: int) -> tuple[float, int, float]:
    """Records per second of one worker process on a planned job, its peak RSS (KiB), and
    the share of its time the engine spent embedding (1.0: never waiting on the stores).
    The job's target is dropped afterwards."""
    report = json.loads(_child("_worker", plan.job_id))
    target = open_store(plan.target)
    target.drop()
    target.close()
    if report["written"] != n:
        sys.exit(f"the worker wrote {report['written']} of {n} records")
    # The worker's own wall time: its interpreter start-up is not the pipeline's.
    rate = n / report["seconds"]
    return rate, report["max_rss_kib"], report["engine_busy"]


def _child(*args: str) -> str:
    """The last line a fresh interpreter running this file's ``args`` mode prints."""
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def naive_rate(source: str, candidate: str, n: int) -> float:
    """Read one, embed one, write one: what a script without a pipeline does."""
    target_uri = source.replace("bench_", "naive_")
    src, dst = open_store(source), open_store(target_uri)
    started = time.perf_counter()
    engine = open_engine(candidate)
    dims = engine.embed(["x"]).shape[1]
    dst.create(dims=dims, distance="cosine")
    done = 0
    after = None
    while done < n:
        page = next(src.scan(batch_size=1, after=after, with_payload=True), None)
        if page is None or not len(page):
            break
        text = str(page.texts[0])
        vector = engine.embed([text])
        dst.upsert(RecordBatch(page.ids, (text,), vector))
        after = page.ids[0]
        done += 1
    elapsed = time.perf_counter() - started
    engine.close()
    dst.drop()
    dst.close()
    src.close()
    return done / elapsed


def peak_rss_kib() -> int:
    """This process's own peak RSS. Not ``getrusage``'s ru_maxrss: Linux carries that over
    from the parent through fork and exec, so a child would report at least the bench's
    own size (measured: 2.4 GiB for a pgvector worker after a 100k qdrant-local run)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def worker_main(job_id: str) -> None:
    started = time.perf_counter()
    result = run_worker(job_id, lease_seconds=120)
    seconds = time.perf_counter() - started
    peak = peak_rss_kib()
    print(
        json.dumps(
            {
                "written": result.written,
                "seconds": seconds,
                "max_rss_kib": peak,
                "engine_busy": result.engine_busy,
            }
        )
    )


def holds_main(source: str, target: str, candidate: str, chars: str) -> None:
    """The memory a worker has before its pipeline moves a record: both stores opened
    (qdrant-local loads the source collection whole here) and the engine loaded and run
    once on a chunk the worker's size (its compute buffers grow with the batch)."""
    stores = [open_store(source), open_store(target)]
    for store in stores:
        store.describe()
    engine = open_engine(candidate)
    engine.embed(texts_for(CHUNK, int(chars)))
    print(peak_rss_kib())


def rate_run(
    kind: str, folder: Path, pg: str, candidate: str, texts: list[str], args: argparse.Namespace
) -> None:
    """Engine and pipeline alternately on the same texts, then the naive loop."""
    source = make_source(kind, folder, pg, args.rate_records, args.text_chars)
    # Engine and pipeline alternate, so both see the same background load; best of each.
    raws, pipes, busy, rss = [], [], [], 0
    for _ in range(args.repeats):
        raws.append(engine_rate(candidate, texts))
        piped, rss, engine_busy = pipeline_rate(fresh_job(source, candidate), args.rate_records)
        pipes.append(piped)
        busy.append(engine_busy)
    naive = naive_rate(source, candidate, args.naive_records)
    raw, piped = max(raws), max(pipes)
    print(
        f"{kind}: engine {' '.join(f'{r:.1f}' for r in raws)} texts/s, pipeline "
        f"{' '.join(f'{p:.1f}' for p in pipes)} records/s on {args.rate_records}: "
        f"{piped / raw:.3f} x engine (best of each; pairs "
        f"{' '.join(f'{p / r:.3f}' for p, r in zip(pipes, raws, strict=True))}), "
        f"{piped / naive:.2f} x naive loop "
        f"({naive:.1f} records/s on {args.naive_records}); engine busy "
        f"{' '.join(f'{b:.3f}' for b in busy)} of the pipeline's time; "
        f"peak RSS {rss / 1024:.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate-records", type=int, default=5000)
    parser.add_argument("--naive-records", type=int, default=300)
    parser.add_argument(
        "--repeats", type=int, default=2, help="engine/pipeline pairs (0: memory only)"
    )
    parser.add_argument("--rss-records", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--text-chars", type=int, default=200)
    parser.add_argument("--stores", nargs="*", default=["qdrant-local", "pgvector"])
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vmg-bench-", dir="/tmp"))
    os.environ.setdefault("GUARD_STATE_DSN", embedded_dsn(folder / "state"))
    pg = embedded_dsn(folder / "pg")
    candidate = candidate_uri()
    load = os.getloadavg()[0]
    print(f"candidate {Path(candidate).name}; {os.cpu_count()} CPUs, load {load:.1f}", flush=True)
    texts = texts_for(args.rate_records, args.text_chars)
    for kind in args.stores:
        if args.repeats:
            rate_run(kind, folder, pg, candidate, texts, args)
        for n in args.rss_records:
            big = make_source(kind, folder, pg, n, args.text_chars)
            plan = fresh_job(big, candidate)
            # What a process holds that only opens the same stores (the target still
            # empty) and engine, as the worker does before it moves a record.
            held = int(_child("_holds", big, plan.target, candidate, str(args.text_chars)))
            rate, rss, engine_busy = pipeline_rate(plan, n)
            print(
                f"{kind}: {n} records: peak RSS {rss / 1024:.0f} MiB, "
                f"{held / 1024:.0f} MiB of it before the first record (stores open, engine "
                f"loaded), {(rss - held) / 1024:+.0f} MiB grown while re-indexing"
                f"{LOCAL_GROWTH if kind == 'qdrant-local' else ''}; "
                f"{rate:.1f} records/s, engine busy {engine_busy:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2])
    elif len(sys.argv) == 6 and sys.argv[1] == "_holds":
        holds_main(*sys.argv[2:])
    else:
        main()
