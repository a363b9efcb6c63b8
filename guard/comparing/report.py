"""The report of one ``guard compare``: the object, its builder and its JSON.

``CompareReport.to_dict`` holds the stable fields of the compare contract (README):
``store``, ``sample``, ``k``, ``queries``, ``candidates`` best first, each with
``candidate``, ``loaded``, ``error``, ``verdict``, ``exit_code``, ``causes``, ``bound``,
``speed`` and ``retrieval`` (``as_stored``, ``switch``, ``reindexed``, ``bridged``, each
``{recall_at_k, mrr_at_k, ndcg_at_k}`` with ``*_ci`` intervals, or null where not
measured, plus ``as_stored_subcorpus``: the baseline on the re-index sub-corpus). The
renderings for people (terminal, Markdown, HTML) live in guard.comparing.render.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from guard.checking.report import CheckReport
from guard.checking.retrieval import Context
from guard.checking.sample import DrawnSample
from guard.core.policy import Thresholds
from guard.core.ranking import Standing, exit_code, rank
from guard.uri import redact
from guard.version import __version__

RETRIEVAL_FIELDS = ("as_stored", "switch", "reindexed", "bridged", "as_stored_subcorpus")


@dataclass(frozen=True, kw_only=True)
class Speed:
    """One timed ``embed`` call over the same texts for every candidate (warm-up excluded).

    The fields are in the JSON's order, after the two rates."""

    model_bytes: int | None
    peak_rss_added_bytes: int | None
    texts: int
    tokens: int
    seconds: float

    @property
    def texts_per_second(self) -> float:
        return self.texts / max(self.seconds, 1e-9)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        """The rates first, then every field; rates and seconds rounded."""
        return {
            "texts_per_second": round(self.texts_per_second, 2),
            "tokens_per_second": round(self.tokens_per_second, 2),
            **asdict(self),
            "seconds": round(self.seconds, 4),  # keeps its place among the fields
        }


@dataclass(frozen=True)
class CandidateRow:
    """One candidate: did it load, what would `guard check` decide, how fast is it."""

    candidate: str  # redacted URI
    loaded: bool
    error: str | None
    check: CheckReport | None
    speed: Speed | None
    retrieval: dict[str, dict[str, Any] | None] | None = None

    @classmethod
    def not_loaded(cls, uri: str, error: str) -> CandidateRow:
        return cls(redact(uri), False, _one_line(error), None, None)

    @classmethod
    def failed(cls, uri: str, error: str, speed: Speed | None) -> CandidateRow:
        """Loaded, but the check could not finish (a server that went away midway)."""
        return cls(redact(uri), True, _one_line(error), None, speed)

    @classmethod
    def judged(
        cls,
        uri: str,
        check: CheckReport,
        speed: Speed,
        retrieval: dict[str, dict[str, Any] | None],
    ) -> CandidateRow:
        return cls(redact(uri), True, None, check, speed, retrieval)

    @property
    def verdict(self) -> str | None:
        return self.check.verdict if self.check is not None else None

    @property
    def causes(self) -> list[str]:
        return [f["cause"] for f in self.check.diagnosis] if self.check is not None else []

    def standing(self) -> Standing:
        speed = self.speed.texts_per_second if self.speed is not None else None
        return Standing(self.loaded, self.verdict, speed)

    def to_dict(self) -> dict[str, Any]:
        """Not the fields: ``check`` is summed up by its verdict, exit code, causes and
        bound, and ``retrieval`` always names every way of searching."""
        check = self.check
        return {
            "candidate": self.candidate,
            "loaded": self.loaded,
            "error": self.error,
            "verdict": self.verdict,
            "exit_code": check.exit_code if check is not None else None,
            "causes": self.causes,
            "bound": check.bound if check is not None else None,
            "speed": self.speed.to_dict() if self.speed is not None else None,
            "retrieval": {name: (self.retrieval or {}).get(name) for name in RETRIEVAL_FIELDS},
        }


@dataclass(frozen=True, kw_only=True)
class CompareReport:
    """A compare run's outcome; ``candidates`` are best first. The fields are in the
    JSON's order."""

    store: dict[str, Any]
    sample: dict[str, Any]
    k: int
    queries: dict[str, Any] | None = None
    subcorpus: dict[str, Any] | None = None
    candidates: tuple[CandidateRow, ...]
    exit_code: int
    thresholds: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Every field, each candidate by its own ``to_dict``, then the guard version."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return data | {
            "candidates": [row.to_dict() for row in self.candidates],
            "guard_version": __version__,
        }


def build_compare_report(
    drawn: DrawnSample,
    rows: Sequence[CandidateRow],
    *,
    thresholds: Thresholds,
    seed: int,
    context: Context | None = None,
) -> CompareReport:
    """Rank the rows and decide the run's exit code (guard.core.ranking)."""
    standings = [row.standing() for row in rows]
    info = drawn.info
    return CompareReport(
        store={
            "uri": redact(info.uri),
            "count": info.count,
            "dims": info.dims,
            "distance": info.distance,
            "layout": info.layout,
        },
        sample={
            "size": len(drawn.usable),
            "seed": seed,
            "records_without_text": info.records_without_text,
            "method": drawn.method,
            "speed_texts": drawn.rounds[0],
        },
        k=thresholds.overlap_k,
        candidates=tuple(rows[i] for i in rank(standings)),
        exit_code=exit_code(standings),
        thresholds=thresholds.as_dict(),
        queries=context.queries.as_dict() if context is not None else None,
        subcorpus=context.as_dict()["subcorpus"] if context is not None else None,
    )


def to_json(report: CompareReport) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False)


def _one_line(message: str) -> str:
    return " ".join(redact(message).split())
