"""What the embedding cache and the lean diagnosis save, side by side in one run.

    python bench/cache.py [--case st|gguf] [--docs 500] [--stores identical,upgrade]
                          [--records 1000] [--store pgserver|qdrant]

``--case st`` (the default): ~500 stdlib docstrings in an embedded Qdrant, every check a
fresh ``guard check`` process (imports and model loads included), against the floor: a
fresh process that imports sentence-transformers, loads the candidate and encodes every
document of the store once, nothing else. Two stores:
- identical: written by all-MiniLM-L6-v2 through ``st:``, the same model as candidate;
- upgrade: written by its first 2 layers (guard.models.build_cut_model), the full
  6-layer model as candidate and the 2-layer one as ``--baseline``: a re-index, whose
  hopeless bridge the bridge plan should stop at its first look, or not fit at all
  where the store is too small for the fit plus the fewest held-out records.
Printed per store: the first check on an empty GUARD_HOME / floor (goal <= 1.05), its
warm rerun on the filled cache / floor (goal <= 0.25), and for the upgrade the bridge
phase's share of the check's own timing total (goal <= 0.10). First checks and floors
alternate ``ATTEMPTS`` times and the fastest of each side counts (this VM's speed
drifts by 10% within minutes).

``--case gguf``: 1,000 demo-corpus paragraphs embedded by llama.cpp F16 (with the
reference's 256-token limit), each run against the bare engine (a freshly opened engine
embedding exactly the texts the check embedded, model load included; the fastest of
three runs):
- a first check with an empty cache (GUARD_HOME in a temporary folder; goal <= 1.05),
  first checks and bare runs alternating three times, the fastest of each counted;
- a rerun of the same check on the filled cache (goal <= 0.3);
- for candidates whose check ends in ``reindex`` or ``fix_config`` (Q4_0, and the F16
  model without the 256-token limit, a truncation mismatch), the diagnosis's share of
  the check's wall time (goal <= 0.20).
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
from typing import Any

from check_overhead import _fill  # the script's folder is on sys.path

from guard.cache import EmbeddingCache
from guard.checking.report import CheckReport
from guard.checking.run import run_check
from guard.core.policy import Thresholds
from guard.corpus import demo_corpus
from guard.engines import open_engine
from guard.logs import configure
from guard.models import build_cut_model, build_demo_models
from guard.paths import models_dir, reference_model_dir
from guard.records import RecordBatch
from guard.stores import VectorStore, open_store

ATTEMPTS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["st", "gguf"], default="st")
    parser.add_argument("--docs", type=int, default=500, help="docstrings (--case st)")
    parser.add_argument("--stores", default="identical,upgrade", help="which (--case st)")
    parser.add_argument("--records", type=int, default=1000, help="paragraphs (--case gguf)")
    parser.add_argument("--store", choices=["pgserver", "qdrant"], default="pgserver")
    args = parser.parse_args()
    configure()
    if args.case == "st":
        _st_case(args.docs, args.stores.split(","))
    else:
        _gguf_case(args)


_GUARD = ["-c", "from guard.cli import main; main()"]
_ENCODE = """
import json, sys
from sentence_transformers import SentenceTransformer
texts = json.load(open(sys.argv[2]))
SentenceTransformer(sys.argv[1], device="cpu").encode(texts, batch_size=32)
"""


def _st_case(docs: int, stores: list[str]) -> None:
    texts = stdlib_docstrings(docs)
    full = reference_model_dir()
    cut = build_cut_model(models_dir(), 2)
    folder = Path(tempfile.mkdtemp(prefix="vmg-bench-cache-st-", dir="/tmp"))
    texts_file = folder / "texts.json"
    texts_file.write_text(json.dumps(texts))
    print(f"{len(texts)} stdlib docstrings (median {sorted(map(len, texts))[len(texts) // 2]}"
          " characters) in qdrant+local; every run a fresh process")  # fmt: skip
    print(f"{'case':<10} {'run':<12} {'seconds':>8} {'/ floor':>8} {'goal':>6}  "
          "verdict, cache hits/misses, phases")  # fmt: skip
    for case, writer, baseline in [("identical", full, None), ("upgrade", cut, cut)]:
        if case not in stores:
            continue
        store_uri = f"qdrant+local:{folder / case}?collection=docs"
        engine = open_engine(f"st:{writer}")
        store = open_store(store_uri)
        store.create(dims=384, distance="cosine")
        store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), engine.embed(texts)))
        store.close()
        engine.close()
        args = ["check", "--store", store_uri, "--candidate", f"st:{full}", "--format", "json"]
        args += ["--baseline", f"st:{baseline}"] if baseline else []
        firsts, floors = [], []
        for attempt in range(ATTEMPTS):
            home = folder / f"home-{case}-{attempt}"  # an empty cache each time
            firsts.append(_process([*_GUARD, *args], home))
            floors.append(_process(["-c", _ENCODE, str(full), str(texts_file)], home)[0])
        floor = min(floors)
        first_seconds, first = min(firsts, key=lambda run: run[0])
        rerun_seconds, rerun = _process([*_GUARD, *args], home)
        print(f"{case:<10} {'floor':<12} {floor:>8.2f}")
        for name, seconds, report, goal in [
            ("first check", first_seconds, first, 1.05),
            ("warm rerun", rerun_seconds, rerun, 0.25),
        ]:
            cache = report["cache"]
            print(
                f"{case:<10} {name:<12} {seconds:>8.2f} {seconds / floor:>8.3f} {goal:>6}  "
                f"{report['verdict']}, {cache['hits']}/{cache['misses']}, "
                f"{ {k: round(v, 2) for k, v in report['timing'].items()} }"
            )
        if case == "upgrade":
            timing = first["timing"]
            print(
                f"{case:<10} bridge share of the first check: {timing.get('bridge', 0.0):.2f} of "
                f"{timing['total']:.2f} s = {timing.get('bridge', 0.0) / timing['total']:.3f} "
                "(goal <= 0.10)"
            )
            bridge = first.get("bridge") or {}
            print(
                f"{case:<10} bridge: stopped {bridge.get('stopped')} after "
                f"{bridge.get('looks_taken')} of {len(bridge.get('looks') or [])} looks, "
                f"{bridge.get('embedded')} records embedded for it (the check measured "
                f"{first['sample']['size']}); {bridge.get('stop_reason')}"
            )


def _process(args: list[str], home: Path) -> tuple[float, dict[str, Any]]:
    """Seconds of one fresh Python process, and the JSON its stdout ends with, if any."""
    env = {**os.environ, "GUARD_HOME": str(home), "GUARD_MODELS_CACHE": str(models_dir())}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1, 3, 4, 5):
        raise SystemExit(done.stderr)
    report = json.loads(done.stdout[done.stdout.rfind("\n{") + 1 :]) if "{" in done.stdout else {}
    return seconds, report


def stdlib_docstrings(count: int) -> list[str]:
    """Docstrings of the public callables of common stdlib modules (then of their
    classes' public methods), whitespace folded, at least 12 words, at most 1,000
    characters: real technical prose of mixed length."""
    import importlib
    import inspect

    names = [
        "os",
        "os.path",
        "shutil",
        "pathlib",
        "statistics",
        "textwrap",
        "string",
        "json",
        "inspect",
        "collections",
        "functools",
        "itertools",
        "subprocess",
        "threading",
        "asyncio",
        "re",
        "datetime",
        "decimal",
        "fractions",
        "random",
        "heapq",
        "bisect",
        "argparse",
        "logging",
        "email.message",
        "http.client",
        "urllib.parse",
        "csv",
        "sqlite3",
        "zipfile",
        "tarfile",
        "tempfile",
        "typing",
        "dataclasses",
        "enum",
        "contextlib",
        "unittest",
        "xml.etree.ElementTree",
        "configparser",
        "difflib",
        "ipaddress",
        "socket",
        "ssl",
        "io",
        "codecs",
        "calendar",
        "pprint",
        "uuid",
        "shlex",
        "weakref",
    ]
    found: list[str] = []
    classes = []
    for name in names:
        module = importlib.import_module(name)
        for attr, value in sorted(vars(module).items()):
            if callable(value) and not attr.startswith("_"):
                found.append(" ".join((inspect.getdoc(value) or "").split())[:1000])
                classes += [value] if inspect.isclass(value) else []
    # Their public methods after them, so a larger --docs keeps the smaller set first.
    for owner in classes:
        for attr, value in sorted(vars(owner).items()):
            if callable(value) and not attr.startswith("_"):
                found.append(" ".join((inspect.getdoc(value) or "").split())[:1000])
    return list(dict.fromkeys(text for text in found if len(text.split()) >= 12))[:count]


def _gguf_case(args: argparse.Namespace) -> None:
    built = build_demo_models(models_dir())
    folder = Path(tempfile.mkdtemp(prefix="vmg-bench-cache-", dir="/tmp"))
    os.environ["GUARD_HOME"] = str(folder / "home")  # an empty cache, nobody else's
    texts = demo_corpus(args.records)
    f16 = f"llamacpp:{built['F16']}?max_tokens=256"
    engine = open_engine(f16)
    vectors = engine.embed(texts)
    engine.close()
    store = open_store(_fill(folder, args.store, "f16", texts, vectors))
    thresholds = Thresholds()
    # First checks (each on an empty cache) and bare runs alternate, ATTEMPTS of each,
    # the fastest of each side counted: this VM's speed drifts by 10% within minutes, and
    # alternating exposes both sides to the same drift.
    firsts, bares = [], []
    for attempt in range(ATTEMPTS):
        cache = EmbeddingCache(folder / "home" / "cache" / f"embeddings-{attempt}.sqlite")
        firsts.append(_timed_check(store, f16, thresholds, cache))
        bares.append(_bare(store, f16, thresholds, firsts[-1][1]))
    first_seconds, first = min(firsts, key=lambda run: run[0])
    rerun_seconds, rerun = _timed_check(store, f16, thresholds, cache)
    bare_seconds = min(bares)
    print(f"store: {args.records} records ({args.store}), candidate F16 max_tokens=256")
    print(f"bare engine on the check's {first.sample['size']} texts: {bare_seconds:.2f} s")
    print(f"{'run':<16} {'seconds':>8} {'ratio':>6} {'goal':>6}  cache hits/misses")
    for name, seconds, report, goal in [
        ("first check", first_seconds, first, 1.05),
        ("rerun", rerun_seconds, rerun, 0.3),
    ]:
        hits, misses = report.cache["hits"], report.cache["misses"]
        print(
            f"{name:<16} {seconds:>8.2f} {seconds / bare_seconds:>6.3f} {goal:>6}  "
            f"{hits}/{misses}  {_phases(report)}"
        )

    print()
    print(f"{'candidate':<22} {'verdict':<11} {'total s':>7} {'diag s':>6} {'share':>6}  causes")
    for name, uri in [
        ("Q4_0", f"llamacpp:{built['Q4_0']}?max_tokens=256"),
        ("F16 no max_tokens", f"llamacpp:{built['F16']}"),
    ]:
        _, report = _timed_check(store, uri, thresholds, None)
        total, diagnosis = report.timing["total"], report.timing.get("diagnosis", 0.0)
        causes = ",".join(f["cause"] for f in report.diagnosis) or "-"
        print(
            f"{name:<22} {report.verdict:<11} {total:>7.2f} {diagnosis:>6.2f} "
            f"{diagnosis / total:>6.3f}  {causes}  (goal share <= 0.20)"
        )
    cache.close()
    store.close()


def _timed_check(
    store: VectorStore, uri: str, thresholds: Thresholds, cache: EmbeddingCache | None
) -> tuple[float, CheckReport]:
    """One check with a freshly opened engine, its model load included."""
    started = time.perf_counter()
    engine = open_engine(uri)
    try:
        report = run_check(store, engine, thresholds=thresholds, seed=1, cache=cache)
    finally:
        engine.close()
    return time.perf_counter() - started, report


def _bare(store: VectorStore, uri: str, thresholds: Thresholds, report: CheckReport) -> float:
    """A fresh engine on exactly the texts the check embedded, model load included."""
    sampled = store.sample(thresholds.max_sample, seed=1).with_text()
    texts = [text or "" for text in sampled.texts[: report.sample["size"]]]
    started = time.perf_counter()
    engine = open_engine(uri)
    try:
        engine.embed(texts)
    finally:
        engine.close()
    return time.perf_counter() - started


def _phases(report: CheckReport) -> dict[str, float]:
    return {name: round(seconds, 2) for name, seconds in report.timing.items()}


if __name__ == "__main__":
    main()
