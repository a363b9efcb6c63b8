"""The renderings of a ``guard check`` report: terminal (rich), Markdown and HTML.

They only read a report (guard.checking.report). The HTML page is a jinja2 template on
the shared base (guard/templates), autoescaped and self-contained: inline CSS and
hand-drawn SVG, nothing fetched.
"""

from __future__ import annotations

import html
import math
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard.checking.report import CheckReport, to_json

__all__ = [
    "HTML_COLOURS",
    "VERDICT_STYLES",
    "page",
    "retrieval_line",
    "to_html",
    "to_json",
    "to_markdown",
    "to_text",
]

VERDICT_STYLES = {
    "approve": "green",
    "fix_config": "yellow",
    "reindex": "red",
    "reject_candidate": "magenta",
    "error": "red",
}
HTML_COLOURS = {
    "approve": "#1a7f37",
    "fix_config": "#9a6700",
    "reindex": "#cf222e",
    "reject_candidate": "#8250df",
    "error": "#cf222e",
}


@lru_cache(maxsize=1)
def _environment() -> Environment:
    """The templates of guard/templates, read through the installed package."""
    return Environment(
        loader=PackageLoader("guard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page(template: str, **context: Any) -> str:
    """Render one of guard/templates; what is not Markup in ``context`` gets escaped."""
    return _environment().get_template(template).render(**context)


def to_text(report: CheckReport, console: Console) -> None:
    """A summary a person reads in ten seconds: verdict, bound, key numbers, fixes."""
    colour = VERDICT_STYLES.get(report.verdict, "red")
    console.print(
        Text(f"{report.verdict.upper()}", style=f"bold {colour}")
        + Text(f"  (exit {report.exit_code})  {_VERDICT_MEANING.get(report.verdict, '')}")
    )
    console.print(_statement(report))
    for reason in report.reasons:
        console.print(Text(f"  - {reason}", style="dim"))
    store = report.store
    console.print(
        f"store {store['uri']}: {_store_facts(report)}; {_sample_line(report)}",
        markup=False,
        highlight=False,
    )
    table = Table(title=None, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in _metric_rows(report):
        table.add_row(name, value)
    console.print(table)
    if report.metrics["by_length"]:
        lengths = Table(show_header=True, header_style="bold")
        for column in ("tokens", "records", "min cosine", "median cosine"):
            lengths.add_column(column, justify="right")
        for row in _length_rows(report):
            lengths.add_row(*row)
        console.print(lengths)
    if report.retrieval is not None:
        console.print(retrieval_line(report.retrieval), markup=False, highlight=False)
    if report.diagnosis:
        console.print(Text("diagnosis", style="bold"))
        for finding in report.diagnosis:
            console.print(Text(f"  {finding['cause']}: ", style="bold") + Text(finding["evidence"]))
            console.print(Text(f"    -> {finding['suggestion']}", style=colour))
    else:
        console.print("diagnosis: no cause found")


def retrieval_line(retrieval: dict[str, Any]) -> str:
    """check --queries in one sentence: recall as stored, after the switch, their ratio."""
    k, queries = retrieval["k"], retrieval["queries"]
    parts = [f"retrieval on {queries['count']} queries, recall@{k}:"]
    for side, name in (("as_stored", "as stored"), ("switch", "switch without re-index")):
        figures = retrieval[side]
        if figures is None:
            parts.append(f"{name} not measured;")
            continue
        low, high = figures["recall_at_k_ci"]
        parts.append(f"{name} {figures['recall_at_k']:.3f} (95% CI {low:.3f}-{high:.3f});")
    ratio = retrieval["recall_ratio"]
    if ratio is not None and ratio["lower_bound"] is not None:
        parts.append(
            f"ratio at least {ratio['lower_bound']:.3f} at 95% confidence "
            f"(min_recall_ratio {ratio['min_recall_ratio']:g})"
        )
    return " ".join(parts)


def to_markdown(report: CheckReport) -> str:
    """For a runbook or a pull-request comment."""
    lines = [
        f"## guard check: `{report.verdict}` (exit {report.exit_code})",
        "",
        f"**{_statement(report)}**",
        "",
        *(f"- {reason}" for reason in report.reasons),
        "",
        f"Store `{report.store['uri']}`: {_store_facts(report)}; {_sample_line(report)}.",
        "",
        "| metric | value |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in _metric_rows(report)),
    ]
    if report.metrics["by_length"]:
        lines += ["", "| tokens | records | min cosine | median cosine |", "|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(row) + " |" for row in _length_rows(report)]
    if report.retrieval is not None:
        lines += ["", retrieval_line(report.retrieval)]
    lines += ["", "### Diagnosis", ""]
    if report.diagnosis:
        lines += [
            f"- **{f['cause']}**: {f['evidence']}. Fix: {f['suggestion']}."
            for f in report.diagnosis
        ]
    else:
        lines.append("No cause found.")
    lines += ["", f"<sub>guard {report.guard_version}</sub>", ""]
    return "\n".join(lines)


def to_html(report: CheckReport) -> str:
    """One self-contained page: inline CSS, inline SVG charts, no scripts, no fetches."""
    charts = (
        Markup(_histogram_svg(report) + _length_svg(report))
        if report.metrics["histogram"] is not None
        else None
    )
    return page(
        "check.html",
        report=report,
        colour=HTML_COLOURS.get(report.verdict, "#cf222e"),
        meaning=_VERDICT_MEANING.get(report.verdict, ""),
        statement=_statement(report),
        store_facts=_store_facts(report),
        sample_line=_sample_line(report),
        metric_rows=_metric_rows(report),
        charts=charts,
        retrieval=retrieval_line(report.retrieval) if report.retrieval is not None else None,
    )


_VERDICT_MEANING = {
    "approve": "Switch without re-indexing.",
    "reindex": "The candidate's vectors do not match the stored ones: re-index.",
    "fix_config": "A setting explains the mismatch: set it and check again.",
    "reject_candidate": "The candidate itself is broken.",
    "error": "The check could not run.",
}


def _statement(report: CheckReport) -> str:
    if report.bound is None:
        return "No bound: the stored and the candidate's vectors cannot be compared."
    statement: str = report.bound["statement"]
    return statement[0].upper() + statement[1:] + "."


def _store_facts(report: CheckReport) -> str:
    s = report.store
    return f"{s['count']:,} records, {s['dims']} dims, {s['distance']}, {s['layout']} layout"


def _sample_line(report: CheckReport) -> str:
    s = report.sample
    rounds = "round" if s["rounds"] == 1 else "rounds"
    line = (
        f"sample of {s['size']:,} records in {s['rounds']} {rounds}, seed {s['seed']}, "
        f"drawn by {s['method']}"
    )
    if s["records_without_text"]:
        line += f"; {s['records_without_text']:,} records without text"
    return line


def _metric_rows(report: CheckReport) -> list[tuple[str, str]]:
    m = report.metrics
    rows = []
    if m["cosine"] is not None:
        rows += [(f"cosine {key}", _fmt(value)) for key, value in m["cosine"].items()]
        rows.append(("norm ratio median", _fmt(m["norm_ratio"]["median"], 4)))
    overlap = m["overlap_at_k"]
    rows.append((f"overlap@{overlap['k']}", _fmt(overlap["value"], 3)))
    if report.bound is not None:
        b = report.bound
        rows.append(("below threshold", f"{b['failures']} of {b['n']}"))
    return rows


def _length_rows(report: CheckReport) -> list[tuple[str, str, str, str]]:
    return [
        (b["tokens"], str(b["count"]), _fmt(b["min"]), _fmt(b["median"]))
        for b in report.metrics["by_length"]
    ]


def _fmt(value: float | None, decimals: int = 6) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def _histogram_svg(report: CheckReport) -> str:
    """Bars per cosine band; bands wholly below the threshold drawn in red."""
    hist = report.metrics["histogram"]
    edges, counts = hist["edges"], hist["counts"]
    threshold = report.thresholds["min_cosine"]
    width, height, left, bottom, top = 640, 246, 40, 56, 34
    bar = (width - left - 10) / len(counts)
    peak = max(max(counts), 1)
    parts = []
    for i, count in enumerate(counts):
        h = max((height - top - bottom) * count / peak, 3.0 if count else 0.0)  # seen, if rare
        x = left + i * bar
        y = height - bottom - h
        fill = "#cf222e" if edges[i + 1] <= threshold else "#1a7f37"
        parts.append(
            f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{bar - 4:.1f}" height="{h:.1f}" '
            f'fill="{fill}"><title>{edges[i]:g} to {edges[i + 1]:g}: {count}</title></rect>'
            f'<text x="{x + bar / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{count}</text>'
            f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">'
            f"{edges[i]:g}</text>"
        )
    axis = height - bottom
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="cosine histogram"><text x="{left}" y="14">records per cosine band '
        f"(red: wholly below the threshold {threshold:g})</text>"
        f'<line x1="{left}" y1="{axis}" x2="{width - 10}" y2="{axis}" stroke="#656d76"/>'
        + "".join(parts)
        + f'<text x="{left}" y="{height - 6}">band lower edge (cosine)</text></svg>'
    )


def _length_svg(report: CheckReport) -> str:
    """Median (bar) and minimum (tick) cosine per token-length bucket, threshold dashed."""
    buckets = [b for b in report.metrics["by_length"] if b["count"]]
    if not buckets:
        return ""
    threshold: float = report.thresholds["min_cosine"]
    lowest = min([b["min"] for b in buckets] + [threshold])
    floor: float = math.floor(min(lowest, 0.9) * 20) / 20  # a round lower edge for the scale
    width, height, left, bottom, top = 640, 246, 40, 56, 34
    span = height - top - bottom
    column = (width - left - 10) / len(buckets)

    def y(value: float) -> float:
        return height - bottom - span * (value - floor) / (1.0 - floor)

    parts = []
    for i, b in enumerate(buckets):
        x = left + i * column
        below = b["min"] < threshold
        parts.append(
            f'<rect x="{x + 6:.1f}" y="{y(b["median"]):.1f}" width="{column - 12:.1f}" '
            f'height="{height - bottom - y(b["median"]):.1f}" '
            f'fill="{"#cf222e" if below else "#1a7f37"}" opacity="0.8"/>'
            f'<line x1="{x + 6:.1f}" x2="{x + column - 6:.1f}" y1="{y(b["min"]):.1f}" '
            f'y2="{y(b["min"]):.1f}" stroke="#1f2328" stroke-width="2"/>'
            f'<text x="{x + column / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">'
            f"{html.escape(b['tokens'])} tokens ({b['count']})</text>"
            f'<text x="{x + column / 2:.1f}" y="{height - bottom + 28}" text-anchor="middle">'
            f"median {b['median']:.6f}</text>"
            f'<text x="{x + column / 2:.1f}" y="{height - bottom + 42}" text-anchor="middle">'
            f"min {b['min']:.6f}</text>"
        )
    t = y(threshold)
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="fidelity by length"><text x="{left}" y="14">cosine by input length '
        f"(bar: median, tick: min; scale {floor:g} to 1)</text>"
        + "".join(parts)
        + f'<line x1="{left}" x2="{width - 10}" y1="{t:.1f}" y2="{t:.1f}" stroke="#9a6700" '
        f'stroke-dasharray="6 4"/><text x="{width - 10}" y="{t - 4:.1f}" text-anchor="end">'
        f"threshold {threshold:g}</text></svg>"
    )
