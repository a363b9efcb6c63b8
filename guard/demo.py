"""`guard demo`: the whole story on embedded defaults, no servers and no downloads.

Fill an embedded Qdrant collection and an embedded PostgreSQL table with the demo corpus
embedded by the sentence-transformers reference, then measure how closely each GGUF
build of the same model reproduces the stored vectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from guard import models, paths
from guard.checking.render import VERDICT_STYLES
from guard.checking.report import CheckReport
from guard.checking.run import run_check
from guard.core.policy import Thresholds
from guard.engines import EmbeddingEngine, open_engine
from guard.errors import StoreError
from guard.paths import guard_home, llama_cpp_src, models_dir
from guard.records import RecordBatch
from guard.stores import VectorStore, open_store


@dataclass(frozen=True)
class CandidateResult:
    store: str
    candidate: str
    report: CheckReport

    @property
    def texts_per_second(self) -> float:
        embedded = self.report.sample["size"]
        return embedded / self.report.timing["embed"] if self.report.timing.get("embed") else 0.0


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def _step(console: Console, message: str) -> Iterator[None]:
    with console.status(message):
        yield


def embed_with_progress(
    engine: EmbeddingEngine, texts: Sequence[str], progress: Progress, description: str
) -> np.ndarray:
    task = progress.add_task(description, total=len(texts))
    step = max(engine.options.batch_size, 64)
    parts = []
    for start in range(0, len(texts), step):
        chunk = texts[start : start + step]
        parts.append(engine.embed(chunk))
        progress.advance(task, len(chunk))
    progress.remove_task(task)
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def demo_store_uris() -> list[str]:
    home = guard_home() / "demo"
    return [
        f"qdrant+local:{home / 'qdrant'}?collection=pydoc",
        f"pgserver:{home / 'pg'}?table=pydoc",
    ]


def fill_store(store: VectorStore, texts: Sequence[str], vectors: np.ndarray) -> None:
    """Recreate the demo collection with this corpus."""
    if _stored_count(store) is not None:
        store.drop()
    store.create(dims=vectors.shape[1], distance="cosine")
    for start in range(0, len(texts), 256):
        end = min(start + 256, len(texts))
        store.upsert(
            RecordBatch(tuple(range(start, end)), tuple(texts[start:end]), vectors[start:end])
        )


def demo_candidates(built: dict[str, Path]) -> dict[str, str]:
    """F16 as llama.cpp runs it by default, then each build with the reference's limit,
    then the ONNX exports that build_demo_models made beside the GGUF files, as a user
    runs them: no options, since the folder carries the model's own configuration."""
    limit = "?max_tokens=256"
    onnx = models.build_onnx_models(built["F16"].parent)  # made already: a cache hit
    folder = onnx["ONNX_FP32"].parents[1]
    int8 = onnx["ONNX_INT8"].relative_to(folder).as_posix()
    return {
        "F16": f"llamacpp:{built['F16']}",
        "F16 max_tokens=256": f"llamacpp:{built['F16']}{limit}",
        "Q8_0 max_tokens=256": f"llamacpp:{built['Q8_0']}{limit}",
        "Q4_0 max_tokens=256": f"llamacpp:{built['Q4_0']}{limit}",
        "ONNX FP32": f"onnx:{folder}",
        "ONNX INT8": f"onnx:{folder}?file={int8}",
    }


def run_demo(console: Console, *, limit: int, sample_size: int, seed: int) -> list[CandidateResult]:
    with _step(console, "Building the demo GGUF models (cached after the first run)"):
        built = models.build_demo_models(models_dir(), llama_cpp_src())
    texts = models.demo_corpus(limit)
    console.print(f"Corpus: {len(texts)} paragraphs of the Python documentation.")
    stores = [open_store(uri) for uri in demo_store_uris()]
    for store in stores:
        console.print(f"Store: {store.uri}")
    if any(_stored_count(store) != len(texts) for store in stores):
        with (
            open_engine(f"st:{paths.reference_model_dir()}") as reference,
            _progress(console) as progress,
        ):
            vectors = embed_with_progress(reference, texts, progress, "Reference embeddings")
        for store in stores:
            with _step(console, f"Writing {store.uri}"):
                fill_store(store, texts, vectors)

    thresholds = Thresholds(max_sample=sample_size)
    results = []
    for store in stores:
        for name, uri in demo_candidates(built).items():
            with open_engine(uri) as engine, _step(console, f"Checking {name} against {store.uri}"):
                report = run_check(store, engine, thresholds=thresholds, seed=seed)
            results.append(CandidateResult(store.uri, name, report))
        store.close()
    console.print(
        "GGUF and ONNX candidates against the stored sentence-transformers vectors "
        "(n records re-embedded; cosine min, p1, median; texts per second):"
    )
    for table in _results_tables(results):
        console.print(table)
    for line in _diagnoses(results):
        console.print(line, highlight=False)
    console.print(
        "Exit codes: approve 0, reindex 1, error 2, fix_config 3, reject_candidate 4, undecided 5. "
        "Details of one pair: guard check --store URI --candidate ENGINE"
    )
    return results


def _stored_count(store: VectorStore) -> int | None:
    """The record count, or None when the collection does not exist yet."""
    try:
        return store.describe().count
    except StoreError:
        return None


def _results_tables(results: Sequence[CandidateResult]) -> list[Table]:
    """One table per store, narrow enough for an 80-column terminal."""
    tables: dict[str, Table] = {}
    for r in results:
        if r.store not in tables:
            table = Table(
                title=r.store, title_justify="left", box=None, header_style="bold underline"
            )
            table.add_column("candidate", no_wrap=True)
            for column in ("n", "min", "p1", "median", "text/s"):
                table.add_column(column, justify="right")
            table.add_column("verdict", no_wrap=True)
            tables[r.store] = table
        cosine = r.report.metrics["cosine"] or {}
        tables[r.store].add_row(
            r.candidate,
            str(r.report.sample["size"]),
            _fmt(cosine.get("min")),
            _fmt(cosine.get("p1")),
            _fmt(cosine.get("median")),
            f"{r.texts_per_second:.0f}",
            f"[{VERDICT_STYLES.get(r.report.verdict, 'red')}]{r.report.verdict}[/]",
        )
    return list(tables.values())


def _diagnoses(results: Sequence[CandidateResult]) -> list[str]:
    """What each candidate's diagnosis says, once per candidate (stores agree)."""
    lines: dict[str, str] = {}
    for r in results:
        for finding in r.report.diagnosis:
            lines.setdefault(
                f"{r.candidate}/{finding['cause']}",
                f"[bold]{r.candidate}[/]: {finding['cause']}: {finding['suggestion']}",
            )
    return list(lines.values())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
