"""The renderings of a ``guard compare`` report: terminal (rich), Markdown and HTML.

They only read a report (guard.comparing.report). The HTML page is a jinja2 template on
the shared base (guard/templates), autoescaped and self-contained: inline CSS and SVG,
nothing fetched.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

from markupsafe import Markup
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard.checking.render import HTML_COLOURS as VERDICT_COLOURS
from guard.checking.render import VERDICT_STYLES, page
from guard.comparing.report import CandidateRow, CompareReport, to_json

__all__ = ["label", "retrieval_note", "to_html", "to_json", "to_markdown", "to_text"]

NOT_LOADED = "not loaded"
FAILED = "error"

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


def to_html(report: CompareReport) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, no fetches."""
    chart = _chart_svg(report)
    return page(
        "compare.html",
        headline=_headline(report),
        context=_context(report),
        columns=_COLUMNS,
        rows=[_html_row(place, row) for place, row in enumerate(report.candidates, start=1)],
        retrieval_note=retrieval_note(report),
        chart=Markup(chart) if chart is not None else None,
        legend=[
            {"colour": _COLOURS[index % len(_COLOURS)], "place": index + 1, "label": label(uri)}
            for index, uri in _charted(report)
        ],
        footnote=_footnote(report),
    )


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


def _html_row(place: int, row: CandidateRow) -> list[dict[str, str | None]]:
    """A table row's cells: the candidate by file name, the verdict in its colour."""
    cells = _cells(place, row)
    cells[1] = label(row.candidate)
    colour = VERDICT_COLOURS.get(row.verdict or "", "#656d76")
    return [
        {
            "class": _html_class(name),
            "colour": colour if name == "verdict" else None,
            "text": cell,
        }
        for name, cell in zip(_COLUMNS, cells, strict=True)
    ]


def _html_class(column: str) -> str:
    if column in _NUMBERS:
        return "num"
    return "verdict" if column == "verdict" else "txt"


def _charted(report: CompareReport) -> list[tuple[int, str]]:
    """(index, candidate URI) of the rows the chart can place: a speed and retrieval."""
    return [
        (index, row.candidate)
        for index, row in enumerate(report.candidates)
        if row.speed is not None and row.retrieval is not None
    ]


_CHART_W, _CHART_H, _PAD_L, _PAD_B, _PAD_T, _PAD_R = 760, 400, 60, 50, 24, 120


def _chart_svg(report: CompareReport) -> str | None:
    """Speed x quality: texts/s on a log scale against recall@k, one labelled point per
    candidate and way of searching (switch: filled, reindexed: hollow); None when no
    candidate has both. Numbers and fixed words only: the names go in the page's legend."""
    points = []
    for row in report.candidates:
        if row.speed is None or row.retrieval is None:
            continue
        for side in ("switch", "reindexed"):
            figures = row.retrieval.get(side)
            if figures is not None:
                points.append((row.speed.texts_per_second, figures["recall_at_k"], side, row))
    if not points:
        return None
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
    return "".join(parts)


_COLOURS = ("#0969da", "#1a7f37", "#bf3989", "#9a6700", "#cf222e", "#8250df")
