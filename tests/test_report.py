"""guard.checking.report: the JSON contract and the text, Markdown and HTML renderings."""

from __future__ import annotations

import html
import io
import json
import re

import numpy as np
import pytest
from rich.console import Console

from guard import __version__
from guard.checking.render import retrieval_line, to_html, to_json, to_markdown, to_text
from guard.checking.report import CheckReport, build_report
from guard.checking.retrieval import Measured, QuerySet, judged
from guard.core.cosines import compare
from guard.core.findings import Finding
from guard.core.policy import Thresholds, decide
from guard.core.retrieval import score
from guard.core.stats import bound
from guard.records import StoreInfo

DESIGN_FIELDS = [
    "verdict",
    "exit_code",
    "store",
    "candidate",
    "baseline",
    "sample",
    "thresholds",
    "metrics",
    "bound",
    "diagnosis",
    "timing",
    "guard_version",
    "bridge",
    "cache",
    "retrieval",
]
STORE = StoreInfo(
    uri="postgresql://guard:s3cret@db:5432/docs?table=chunks",
    count=120_000,
    dims=16,
    distance="cosine",
    layout="langchain",
    text_field="document",
    vector_field="embedding",
    records_without_text=7,
)
TRUNCATION = Finding(
    "truncation_mismatch",
    "records up to 256 tokens match",
    "set max_tokens=256 on the candidate",
    {"max_tokens": 256},
    True,
)
BOUND_SENTENCE = (
    "at 99% confidence at most 2.9% of stored vectors fall below cosine 0.99 against the candidate"
)


def _report(findings: tuple[Finding, ...] = (TRUNCATION,)) -> CheckReport:
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(400, 16)).astype(np.float32)
    tokens = np.arange(400) + 1
    candidate = stored.copy()
    candidate[tokens > 396] = rng.normal(size=(4, 16))
    comparison = compare(stored, candidate, tokens, "cosine")
    thresholds = Thresholds()
    b = bound(comparison.failures(0.99), comparison.n, threshold=0.99, allowed_share=0.01)
    return build_report(
        verdict=decide(b, findings, thresholds, 0.95),
        store=STORE,
        candidate={"engine": "openai+http://u:pw@emb:8080/v1?model=m", "max_tokens": 512},
        baseline=None,
        thresholds=thresholds,
        comparison=comparison,
        bound=b,
        findings=findings,
        seed=42,
        sample_method="uniform_id_list",
        overlap=0.95,
        timing={"sample_s": 0.12345, "embed_s": 2.5},
    )


def test_json_has_exactly_the_design_fields_in_order() -> None:
    data = json.loads(to_json(_report()))

    assert list(data) == DESIGN_FIELDS
    assert (data["verdict"], data["exit_code"]) == ("fix_config", 3)
    assert data["store"] == {
        "uri": "postgresql://guard:***@db:5432/docs?table=chunks",
        "count": 120_000,
        "dims": 16,
        "distance": "cosine",
        "layout": "langchain",
    }
    assert data["candidate"] == {
        "engine": "openai+http://u:***@emb:8080/v1?model=m",
        "max_tokens": 512,
    }
    assert data["baseline"] is None
    assert data["sample"] == {
        "size": 400,
        "seed": 42,
        "rounds": 1,
        "records_without_text": 7,
        "method": "uniform_id_list",
    }
    assert data["thresholds"] == Thresholds().as_dict()
    assert data["diagnosis"] == [
        {
            "cause": "truncation_mismatch",
            "evidence": "records up to 256 tokens match",
            "suggestion": "set max_tokens=256 on the candidate",
        }
    ]
    assert data["timing"] == {"sample_s": 0.123, "embed_s": 2.5}
    assert data["guard_version"] == __version__


def test_json_metrics_and_bound() -> None:
    data = json.loads(to_json(_report()))
    metrics, b = data["metrics"], data["bound"]

    assert list(metrics["cosine"]) == ["min", "p1", "p5", "median", "mean"]
    assert metrics["cosine"]["median"] == 1.0
    assert metrics["norm_ratio"]["median"] == 1.0
    assert metrics["overlap_at_k"] == {"k": 10, "value": 0.95}
    assert metrics["by_length"][3] == {
        "tokens": "257-512",
        "count": 144,
        "min": pytest.approx(metrics["cosine"]["min"]),
        "median": 1.0,
    }
    assert metrics["histogram"]["edges"][0] == -1.0
    assert sum(metrics["histogram"]["counts"]) == 400
    assert (b["confidence"], b["n"], b["failures"], b["threshold"]) == (0.99, 400, 4, 0.99)
    assert b["share_below_threshold_upper"] == pytest.approx(0.028737, abs=1e-6)
    assert b["statement"] == BOUND_SENTENCE


def test_dimension_mismatch_report_has_nulls_not_missing_fields() -> None:
    thresholds = Thresholds()
    finding = Finding("dimension_mismatch", "384 vs 768", "re-index")
    report = build_report(
        verdict=decide(None, [finding], thresholds),
        store=STORE,
        candidate={},
        baseline={"engine": "st:model"},
        thresholds=thresholds,
        comparison=None,
        bound=None,
        findings=[finding],
        seed=1,
        sample_method="uniform_ids",
        overlap=None,
        timing={},
    )

    data = json.loads(to_json(report))

    assert list(data) == DESIGN_FIELDS
    assert (data["verdict"], data["bound"], data["metrics"]["cosine"]) == ("reindex", None, None)
    assert data["sample"]["size"] == 0
    assert "<svg" not in to_html(report)
    assert "No bound" in to_markdown(report)


def test_text_summary_shows_verdict_bound_metrics_and_fix() -> None:
    console = Console(record=True, width=120, color_system=None)

    to_text(_report(), console)
    text = console.export_text()

    assert text.startswith("FIX_CONFIG  (exit 3)")
    assert BOUND_SENTENCE[0].upper() + BOUND_SENTENCE[1:] + "." in text
    assert "cosine median" in text
    assert "truncation_mismatch: records up to 256 tokens match" in text
    assert "-> set max_tokens=256 on the candidate" in text
    assert "s3cret" not in text


def test_markdown_has_verdict_bound_and_diagnosis() -> None:
    markdown = to_markdown(_report())

    assert markdown.startswith("## guard check: `fix_config` (exit 3)\n")
    assert f"**{BOUND_SENTENCE[0].upper()}{BOUND_SENTENCE[1:]}.**" in markdown
    assert "| overlap@10 | 0.950 |" in markdown
    assert (
        "- **truncation_mismatch**: records up to 256 tokens match. "
        "Fix: set max_tokens=256 on the candidate." in markdown
    )


def test_html_is_self_contained_with_charts() -> None:
    page = to_html(_report())

    assert page.startswith("<!doctype html>")
    assert "fix_config" in page
    assert BOUND_SENTENCE[0].upper() + BOUND_SENTENCE[1:] in page
    assert page.count("<svg") == 2
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page


def test_every_format_shows_the_retrieval_of_check_queries() -> None:
    """`guard check --queries`: text, markdown and HTML say recall as stored, after the
    switch, and the ratio's bound, as the JSON holds them."""
    relevant = [[f"doc-{i}"] for i in range(40)]
    as_stored = score([[f"doc-{i}", "x"] for i in range(40)], relevant, k=10)
    switch = score([["x", f"doc-{i}"] if i % 4 else ["x"] for i in range(40)], relevant, k=10)
    measured = Measured({"as_stored": as_stored, "switch": switch}, k=10, seed=1)
    queries = QuerySet(tuple(f"q{i}" for i in range(40)), tuple(map(tuple, relevant)), False)
    report = judged(_report(), measured, queries, Thresholds())
    line = retrieval_line(report.retrieval or {})
    text = io.StringIO()
    to_text(report, Console(file=text, width=400, color_system=None))

    assert "recall@10: as stored 1.000" in line and "switch without re-index 0.750" in line
    assert "ratio at least 0.6" in line
    assert line in text.getvalue()
    assert line in to_markdown(report)
    assert html.escape(line) in to_html(report)
    assert json.loads(to_json(report))["retrieval"]["switch"]["recall_at_k"] == 0.75


def test_html_escapes_what_it_shows() -> None:
    finding = Finding("prefix_mismatch", "<b>bold</b> & co", "set prefix='<q>'")

    page = to_html(_report((finding,)))

    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    assert "<b>bold</b>" not in page


def test_reasons_are_rendered_but_not_part_of_the_json() -> None:
    report = _report(())

    assert report.verdict == "reindex"
    assert report.reasons == (f"{BOUND_SENTENCE}, more than the allowed 1%",)
    assert "reasons" not in json.loads(to_json(report))
    assert f"- {BOUND_SENTENCE}, more than the allowed 1%" in to_markdown(report)
