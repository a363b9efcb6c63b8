"""Retrieval quality on the user's data: the shell around guard.core.retrieval.

Four ways of searching, each scored on the same queries (recall@k, MRR@k, nDCG@k):

- ``as_stored``: the baseline's query vectors through the store's own index (today);
- ``switch``: the candidate's query vectors through the store's index (no re-index);
- ``reindexed``: the candidate's query vectors against its own vectors of a sub-corpus
  (the relevant records plus a uniform sample of distractors), searched exactly;
  ``as_stored_subcorpus`` is the baseline on that same sub-corpus, so the two compare;
- ``bridged``: the candidate's query vectors through a bridge, through the store's index.

Queries come from a JSONL file, or are derived from stored texts (a record's first
sentence, that record its one relevant document): then ``synthetic`` is true.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from guard.checking.report import CheckReport
from guard.core.policy import RecallRatio, Thresholds, recall_veto, vetoed
from guard.core.retrieval import (
    INTERVAL,
    Scores,
    exact_top_k,
    first_sentence,
    quality,
    recall_ratio_lower,
    score,
)
from guard.engines import EmbeddingEngine, bridgefile
from guard.errors import ConfigError
from guard.logs import get_logger
from guard.records import RecordBatch, RecordId, StoreInfo, Vectors
from guard.stores import VectorStore

log = get_logger(__name__)

# Synthetic queries drawn from the sample when no query file is given.
SYNTHETIC_QUERIES = 200
# Distractors of the re-index sub-corpus.
SUBCORPUS_DISTRACTORS = 1000
SIDES = ("as_stored", "as_stored_subcorpus", "switch", "reindexed", "bridged")


@dataclass(frozen=True)
class QuerySet:
    """Query texts and, per query, the store ids that answer it."""

    texts: tuple[str, ...]
    relevant: tuple[tuple[RecordId, ...], ...]
    synthetic: bool

    def __len__(self) -> int:
        return len(self.texts)

    def as_dict(self) -> dict[str, Any]:
        return {"count": len(self), "synthetic": self.synthetic}


def load_queries(path: Path) -> QuerySet:
    """A JSONL file of ``{"query": "...", "relevant": [ids...]}``; any bad line is a
    ConfigError naming its number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"queries file {path} cannot be read: {exc}") from None
    texts: list[str] = []
    relevant: list[tuple[RecordId, ...]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"queries file {path} line {number}: not JSON ({exc.msg})") from None
        query = entry.get("query") if isinstance(entry, dict) else None
        ids = entry.get("relevant") if isinstance(entry, dict) else None
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f'queries file {path} line {number}: "query" must be a text')
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int | str) and not isinstance(i, bool) for i in ids)
        ):
            raise ConfigError(
                f'queries file {path} line {number}: "relevant" must be a non-empty list of '
                "store ids"
            )
        texts.append(query)
        relevant.append(tuple(ids))
    if not texts:
        raise ConfigError(f"queries file {path} holds no query")
    return QuerySet(tuple(texts), tuple(relevant), synthetic=False)


def synthetic_queries(records: RecordBatch, limit: int = SYNTHETIC_QUERIES) -> QuerySet:
    """Each record's first sentence as a query for that record, over the first records
    of a (seeded, uniform, random-order) sample that have a usable first sentence."""
    texts: list[str] = []
    relevant: list[tuple[RecordId, ...]] = []
    for record_id, text in zip(records.ids, records.texts, strict=True):
        query = first_sentence(text) if text else None
        if query is not None:
            texts.append(query)
            relevant.append((record_id,))
        if len(texts) == limit:
            break
    return QuerySet(tuple(texts), tuple(relevant), synthetic=True)


def relevant_records(store: VectorStore, queries: QuerySet) -> RecordBatch:
    """The records the queries name; an id the store lacks is a ConfigError (a recall
    of zero would otherwise hide a wrong file)."""
    wanted = list(dict.fromkeys(i for ids in queries.relevant for i in ids))
    fetched = store.fetch(wanted)
    found = set(fetched.ids)
    missing = [i for i in wanted if i not in found]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        raise ConfigError(
            f"{len(missing)} relevant ids of the queries are not in the store (e.g. {shown})"
        )
    return fetched


@dataclass(frozen=True)
class SubCorpus:
    """The records a re-index is measured on: every relevant one with text, then
    distractors from a uniform sample."""

    records: RecordBatch
    relevant: int
    distractors: int

    def as_dict(self) -> dict[str, int]:
        return {
            "size": len(self.records),
            "relevant": self.relevant,
            "distractors": self.distractors,
        }


def sub_corpus(
    store: VectorStore, queries: QuerySet, pool: RecordBatch, distractors: int
) -> SubCorpus:
    """The first ``distractors`` records of ``pool`` (a uniform sample with text, so its
    rows line up with vectors a candidate already made of it), then the relevant records
    not among them; a relevant id the store lacks is a ConfigError."""
    wanted = list(dict.fromkeys(i for ids in queries.relevant for i in ids))
    fetched = relevant_records(store, queries)
    head = pool.take(range(min(distractors, len(pool))))
    taken = set(head.ids)
    extra = fetched.with_text()
    extra = extra.take([i for i, rid in enumerate(extra.ids) if rid not in taken])
    records = RecordBatch(
        head.ids + extra.ids,
        head.texts + extra.texts,
        np.concatenate([head.vectors, extra.vectors]),
    )
    relevant = len(set(wanted) & set(records.ids))
    return SubCorpus(records, relevant, len(records) - relevant)


@dataclass(frozen=True)
class Measured:
    """Per-query scores of each side measured (None where not measured)."""

    scores: dict[str, Scores | None]
    k: int
    seed: int

    def figures(self) -> dict[str, dict[str, Any] | None]:
        return {
            side: None if s is None else quality(s, seed=self.seed).as_dict()
            for side, s in self.scores.items()
        }

    def ratio(self, synthetic: bool) -> RecallRatio | None:
        """Recall of the switch over recall as stored, where both were measured."""
        switch, stored = self.scores.get("switch"), self.scores.get("as_stored")
        if switch is None or stored is None:
            return None
        lower = recall_ratio_lower(switch, stored, seed=self.seed)
        return RecallRatio(
            self.k,
            len(stored),
            float(switch.recall.mean()),
            float(stored.recall.mean()),
            lower,
            INTERVAL,
            synthetic,
        )


@dataclass(frozen=True)
class Context:
    """What every candidate is measured against: queries, sub-corpus, baseline side."""

    store: VectorStore
    info: StoreInfo
    queries: QuerySet
    subcorpus: SubCorpus | None
    k: int
    seed: int
    stored: dict[str, Scores | None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries.as_dict(),
            "subcorpus": self.subcorpus.as_dict() if self.subcorpus is not None else None,
        }


def prepare(
    store: VectorStore,
    info: StoreInfo,
    queries: QuerySet,
    *,
    k: int,
    seed: int,
    baseline: EmbeddingEngine | None,
    pool: RecordBatch | None,
    distractors: int = SUBCORPUS_DISTRACTORS,
) -> Context:
    """The shared part: the sub-corpus (when ``pool`` is given) and, with a baseline,
    its scores as stored through the index and on the sub-corpus."""
    if len(queries) == 0:
        raise ConfigError("no queries: none of the sampled texts has a usable first sentence")
    if pool is not None:
        sub: SubCorpus | None = sub_corpus(store, queries, pool, distractors)
    else:
        relevant_records(store, queries)
        sub = None
    stored: dict[str, Scores | None] = {"as_stored": None, "as_stored_subcorpus": None}
    if baseline is not None:
        vectors = baseline.embed(list(queries.texts))
        if vectors.shape[1] == info.dims:
            stored["as_stored"] = _through_index(store, vectors, queries, k)
            if sub is not None:
                stored["as_stored_subcorpus"] = _exact(
                    vectors, sub.records.vectors, sub.records.ids, queries, k, info.distance
                )
    return Context(store, info, queries, sub, k, seed, stored)


def measure(
    context: Context,
    candidate: EmbeddingEngine,
    *,
    corpus_vectors: Vectors | None = None,
    fitted_bridge: str | None = None,
) -> Measured:
    """Score one candidate: switch, re-indexed (embedding the sub-corpus; the first rows
    of ``corpus_vectors`` are reused when given) and bridged (the URI's bridge= or the
    check's ``fitted_bridge``)."""
    queries, k, info = context.queries, context.k, context.info
    vectors = candidate.embed(list(queries.texts))
    scores: dict[str, Scores | None] = {**context.stored, "switch": None, "reindexed": None}
    scores["bridged"] = None
    if vectors.shape[1] == info.dims:
        scores["switch"] = _through_index(context.store, vectors, queries, k)
    if context.subcorpus is not None:
        records = context.subcorpus.records
        own = _embed_subcorpus(candidate, records, corpus_vectors)
        scores["reindexed"] = _exact(vectors, own, records.ids, queries, k, info.distance)
    if candidate.options.bridge:
        scores["bridged"] = scores["switch"]
    elif fitted_bridge is not None:
        bridge = bridgefile.load(fitted_bridge)
        raw = vectors
        if candidate.options.normalize:  # the check fits its bridges on raw output
            plain = candidate.with_options(normalize=None)
            try:
                raw = plain.embed(list(queries.texts))
            finally:
                plain.close()
        bridged = bridge.apply(raw, engine=candidate.uri)
        scores["bridged"] = _through_index(context.store, bridged, queries, k)
    return Measured(scores, k, context.seed)


def _embed_subcorpus(
    candidate: EmbeddingEngine, records: RecordBatch, reuse: Vectors | None
) -> Vectors:
    """The candidate's vectors of the sub-corpus, reusing the rows it already made."""
    texts = [text or "" for text in records.texts]
    done = reuse[: len(texts)] if reuse is not None else None
    if done is None or len(done) == 0:
        return candidate.embed(texts)
    if len(done) == len(texts):
        return done
    return np.concatenate([done, candidate.embed(texts[len(done) :])])


def _through_index(store: VectorStore, vectors: Vectors, queries: QuerySet, k: int) -> Scores:
    """Top-k through the store's own index; a query vector without direction finds nothing."""
    norms = np.linalg.norm(vectors, axis=1)
    fine = np.flatnonzero(np.isfinite(norms) & (norms > 0))
    ranked: list[list[RecordId]] = [[] for _ in range(len(queries))]
    if fine.size:
        for row, ids in zip(fine, store.search(vectors[fine], k), strict=True):
            ranked[int(row)] = list(ids)
    return score(ranked, queries.relevant, k)


def _exact(
    queries_vectors: Vectors,
    corpus: Vectors,
    ids: Sequence[RecordId],
    queries: QuerySet,
    k: int,
    distance: str,
) -> Scores:
    rows = exact_top_k(queries_vectors, corpus, k, distance)
    return score([[ids[i] for i in row] for row in rows], queries.relevant, k)


def ratio_dict(ratio: RecallRatio | None, thresholds: Thresholds) -> dict[str, Any] | None:
    """The report's account of the recall ratio and the threshold it is held to."""
    if ratio is None:
        return None
    return {
        "switch_over_as_stored": round(ratio.switch / ratio.as_stored, 4)
        if ratio.as_stored > 0
        else None,
        "lower_bound": None if ratio.lower is None else round(ratio.lower, 4),
        "confidence": ratio.confidence,
        "min_recall_ratio": thresholds.min_recall_ratio,
    }


def judged(
    report: CheckReport, measured: Measured, queries: QuerySet, thresholds: Thresholds
) -> CheckReport:
    """The check's report with its retrieval figures, and a ``recall_loss`` veto where
    the switch loses more recall than ``min_recall_ratio`` allows (a query file only:
    synthetic queries inform, they do not decide)."""
    ratio = measured.ratio(queries.synthetic)
    figures = measured.figures()
    retrieval = {
        "k": measured.k,
        "queries": queries.as_dict(),
        "as_stored": figures["as_stored"],
        "switch": figures["switch"],
        "recall_ratio": ratio_dict(ratio, thresholds),
    }
    report = replace(report, retrieval=retrieval)
    finding = None
    if ratio is not None and not queries.synthetic:
        finding = recall_veto(report.verdict, ratio, thresholds)
    if finding is None:
        return report
    verdict = vetoed(finding)
    log.info("check.recall_veto", lower=ratio.lower if ratio else None)
    return replace(
        report,
        verdict=verdict.name,
        exit_code=verdict.exit_code,
        diagnosis=[*report.diagnosis, finding.as_dict()],
        reasons=(*report.reasons, *verdict.reasons),
    )


def check_retrieval(
    store: VectorStore,
    candidate: EmbeddingEngine,
    baseline: EmbeddingEngine,
    report: CheckReport,
    queries: QuerySet,
    *,
    thresholds: Thresholds,
    seed: int,
) -> CheckReport:
    """`guard check --queries`: as stored vs switch through the store's index joins the
    report, and ``min_recall_ratio`` may veto an approval."""
    context = prepare(
        store,
        store.describe(),
        queries,
        k=thresholds.overlap_k,
        seed=seed,
        baseline=baseline,
        pool=None,
    )
    return judged(report, measure(context, candidate), queries, thresholds)
