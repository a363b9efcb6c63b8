"""The renderings of a ``guard compare`` report: terminal (rich), Markdown and HTML.

They only read a report (guard.comparing.report). The HTML page is a jinja2 template on
the shared base (guard/templates), autoescaped and self-contained: inline CSS and the
speed x quality chart as matplotlib SVG (guard.checking.charts), nothing fetched.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard.checking.render import HTML_COLOURS as VERDICT_COLOURS
from guard.checking.render import VERDICT_STYLES, label, page
from guard.comparing.report import CandidateRow, CompareReport, to_json

__all__ = ["label", "retrieval_note", "to_html", "to_json", "to_markdown", "to_text"]

NOT_LOADED = "not loaded"
FAILED = "error"

_COLUMNS = (
    "#", "candidate", "verdict", "causes", "texts/s", "tokens/s", "size", "+RSS",
    "R@k switch", "R@k reindexed", "R@k bridged",
)  # fmt: skip
# Narrower terminals get a block per candidate instead of the eleven-column table.
WIDE_ENOUGH = 120
_NUMBERS = frozenset(
    {"#", "texts/s", "tokens/s", "size", "+RSS", "R@k switch", "R@k reindexed", "R@k bridged"}
)


def to_text(report: CompareReport, console: Console) -> None:
    """The ranking a person reads in ten seconds: best first, one row per candidate,
    models by file name; the reasons of candidates that failed below the table."""
    console.print(Text(_headline(report), style="bold"))
    console.print(_context(report), markup=False, highlight=False)
    if console.width < WIDE_ENOUGH:
        _stacked(report, console)
        return
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


def _stacked(report: CompareReport, console: Console) -> None:
    """The ranking on a narrow terminal: a block per candidate, its name, verdict and
    causes on the first line, whole, and its figures below, instead of eleven squeezed
    columns."""
    for place, row in enumerate(report.candidates, start=1):
        cells = dict(zip(_COLUMNS, _cells(place, row), strict=True))
        style = VERDICT_STYLES.get(row.verdict or "", "red") if row.loaded else "dim"
        head = Text(f"{place}. {label(row.candidate)}  ")
        head.append(cells["verdict"], style=style)
        if row.error is None and cells["causes"] not in ("", "-"):
            head.append(f"  {cells['causes']}")
        console.print(head)
        for group in (_COLUMNS[4:8], _COLUMNS[8:]):
            figures = " · ".join(
                f"{name} {cells[name]}" for name in group if cells[name] not in ("", "-")
            )
            if figures:
                console.print(f"   {figures}", markup=False, highlight=False)
        if row.error is not None:
            console.print(f"   {row.error}", markup=False, highlight=False)
    console.print(retrieval_note(report), markup=False, highlight=False)
    console.print(_footnote(report), style="dim", markup=False, highlight=False)


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
    chart, legend = _chart(report)
    return page(
        "compare.html",
        headline=_headline(report),
        context=_context(report),
        columns=_COLUMNS,
        rows=[_html_row(place, row) for place, row in enumerate(report.candidates, start=1)],
        retrieval_note=retrieval_note(report),
        chart=Markup(chart) if chart is not None else None,
        legend=legend,
        footnote=_footnote(report),
    )


def _headline(report: CompareReport) -> str:
    switchable = [row for row in report.candidates if row.verdict == "approve"]
    if switchable:
        best = label(switchable[0].candidate)
        return f"switch to {best} without re-indexing (exit {report.exit_code})"
    undecided = [row for row in report.candidates if row.verdict == "undecided"]
    if undecided:
        return (
            f"no candidate approved at this sample; {label(undecided[0].candidate)} undecided: "
            f"a larger --sample decides (exit {report.exit_code})"
        )
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
        "Best first: approve (switch without re-indexing), fix_config, undecided (a larger "
        "sample decides), reindex, reject_candidate, then candidates that failed or did not "
        "load; faster first within each. texts/s and tokens/s: one embed call after a "
        "warm-up; +RSS: the peak resident memory the candidate added (VmHWM over VmRSS "
        "before it loaded)."
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
    return "verdict" if column == "verdict" else f"txt {column}"


def _chart(report: CompareReport) -> tuple[str | None, list[dict[str, str]]]:
    """Speed x quality as SVG, and its legend: one row per charted candidate with its
    stable colour, its place in the table and its name; (None, []) when no candidate
    has both a speed and a retrieval figure."""
    from guard.checking import charts  # matplotlib: only the HTML page needs it

    colours = charts.candidate_colours([row.candidate for row in report.candidates])
    points, legend = [], []
    for place, row in enumerate(report.candidates, start=1):
        if row.speed is None or row.retrieval is None:
            continue
        switch, reindexed = (
            (row.retrieval.get(side) or {}).get("recall_at_k") for side in ("switch", "reindexed")
        )
        if switch is None and reindexed is None:
            continue
        colour = colours[row.candidate]
        points.append(
            charts.Point(f"#{place}", colour, row.speed.texts_per_second, switch, reindexed)
        )
        legend.append(
            {
                "colour": colour,
                "place": str(place),
                "label": label(row.candidate),
                "verdict": row.verdict or "",
                "verdict_colour": VERDICT_COLOURS.get(row.verdict or "", "#656d76"),
            }
        )
    if not points:
        return None, []
    stored = next((row.retrieval for row in report.candidates if row.retrieval), None) or {}
    as_stored = (stored.get("as_stored") or {}).get("recall_at_k")
    return charts.speed_quality_svg(points, report.k, as_stored), legend
