"""The report of one ``guard compare`` and its renderings: JSON, terminal, Markdown.

``CompareReport.to_dict`` holds the stable fields of the compare contract (README):
``store``, ``sample``, ``k``, ``queries``, ``candidates`` best first, each with
``candidate``, ``loaded``, ``error``, ``verdict``, ``exit_code``, ``causes``, ``bound``,
``speed`` and ``retrieval``. Retrieval quality is not measured yet: ``queries`` and
every ``retrieval`` entry are null.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard import __version__
from guard.check import DrawnSample
from guard.core.policy import Thresholds
from guard.core.ranking import Standing, exit_code, rank
from guard.report import VERDICT_STYLES, CheckReport
from guard.uri import redact

RETRIEVAL_FIELDS = ("as_stored", "switch", "reindexed", "bridged")
NOT_LOADED = "not loaded"
FAILED = "error"


@dataclass(frozen=True)
class Speed:
    """One timed ``embed`` call over the same texts for every candidate (warm-up excluded)."""

    texts: int
    tokens: int
    seconds: float
    model_bytes: int | None
    peak_rss_added_bytes: int | None

    @property
    def texts_per_second(self) -> float:
        return self.texts / max(self.seconds, 1e-9)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "texts_per_second": round(self.texts_per_second, 2),
            "tokens_per_second": round(self.tokens_per_second, 2),
            "model_bytes": self.model_bytes,
            "peak_rss_added_bytes": self.peak_rss_added_bytes,
            "texts": self.texts,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True)
class CandidateRow:
    """One candidate: did it load, what would `guard check` decide, how fast is it."""

    candidate: str  # redacted URI
    loaded: bool
    error: str | None
    check: CheckReport | None
    speed: Speed | None

    @classmethod
    def not_loaded(cls, uri: str, error: str) -> CandidateRow:
        return cls(redact(uri), False, _one_line(error), None, None)

    @classmethod
    def failed(cls, uri: str, error: str, speed: Speed | None) -> CandidateRow:
        """Loaded, but the check could not finish (a server that went away midway)."""
        return cls(redact(uri), True, _one_line(error), None, speed)

    @classmethod
    def judged(cls, uri: str, check: CheckReport, speed: Speed) -> CandidateRow:
        return cls(redact(uri), True, None, check, speed)

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
            "retrieval": dict.fromkeys(RETRIEVAL_FIELDS),
        }


@dataclass(frozen=True)
class CompareReport:
    """A compare run's outcome; ``candidates`` are best first."""

    store: dict[str, Any]
    sample: dict[str, Any]
    k: int
    candidates: tuple[CandidateRow, ...]
    exit_code: int
    thresholds: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "sample": self.sample,
            "k": self.k,
            "queries": None,
            "candidates": [row.to_dict() for row in self.candidates],
            "exit_code": self.exit_code,
            "thresholds": self.thresholds,
            "guard_version": __version__,
        }


def build_compare_report(
    drawn: DrawnSample, rows: Sequence[CandidateRow], *, thresholds: Thresholds, seed: int
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
    )


def to_json(report: CompareReport) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False)


_COLUMNS = ("#", "candidate", "verdict", "causes", "texts/s", "tokens/s", "size", "+RSS")
_NUMBERS = frozenset({"#", "texts/s", "tokens/s", "size", "+RSS"})


def to_text(report: CompareReport, console: Console) -> None:
    """The ranking a person reads in ten seconds: best first, one row per candidate,
    models by file name; the reasons of candidates that failed below the table."""
    console.print(Text(_headline(report), style="bold"))
    console.print(_context(report), markup=False, highlight=False)
    table = Table(show_header=True, header_style="bold")
    for name in _COLUMNS:
        if name in _NUMBERS:
            table.add_column(name, justify="right", no_wrap=True)
        else:  # names and causes wrap whole rather than end in an ellipsis
            table.add_column(name, overflow="fold")
    notes = []
    for place, row in enumerate(report.candidates, start=1):
        cells = _cells(place, row)
        cells[1] = label(row.candidate)
        if row.error is not None:
            cells[3] = "see below"
            notes.append(f"{place}. {row.candidate}: {row.error}")
        style = VERDICT_STYLES.get(row.verdict or "", "red") if row.loaded else "dim"
        table.add_row(*cells[:2], Text(cells[2], style=style), *cells[3:])
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print(_footnote(report), style="dim", markup=False, highlight=False)


def label(uri: str) -> str:
    """A local model's URI shortened to its file or folder name (the table's column);
    served models keep their URI."""
    if "://" in uri or ":" not in uri:
        return uri
    scheme, rest = uri.split(":", 1)
    path, sep, query = rest.partition("?")
    return f"{scheme}:{PurePath(path).name}{sep}{query}"


def to_markdown(report: CompareReport) -> str:
    lines = [
        f"## guard compare: {_headline(report)}",
        "",
        _context(report),
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---:" if name in _NUMBERS else "---" for name in _COLUMNS) + "|",
        *(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in _cells(place, row)) + " |"
            for place, row in enumerate(report.candidates, start=1)
        ),
        "",
        _footnote(report),
    ]
    return "\n".join(lines)


def _headline(report: CompareReport) -> str:
    switchable = [row for row in report.candidates if row.verdict == "approve"]
    if switchable:
        best = label(switchable[0].candidate)
        return f"switch to {best} without re-indexing (exit {report.exit_code})"
    if any(row.loaded for row in report.candidates):
        return f"no candidate can be switched to without re-indexing (exit {report.exit_code})"
    return f"no candidate loads (exit {report.exit_code})"


def _context(report: CompareReport) -> str:
    store, sample = report.store, report.sample
    return (
        f"store {store['uri']}: {store['count']} records, {store['dims']} dims, "
        f"{store['distance']}; one sample of {sample['size']} records (seed {sample['seed']}, "
        f"{sample['method']}) for every candidate; speed over its first "
        f"{sample['speed_texts']} texts"
    )


def _footnote(report: CompareReport) -> str:
    return (
        "Best first: approve (switch without re-indexing), fix_config, reindex, "
        "reject_candidate, then candidates that failed or did not load; faster first within "
        "each. texts/s and tokens/s: one embed call after a warm-up; +RSS: the peak resident "
        "memory the candidate added (VmHWM over VmRSS before it loaded)."
    )


def _cells(place: int, row: CandidateRow) -> list[str]:
    speed = row.speed
    if not row.loaded:
        verdict, detail = NOT_LOADED, row.error or ""
    elif row.check is None:
        verdict, detail = FAILED, row.error or ""
    else:
        verdict, detail = row.check.verdict, ", ".join(row.causes) or "-"
    return [
        str(place),
        row.candidate,
        verdict,
        detail,
        f"{speed.texts_per_second:,.1f}" if speed else "-",
        f"{speed.tokens_per_second:,.0f}" if speed else "-",
        _bytes(speed.model_bytes) if speed else "-",
        _bytes(speed.peak_rss_added_bytes) if speed else "-",
    ]


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _one_line(message: str) -> str:
    return " ".join(redact(message).split())
