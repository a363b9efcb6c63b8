"""`guard demo`: the whole story on embedded defaults, no servers and no downloads.

Fill an embedded Qdrant collection and an embedded PostgreSQL table with the demo corpus
embedded by the sentence-transformers reference, then measure how closely each GGUF
build of the same model reproduces the stored vectors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from guard import models
from guard.engines import EmbeddingEngine, open_engine
from guard.errors import StoreError
from guard.paths import guard_home, llama_cpp_src, models_dir
from guard.records import RecordBatch
from guard.stores import VectorStore, open_store


@dataclass(frozen=True)
class CandidateResult:
    store: str
    candidate: str
    cosine_min: float
    cosine_p1: float
    cosine_median: float
    texts_per_second: float


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


def cosines(stored: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    num = np.einsum("ij,ij->i", stored, candidate)
    den = np.linalg.norm(stored, axis=1) * np.linalg.norm(candidate, axis=1)
    return np.asarray(num / np.maximum(den, 1e-12), dtype=np.float64)


def run_demo(console: Console, *, limit: int, sample_size: int, seed: int) -> list[CandidateResult]:
    with _step(console, "Building the demo GGUF models (cached after the first run)"):
        built = models.build_demo_models(models_dir(), llama_cpp_src())
    texts = models.demo_corpus(limit)
    console.print(f"Corpus: {len(texts)} paragraphs of the Python documentation.")
    reference = open_engine(f"st:{models.reference_model_dir()}")
    candidates = {name: open_engine(f"llamacpp:{path}") for name, path in built.items()}
    stores = [open_store(uri) for uri in demo_store_uris()]

    results: list[CandidateResult] = []
    with _progress(console) as progress:
        if any(_stored_count(store) != len(texts) for store in stores):
            vectors = embed_with_progress(reference, texts, progress, "Reference embeddings")
            for store in stores:
                with _step(console, f"Writing {store.uri}"):
                    fill_store(store, texts, vectors)
        for store in stores:
            sample = store.sample(sample_size, seed=seed).with_text()
            sample_texts = [text or "" for text in sample.texts]
            for name, engine in candidates.items():
                started = time.perf_counter()
                vectors = embed_with_progress(
                    engine, sample_texts, progress, f"{name} on {store.uri}"
                )
                elapsed = time.perf_counter() - started
                cos = cosines(sample.vectors, vectors)
                results.append(
                    CandidateResult(
                        store.uri,
                        name,
                        float(cos.min()),
                        float(np.percentile(cos, 1)),
                        float(np.median(cos)),
                        len(sample_texts) / elapsed,
                    )
                )
    for store in stores:
        store.close()
    console.print(_results_table(results, sample_size))
    return results


def _stored_count(store: VectorStore) -> int | None:
    """The record count, or None when the collection does not exist yet."""
    try:
        return store.describe().count
    except StoreError:
        return None


def _results_table(results: Sequence[CandidateResult], sample_size: int) -> Table:
    table = Table(
        title=f"GGUF candidates against the stored reference vectors ({sample_size} sampled)"
    )
    for column in ("store", "candidate", "cosine min", "p1", "median", "texts/s"):
        table.add_column(column, justify="left" if column in {"store", "candidate"} else "right")
    for r in results:
        table.add_row(
            r.store,
            r.candidate,
            f"{r.cosine_min:.6f}",
            f"{r.cosine_p1:.6f}",
            f"{r.cosine_median:.6f}",
            f"{r.texts_per_second:.0f}",
        )
    return table
