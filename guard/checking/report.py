"""The report of one ``guard check`` and its renderings: JSON, terminal, Markdown, HTML.

``CheckReport.to_dict`` holds exactly the fields design.md lists; their names are a
contract with CI pipelines and runbooks. The renderers only read a report: the HTML
page is self-contained (inline CSS and hand-drawn SVG, nothing fetched).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard import __version__
from guard.core.cosines import Comparison, Summary
from guard.core.findings import Finding
from guard.core.policy import Thresholds, Verdict, bound_sentence
from guard.core.stats import Bound
from guard.records import StoreInfo
from guard.uri import redact

# Cosine bands of the histogram: narrow near 1, where engines that agree differ.
COSINE_BANDS: tuple[float, ...] = (-1.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
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


@dataclass(frozen=True)
class CheckReport:
    """One check's outcome; JSON-ready values only (``None`` where not measured)."""

    verdict: str
    exit_code: int
    store: dict[str, Any]
    candidate: dict[str, Any]
    baseline: dict[str, Any] | None
    sample: dict[str, Any]
    thresholds: dict[str, Any]
    metrics: dict[str, Any]
    bound: dict[str, Any] | None
    diagnosis: list[dict[str, str]]
    timing: dict[str, float]
    guard_version: str
    # The fitted bridge when one was tried: its figures, and its file when it passed.
    bridge: dict[str, Any] | None = None
    # Vectors taken from the embedding cache: {enabled, hits, misses}.
    cache: dict[str, Any] | None = None
    # Retrieval quality on queries (check --queries): as stored, switch, their ratio.
    retrieval: dict[str, Any] | None = None
    # Why the policy decided as it did; shown by the renderers, not part of the JSON.
    reasons: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The design.md fields, in their documented order."""
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "store": self.store,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "sample": self.sample,
            "thresholds": self.thresholds,
            "metrics": self.metrics,
            "bound": self.bound,
            "diagnosis": self.diagnosis,
            "timing": self.timing,
            "guard_version": self.guard_version,
            "bridge": self.bridge,
            "cache": self.cache,
            "retrieval": self.retrieval,
        }


def build_report(
    *,
    verdict: Verdict,
    store: StoreInfo,
    candidate: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    thresholds: Thresholds,
    comparison: Comparison | None,
    bound: Bound | None,
    findings: Sequence[Finding],
    seed: int,
    sample_method: str,
    overlap: float | None,
    timing: Mapping[str, float],
    bridge: Mapping[str, Any] | None = None,
    cache: Mapping[str, Any] | None = None,
) -> CheckReport:
    """Assemble the report from the core's values; ``comparison`` and ``bound`` are None
    when the dimensions differ."""
    return CheckReport(
        verdict=verdict.name,
        exit_code=verdict.exit_code,
        store={
            "uri": redact(store.uri),
            "count": store.count,
            "dims": store.dims,
            "distance": store.distance,
            "layout": store.layout,
        },
        candidate=_fingerprint(candidate),
        baseline=_fingerprint(baseline) if baseline is not None else None,
        sample={
            "size": comparison.n if comparison is not None else 0,
            "seed": seed,
            "rounds": bound.rounds if bound is not None else 0,
            "records_without_text": store.records_without_text,
            "method": sample_method,
        },
        thresholds=thresholds.as_dict(),
        metrics=_metrics(comparison, overlap, thresholds.overlap_k),
        bound=_bound(bound),
        diagnosis=[f.as_dict() for f in findings],
        timing={key: round(float(value), 3) for key, value in timing.items()},
        guard_version=__version__,
        bridge=dict(bridge) if bridge is not None else None,
        cache=dict(cache) if cache is not None else None,
        reasons=verdict.reasons,
    )


def to_json(report: CheckReport) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False)


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
    e = html.escape
    colour = HTML_COLOURS.get(report.verdict, "#cf222e")
    rows = "".join(
        f"<tr><td>{e(name)}</td><td class=num>{e(value)}</td></tr>"
        for name, value in _metric_rows(report)
    )
    findings = "".join(
        f"<li><b>{e(f['cause'])}</b>: {e(f['evidence'])}<br>"
        f"<span class=fix>Fix: {e(f['suggestion'])}</span></li>"
        for f in report.diagnosis
    )
    reasons = "".join(f"<li>{e(reason)}</li>" for reason in report.reasons)
    charts = (
        _histogram_svg(report) + _length_svg(report)
        if report.metrics["histogram"] is not None
        else "<p>No per-record comparison: the two sides have different dimensions.</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>guard check: {e(report.verdict)}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
  padding: 0 1rem; color: #1f2328; }}
h1 {{ font-size: 1.6rem; margin-bottom: .2rem; }}
.verdict {{ color: {colour}; }}
.bound {{ font-size: 1.1rem; font-weight: 600; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ padding: .2rem .8rem; border-bottom: 1px solid #d0d7de; text-align: left; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.fix {{ color: {colour}; }}
svg {{ display: block; margin: 1rem 0; font: 11px system-ui, sans-serif; }}
.muted {{ color: #656d76; }}
</style></head><body>
<h1>guard check: <span class=verdict>{e(report.verdict)}</span>
<span class=muted>(exit {report.exit_code})</span></h1>
<p>{e(_VERDICT_MEANING.get(report.verdict, ""))}</p>
<p class=bound>{e(_statement(report))}</p>
<ul>{reasons}</ul>
<p>Store <code>{e(str(report.store["uri"]))}</code>: {e(_store_facts(report))};
{e(_sample_line(report))}.</p>
<table>{rows}</table>
{charts}
{f"<p>{e(retrieval_line(report.retrieval))}</p>" if report.retrieval is not None else ""}
<h2>Diagnosis</h2>
{f"<ul>{findings}</ul>" if findings else "<p>No cause found.</p>"}
<p class=muted>guard {e(report.guard_version)}</p>
</body></html>
"""


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


def _num(value: float) -> float | None:
    """JSON has no NaN: unmeasurable values become null."""
    return round(float(value), 6) if math.isfinite(value) else None


def _summary(s: Summary) -> dict[str, float | None]:
    return {
        "min": _num(s.min),
        "p1": _num(s.p1),
        "p5": _num(s.p5),
        "median": _num(s.median),
        "mean": _num(s.mean),
    }


def _metrics(comparison: Comparison | None, overlap: float | None, k: int) -> dict[str, Any]:
    overlap_at_k = {"k": k, "value": _num(overlap) if overlap is not None else None}
    if comparison is None:
        return {
            "cosine": None,
            "norm_ratio": None,
            "overlap_at_k": overlap_at_k,
            "by_length": [],
            "histogram": None,
        }
    counts, _ = np.histogram(comparison.cosines, bins=COSINE_BANDS)
    return {
        "cosine": _summary(comparison.cosine),
        "norm_ratio": _summary(comparison.norm_ratio),
        "overlap_at_k": overlap_at_k,
        "by_length": [
            {
                "tokens": b.label,
                "count": b.count,
                "min": _num(b.min) if b.min is not None else None,
                "median": _num(b.median) if b.median is not None else None,
            }
            for b in comparison.by_length
        ],
        "histogram": {"edges": list(COSINE_BANDS), "counts": [int(c) for c in counts]},
    }


def _bound(bound: Bound | None) -> dict[str, Any] | None:
    if bound is None:
        return None
    return {
        "confidence": bound.confidence,
        "share_below_threshold_upper": bound.share_below_threshold_upper,
        "share_below_threshold_lower": bound.share_below_threshold_lower,
        "threshold": bound.threshold,
        "allowed_share": bound.allowed_share,
        "n": bound.n,
        "failures": bound.failures,
        "rounds": bound.rounds,
        "planned_rounds": bound.planned_rounds,
        "exact": bound.exact,
        "decision": bound.decision,
        "statement": bound_sentence(bound),
    }


def _fingerprint(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to print: string values go through the URI redactor."""
    return {
        key: redact(value) if isinstance(value, str) else value for key, value in values.items()
    }


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
