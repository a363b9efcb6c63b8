"""Embedding a batch for the target: texts the engine refuses (too long, empty) are
skipped with their reason instead of failing the batch, and a worker refuses an engine
whose fingerprint differs from the job's."""

from __future__ import annotations

from typing import Any

import numpy as np

from guard.engines import EmbeddingEngine
from guard.errors import EngineError, ReindexError, TextTooLongError
from guard.hashing import fingerprint_sha256, text_sha256
from guard.records import RecordBatch, as_vectors
from guard.reindex.jobs import Job
from guard.reindex.ledger import Skip
from guard.reindex.provenance import has_text


def embed_records(engine: EmbeddingEngine, batch: RecordBatch) -> tuple[RecordBatch, list[Skip]]:
    """The target records of a source chunk, and the records skipped with their reason.

    A text the engine refuses is isolated by embedding the chunk's texts one by one. A
    text over the token limit (``truncate=false``) is always the text's fault: skipped as
    ``too_long``. Any other failure of every text is the engine's fault, and the whole
    batch is retried; otherwise the texts that failed are skipped as ``embed_failed``.
    """
    keep = [i for i, text in enumerate(batch.texts) if has_text(text)]
    kept = set(keep)
    skipped = [Skip(batch.ids[i], "no_text", "", None) for i in range(len(batch)) if i not in kept]
    texts = [str(batch.texts[i]) for i in keep]
    vectors: list[Any] = []
    try:
        vectors = list(engine.embed(texts)) if texts else []
    except EngineError as exc:
        vectors = [_embed_alone(engine, text) for text in texts] if len(texts) > 1 else [exc]
        failed = [v for v in vectors if isinstance(v, EngineError)]
        engine_down = any(not isinstance(v, TextTooLongError) for v in failed)
        if engine_down and len(failed) == len(vectors):
            raise exc from None
    payloads = batch.payloads or ({},) * len(batch)
    out_ids, out_texts, out_vectors, out_payloads = [], [], [], []
    for index, vector in zip(keep, vectors, strict=True):
        text = str(batch.texts[index])
        if isinstance(vector, EngineError):
            reason = "too_long" if isinstance(vector, TextTooLongError) else "embed_failed"
            skipped.append(Skip(batch.ids[index], reason, str(vector)[:500], text_sha256(text)))
            continue
        if not np.all(np.isfinite(vector)):
            detail = "NaN or infinite values"
            skipped.append(Skip(batch.ids[index], "invalid_vector", detail, text_sha256(text)))
            continue
        out_ids.append(batch.ids[index])
        out_texts.append(text)
        out_vectors.append(vector)
        out_payloads.append(payloads[index])  # nothing of the guard's: frameworks show it
    dims = batch.vectors.shape[1] if not out_vectors else len(out_vectors[0])
    records = RecordBatch(
        tuple(out_ids),
        tuple(out_texts),
        as_vectors(out_vectors) if out_vectors else np.zeros((0, dims), dtype=np.float32),
        tuple(out_payloads),
    )
    return records, skipped


def _embed_alone(engine: EmbeddingEngine, text: str) -> Any:
    """One text's vector, or the error the engine raised for it."""
    try:
        return engine.embed([text])[0]
    except EngineError as error:
        return error


def check_engine(job: Job, engine: EmbeddingEngine) -> None:
    """Refuse to embed with an engine whose fingerprint differs from the planned one."""
    if fingerprint_sha256(engine.fingerprint()) != job.fingerprint_hash:
        raise ReindexError(
            "the candidate engine's fingerprint differs from the one planned "
            "(model file or settings changed); plan a new job",
            job_id=job.short,
        )
