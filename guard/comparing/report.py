"""The report of one ``guard compare`` and its renderings: JSON, terminal, Markdown.

``CompareReport.to_dict`` holds the stable fields of the compare contract (README):
``store``, ``sample``, ``k``, ``queries``, ``candidates`` best first, each with
``candidate``, ``loaded``, ``error``, ``verdict``, ``exit_code``, ``causes``, ``bound``,
``speed`` and ``retrieval`` (``as_stored``, ``switch``, ``reindexed``, ``bridged``, each
``{recall_at_k, mrr_at_k, ndcg_at_k}`` with ``*_ci`` intervals, or null where not
measured, plus ``as_stored_subcorpus``: the baseline on the re-index sub-corpus).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard import __version__
from guard.checking.report import HTML_COLOURS as VERDICT_COLOURS
from guard.checking.report import VERDICT_STYLES, CheckReport
from guard.checking.retrieval import Context
from guard.checking.sample import DrawnSample
from guard.core.policy import Thresholds
from guard.core.ranking import Standing, exit_code, rank
from guard.uri import redact

RETRIEVAL_FIELDS = ("as_stored", "switch", "reindexed", "bridged", "as_stored_subcorpus")
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


@dataclass(frozen=True)
class CompareReport:
    """A compare run's outcome; ``candidates`` are best first."""

    store: dict[str, Any]
    sample: dict[str, Any]
    k: int
    candidates: tuple[CandidateRow, ...]
    exit_code: int
    thresholds: dict[str, Any]
    queries: dict[str, Any] | None = None
    subcorpus: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "sample": self.sample,
            "k": self.k,
            "queries": self.queries,
            "subcorpus": self.subcorpus,
            "candidates": [row.to_dict() for row in self.candidates],
            "exit_code": self.exit_code,
            "thresholds": self.thresholds,
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


_COLUMNS = (
    "#", "candidate", "verdict", "causes", "texts/s", "tokens/s", "size", "+RSS",
    "R@k switch", "R@k reindexed", "R@k bridged",
)  # fmt: skip
_NUMBERS = frozenset(
    {"#", "texts/s", "tokens/s", "size", "+RSS", "R@k switch", "R@k reindexed", "R@k bridged"}
)


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
    console.print(retrieval_note(report), markup=False, highlight=False)
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
        retrieval_note(report),
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
        *(_recall(row, side) for side in ("switch", "reindexed", "bridged")),
    ]


def _recall(row: CandidateRow, side: str) -> str:
    figures = (row.retrieval or {}).get(side)
    return "-" if figures is None else f"{figures['recall_at_k']:.3f}"


def retrieval_note(report: CompareReport) -> str:
    """Where the retrieval figures come from, and the as-stored ones to hold them to."""
    queries, sub = report.queries, report.subcorpus
    if queries is None:
        return "retrieval not measured"
    source = (
        "ESTIMATED from synthetic queries (each a sampled record's first sentence, that "
        "record its one relevant document)"
        if queries["synthetic"]
        else "measured on the given queries"
    )
    stored = (
        next((row.retrieval for row in report.candidates if row.retrieval is not None), None) or {}
    )
    index, on_sub = stored.get("as_stored"), stored.get("as_stored_subcorpus")
    lines = [f"Retrieval, {queries['count']} queries, recall@{report.k}: {source}."]
    if index is None:
        lines.append("As stored: not measured (give --baseline, the engine that wrote the store).")
    else:
        lines.append(
            f"As stored (baseline through the store's index): R@k {_figure(index)}; "
            f"switch = the candidate's queries through the same index."
        )
    if sub is not None:
        base = f"; as stored on it: R@k {_figure(on_sub)}" if on_sub is not None else ""
        lines.append(
            f"Reindexed = the candidate's queries against its own vectors of a sub-corpus of "
            f"{sub['size']} records ({sub['relevant']} relevant + {sub['distractors']} sampled "
            f"distractors), exact search{base}: compare reindexed with that figure, not with "
            "the whole-store one."
        )
    return " ".join(lines)


def _figure(figures: dict[str, Any]) -> str:
    low, high = figures["recall_at_k_ci"]
    return f"{figures['recall_at_k']:.3f} (95% CI {low:.3f}-{high:.3f})"


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


def to_html(report: CompareReport) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, no fetches."""
    e = html.escape
    head = "".join(f"<th>{e(name)}</th>" for name in _COLUMNS)
    body = "".join(_html_row(place, row) for place, row in enumerate(report.candidates, start=1))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>guard compare</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 80rem; margin: 2rem auto;
  padding: 0 1rem; color: #1f2328; }}
h1 {{ font-size: 1.5rem; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ padding: .25rem .6rem; border-bottom: 1px solid #d0d7de; text-align: left;
  vertical-align: top; }}
td.txt {{ max-width: 22rem; overflow-wrap: anywhere; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.verdict {{ white-space: nowrap; font-weight: 600; }}
.legend {{ list-style: none; padding: 0; margin: 0 0 0 60px; }}
.muted {{ color: #656d76; }}
svg {{ display: block; margin: 1rem 0; font: 12px system-ui, sans-serif; }}
</style></head><body>
<h1>guard compare: {e(_headline(report))}</h1>
<p class=muted>{e(_context(report))}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>{e(retrieval_note(report))}</p>
{_chart_svg(report)}
<p class=muted>{e(_footnote(report))}</p>
</body></html>"""


def _html_row(place: int, row: CandidateRow) -> str:
    """A table row: the candidate by file name, the verdict in its colour."""
    cells = _cells(place, row)
    cells[1] = label(row.candidate)
    colour = VERDICT_COLOURS.get(row.verdict or "", "#656d76")
    out = []
    for name, cell in zip(_COLUMNS, cells, strict=True):
        style = f' style="color:{colour}"' if name == "verdict" else ""
        out.append(f"<td class={_html_class(name)}{style}>{html.escape(cell)}</td>")
    return "<tr>" + "".join(out) + "</tr>"


def _html_class(column: str) -> str:
    if column in _NUMBERS:
        return "num"
    return "verdict" if column == "verdict" else "txt"


_CHART_W, _CHART_H, _PAD_L, _PAD_B, _PAD_T, _PAD_R = 760, 400, 60, 50, 24, 120


def _chart_svg(report: CompareReport) -> str:
    """Speed x quality: texts/s on a log scale against recall@k, one labelled point per
    candidate and way of searching (switch: filled, reindexed: hollow)."""
    e = html.escape
    points = []
    for row in report.candidates:
        if row.speed is None or row.retrieval is None:
            continue
        for side in ("switch", "reindexed"):
            figures = row.retrieval.get(side)
            if figures is not None:
                points.append((row.speed.texts_per_second, figures["recall_at_k"], side, row))
    if not points:
        return "<p>No chart: no candidate has both a speed and a retrieval figure.</p>"
    speeds = [math.log10(max(p[0], 1e-3)) for p in points]
    lo, hi = math.floor(min(speeds)), math.ceil(max(speeds))
    hi = hi if hi > lo else lo + 1
    width = _CHART_W - _PAD_L - _PAD_R
    height = _CHART_H - _PAD_T - _PAD_B

    def x(speed: float) -> float:
        return _PAD_L + (math.log10(max(speed, 1e-3)) - lo) / (hi - lo) * width

    def y(recall: float) -> float:
        return _PAD_T + (1.0 - recall) * height

    parts = [
        f'<svg width="{_CHART_W}" height="{_CHART_H}" role="img" '
        'aria-label="texts per second against recall at k">',
        f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{width}" height="{height}" fill="#f6f8fa" '
        'stroke="#d0d7de"/>',
    ]
    for decade in range(lo, hi + 1):
        px = _PAD_L + (decade - lo) / (hi - lo) * width
        parts.append(
            f'<line x1="{px:.1f}" y1="{_PAD_T}" x2="{px:.1f}" y2="{_PAD_T + height}" '
            'stroke="#d0d7de"/>'
            f'<text x="{px:.1f}" y="{_PAD_T + height + 16}" text-anchor="middle">'
            f"{10.0**decade:g}</text>"
        )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{_PAD_L}" y1="{y(tick):.1f}" x2="{_PAD_L + width}" y2="{y(tick):.1f}" '
            'stroke="#d0d7de"/>'
            f'<text x="{_PAD_L - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
    parts.append(
        f'<text x="{_PAD_L + width / 2:.0f}" y="{_CHART_H - 8}" text-anchor="middle">'
        "texts/s (log scale)</text>"
        f'<text transform="translate(16 {_PAD_T + height / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">recall@{report.k}</text>'
    )
    placed: list[tuple[float, float]] = []
    for speed, recall, side, row in points:
        place = report.candidates.index(row) + 1
        colour = _COLOURS[(place - 1) % len(_COLOURS)]
        fill = colour if side == "switch" else "white"
        px, py = x(speed), y(recall)
        ly = py + 4
        while any(abs(ly - oy) < 13 and abs(px - ox) < 60 for ox, oy in placed):
            ly += 13  # labels of points that coincide stack downwards
        placed.append((px, ly))
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="6" fill="{fill}" stroke="{colour}" '
            'stroke-width="2"/>'
            f'<text x="{px + 10:.1f}" y="{ly:.1f}" fill="{colour}">#{place} {side}</text>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<li><span style="color:{_COLOURS[index % len(_COLOURS)]}">&#9679; #{index + 1}</span> '
        f"{e(label(row.candidate))}</li>"
        for index, row in enumerate(report.candidates)
        if row.speed is not None and row.retrieval is not None
    )
    note = "filled: switch without re-index (store's index); hollow: after a re-index (sub-corpus)"
    return "".join(parts) + f"<ul class=legend>{legend}</ul><p class=muted>{e(note)}</p>"


_COLOURS = ("#0969da", "#1a7f37", "#bf3989", "#9a6700", "#cf222e", "#8250df")
