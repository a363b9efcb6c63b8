"""The renderings of a ``guard check`` report: terminal (rich), Markdown and HTML.

They only read a report (guard.checking.report). Every rendering names what was checked
(candidate, baseline, store, sample) and states the result from the side of the bound
that decides it. The HTML page is a jinja2 template on the shared base
(guard/templates), autoescaped and self-contained: inline CSS and matplotlib charts as
inline SVG (guard.checking.charts, imported by the HTML page alone: matplotlib takes
a few tenths of a second to load), nothing fetched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePath
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard.checking.report import CheckReport, to_json
from guard.hashing import fingerprint_sha256

__all__ = [
    "HTML_COLOURS",
    "VERDICT_STYLES",
    "EngineSummary",
    "decision",
    "describe_engine",
    "label",
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
    "undecided": "blue",
    "error": "red",
}
HTML_COLOURS = {
    "approve": "#1a7f37",
    "fix_config": "#9a6700",
    "reindex": "#cf222e",
    "reject_candidate": "#8250df",
    "undecided": "#0969da",
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


def label(uri: str) -> str:
    """A local model's URI shortened to its file or folder name; served models keep
    their URI."""
    if "://" in uri or ":" not in uri:
        return uri
    scheme, rest = uri.split(":", 1)
    path, sep, query = rest.partition("?")
    return f"{scheme}:{PurePath(path).name}{sep}{query}"


def to_text(report: CheckReport, console: Console) -> None:
    """A summary a person reads in ten seconds: verdict, what decided it, what was
    checked, key numbers, fixes."""
    colour = VERDICT_STYLES.get(report.verdict, "red")
    console.print(
        Text(f"{report.verdict.upper()}", style=f"bold {colour}")
        + Text(f"  (exit {report.exit_code})  {_VERDICT_MEANING.get(report.verdict, '')}")
    )
    console.print(Text(decision(report), style="bold"))
    for reason in _other_reasons(report):
        console.print(Text(f"  - {reason}", style="dim"))
    for name, value in _checked_rows(report):
        console.print(Text(f"{name:<10} ", style="bold") + Text(value))
    table = Table(title=None, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in _metric_rows(report):
        table.add_row(name, value)
    console.print(table)
    note = _norm_note(report)
    if note is not None:
        console.print(note, markup=False, highlight=False)
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
    elif report.verdict == "reindex":
        console.print(f"diagnosis: {_NO_CAUSE}", markup=False, highlight=False)


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
        f"**{decision(report)}**",
        "",
        *(f"- {reason}" for reason in _other_reasons(report)),
        "",
        "| checked | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in _checked_rows(report, markdown=True)),
        "",
        "| metric | value |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in _metric_rows(report)),
    ]
    note = _norm_note(report)
    if note is not None:
        lines += ["", _md_cell(note)]
    if report.metrics["by_length"]:
        lines += ["", "| tokens | records | min cosine | median cosine |", "|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(row) + " |" for row in _length_rows(report)]
    if report.retrieval is not None:
        lines += ["", retrieval_line(report.retrieval)]
    if report.diagnosis:
        lines += ["", "### Diagnosis", ""]
        lines += [
            f"- **{f['cause']}**: {f['evidence']}. Fix: {f['suggestion']}."
            for f in report.diagnosis
        ]
    elif report.verdict == "reindex":
        lines += ["", "### Diagnosis", "", _NO_CAUSE[0].upper() + _NO_CAUSE[1:] + "."]
    lines += ["", f"<sub>guard {report.guard_version}</sub>", ""]
    return "\n".join(line for i, line in enumerate(lines) if line or lines[i - 1])


def to_html(report: CheckReport) -> str:
    """One self-contained page: inline CSS, inline SVG charts, no scripts, no fetches."""
    return page(
        "check.html",
        report=report,
        colour=HTML_COLOURS.get(report.verdict, "#cf222e"),
        meaning=_VERDICT_MEANING.get(report.verdict, ""),
        decision=decision(report),
        reasons=_other_reasons(report),
        engines=[
            (role, describe_engine(fp) if fp is not None else None)
            for role, fp in (("candidate", report.candidate), ("baseline", report.baseline))
        ],
        baseline_missing=_NO_BASELINE,
        store=report.store,
        store_facts=_store_facts(report),
        sample_line=_sample_line(report),
        metric_rows=_metric_rows(report),
        norm_note=_norm_note(report),
        histogram=_histogram(report),
        by_length=_by_length(report),
        retrieval=retrieval_line(report.retrieval) if report.retrieval is not None else None,
        no_cause=_NO_CAUSE if report.verdict == "reindex" else None,
    )


_VERDICT_MEANING = {
    "approve": "Switch without re-indexing.",
    "reindex": "The candidate's vectors do not match the stored ones: re-index.",
    "fix_config": "A setting explains the mismatch: set it and check again.",
    "reject_candidate": "The candidate itself is broken.",
    "undecided": "The sample ran out before the bound decided: not a pass; check a larger sample.",
    "error": "The check could not run.",
}
_NO_CAUSE = "no setting explains the mismatch"
_NO_BASELINE = "not given: the stored vectors are the reference"


@dataclass(frozen=True)
class EngineSummary:
    """An engine as a report names it: the model, the engine type, the settings that
    change vectors, and the first 12 hex of its fingerprint's sha256."""

    name: str
    kind: str
    settings: tuple[str, ...]
    fingerprint: str

    def line(self, *, markdown: bool = False) -> str:
        settings = f"; {', '.join(self.settings)}" if self.settings else ""
        if markdown:
            return _md_cell(
                f"`{self.name}` ({self.kind}{settings}), fingerprint `{self.fingerprint}`"
            )
        return f"{self.name} ({self.kind}{settings}), fingerprint {self.fingerprint}"


def describe_engine(fingerprint: dict[str, Any]) -> EngineSummary:
    """What a fingerprint (guard.engines: ``engine``, ``model``, ``settings``) says about
    the engine, in a few words; flat fingerprints are read as their own settings."""
    engine = str(fingerprint.get("engine") or "unknown engine")
    model = fingerprint.get("model")
    settings = fingerprint.get("settings")
    if not isinstance(settings, dict):
        settings = {
            key: value
            for key, value in fingerprint.items()
            if key not in ("engine", "model", "versions")
        }
    kind = engine.split(":", 1)[0] if ":" in engine else engine
    name = label(engine) if ":" in engine else engine
    if isinstance(model, dict):
        name = _model_name(model) or name
        if model.get("file_type"):
            kind += f" {model['file_type']}"
    elif isinstance(model, str) and model:
        name = model
    return EngineSummary(
        name, kind, tuple(_settings(settings)), fingerprint_sha256(fingerprint)[:12]
    )


def _model_name(model: dict[str, Any]) -> str | None:
    """The file or folder of a local model, the served model of a server."""
    for key in ("file", "folder"):
        if model.get(key):
            return str(model[key])
    served, requested = model.get("served"), model.get("requested")
    if served and requested and served != requested:
        return f"{served} (asked for {requested})"
    found = served or requested or model.get("name")
    return str(found) if found else None


def _settings(settings: dict[str, Any]) -> list[str]:
    """max_tokens, prefix, pooling, normalize and bridge as the URI options read."""
    shown = []
    if settings.get("max_tokens") is not None:
        shown.append(f"max_tokens={settings['max_tokens']}")
    elif settings.get("token_limit") is not None:
        shown.append(f"token limit {settings['token_limit']}")
    if settings.get("prefix"):
        shown.append(f"prefix={settings['prefix']!r}")
    if settings.get("pooling"):
        shown.append(f"pooling={settings['pooling']}")
    if settings.get("normalize") is not None:
        shown.append(f"normalize={str(settings['normalize']).lower()}")
    elif settings.get("model_normalizes") or settings.get("server_normalizes"):
        shown.append("normalized by the model")
    bridge = settings.get("bridge")
    if isinstance(bridge, dict) and bridge.get("path"):
        shown.append(f"bridge={PurePath(str(bridge['path'])).name}")
    elif isinstance(bridge, str) and bridge:
        shown.append(f"bridge={PurePath(bridge).name}")
    return shown


def _checked_rows(report: CheckReport, *, markdown: bool = False) -> list[tuple[str, str]]:
    """(what, which): candidate, baseline, store and sample, one line each; for Markdown
    with names and the URI as code, and table pipes escaped."""
    candidate = describe_engine(report.candidate).line(markdown=markdown)
    baseline = (
        describe_engine(report.baseline).line(markdown=markdown)
        if report.baseline
        else _NO_BASELINE
    )
    uri = f"`{_md_cell(report.store['uri'])}`" if markdown else report.store["uri"]
    return [
        ("candidate", candidate),
        ("baseline", baseline),
        ("store", f"{uri} ({_store_facts(report)})"),
        ("sample", _sample_line(report)),
    ]


def decision(report: CheckReport) -> str:
    """The result in one sentence from the side of the bound that decides it: a failure
    by its lower bound, an approval by its upper bound, an undecided bound by both and
    the sample that would decide."""
    b = report.bound
    if b is None:
        return "No bound: the stored and the candidate's vectors cannot be compared."
    threshold, n, failures = b["threshold"], b["n"], b["failures"]
    confidence, allowed = _percent(b["confidence"]), _percent(b["allowed_share"])
    cosine = report.metrics["cosine"] or {}
    seen = f"{failures:,} of {n:,} below {threshold:g}"
    if cosine.get("median") is not None:
        seen += f" (median {_cosine(cosine['median'])})"
    if b["exact"]:
        share = failures / n if n else 0.0
        within = "within" if share <= b["allowed_share"] else "more than"
        return (
            f"All {n:,} records with text measured: {seen}; {_share(share)}, {within} "
            f"the allowed {allowed}."
        )
    if b["decision"] == "fail":
        lower = _share(b["share_below_threshold_lower"], up=False)
        return f"{seen}; at least {lower} of the store, at {confidence} confidence."
    upper = _share(b["share_below_threshold_upper"], up=True, under=b["allowed_share"])
    if b["decision"] == "pass":
        return (
            f"At {confidence} confidence at most {upper} of stored vectors fall below "
            f"{threshold:g} ({failures:,} of {n:,} sampled; allowed {allowed})."
        )
    lower = _share(b["share_below_threshold_lower"], up=False)
    needed = b.get("sample_to_decide")
    more = f"; about {needed:,} records would decide" if needed and needed > n else ""
    return (
        f"{seen}; at {confidence} confidence between {lower} and {upper} of the store, "
        f"against the allowed {allowed}: not decided after {n:,} records{more}."
    )


def _other_reasons(report: CheckReport) -> list[str]:
    """The policy's reasons but the ones that restate the bound the headline states."""
    statement = (report.bound or {}).get("statement") or "\0"
    headline = decision(report).rstrip(".").lower()
    return [
        reason
        for reason in report.reasons
        if not reason.startswith(statement) and reason.rstrip(".").lower() != headline
    ]


def _norm_note(report: CheckReport) -> str | None:
    """|candidate|/|stored| with what it means for this store's distance; None where the
    distance is cosine and the lengths agree: then it decides nothing."""
    ratio = report.metrics["norm_ratio"]
    if ratio is None or ratio.get("median") is None:
        return None
    median = ratio["median"]
    differ = not math.isclose(median, 1.0, rel_tol=0.01)
    distance = report.store["distance"]
    figure = f"|candidate|/|stored| median {median:.2f}"
    if distance == "cosine":
        return f"{figure}: lengths differ; cosine ranking ignores length" if differ else None
    if differ:
        return f"{figure}: lengths differ, and {distance} ranking depends on length"
    return f"{figure}: lengths agree, as {distance} ranking needs"


def _store_facts(report: CheckReport) -> str:
    s = report.store
    return f"{s['count']:,} records, {s['dims']} dims, {s['distance']}, {s['layout']} layout"


def _sample_line(report: CheckReport) -> str:
    s = report.sample
    rounds = "round" if s["rounds"] == 1 else "rounds"
    line = (
        f"{s['size']:,} records in {s['rounds']} {rounds}, seed {s['seed']}, drawn by {s['method']}"
    )
    if s["records_without_text"]:
        line += f"; {s['records_without_text']:,} records without text"
    return line


def _metric_rows(report: CheckReport) -> list[tuple[str, str]]:
    m = report.metrics
    rows = []
    if m["cosine"] is not None:
        rows += [(f"cosine {key}", _fmt(value)) for key, value in m["cosine"].items()]
    overlap = m["overlap_at_k"]
    rows.append((f"overlap@{overlap['k']}", _fmt(overlap["value"], 3)))
    if report.bound is not None:
        b = report.bound
        rows.append((f"below {b['threshold']:g}", f"{b['failures']:,} of {b['n']:,}"))
    return rows


def _length_rows(report: CheckReport) -> list[tuple[str, str, str, str]]:
    return [
        (b["tokens"], str(b["count"]), _fmt(b["min"]), _fmt(b["median"]))
        for b in report.metrics["by_length"]
    ]


def _fmt(value: float | None, decimals: int = 6) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _cosine(value: float) -> str:
    """Three decimals, or six where three would round a near-match up to 1.000."""
    return f"{value:.3f}" if value < 0.9995 else f"{value:.6f}"


def _percent(share: float) -> str:
    return f"{share * 100.0:g}%"


def _share(share: float, *, up: bool = True, under: float | None = None) -> str:
    """A share as a percentage with two significant digits, rounded against the claim:
    an upper bound up, a lower bound down, never the other way in print. With ``under``,
    more digits (up to four) where two would round a share below it up to it."""
    value = share * 100.0
    if value <= 0.0:
        return "0%"
    if value >= 100.0:
        return "100%"
    for digits in (2, 3, 4):
        step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
        steps = math.ceil(value / step - 1e-9) if up else math.floor(value / step + 1e-9)
        rounded = steps * step
        if under is None or share >= under or rounded < under * 100.0:
            break
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{rounded:.{decimals}f}%"


def _histogram(report: CheckReport) -> Markup | None:
    from guard.checking import charts  # matplotlib: only the HTML page needs it

    hist = report.metrics["histogram"]
    if hist is None:
        return None
    svg = charts.histogram_svg(hist["edges"], hist["counts"], report.thresholds["min_cosine"])
    return Markup(svg)  # drawn from numbers: no text of the report in it


def _by_length(report: CheckReport) -> Markup | None:
    from guard.checking import charts

    buckets = [
        b
        for b in report.metrics["by_length"]
        if b["count"] and b["min"] is not None and b["median"] is not None
    ]
    if not buckets:
        return None
    svg = charts.by_length_svg(
        [b["tokens"] for b in buckets],
        [b["count"] for b in buckets],
        [b["min"] for b in buckets],
        [b["median"] for b in buckets],
        report.thresholds["min_cosine"],
    )
    return Markup(svg)  # matplotlib escapes the buckets' labels
