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
from guard.checking.render import (
    HTML_COLOURS,
    VERDICT_STYLES,
    describe_engine,
    retrieval_line,
    to_html,
    to_json,
    to_markdown,
    to_text,
)
from guard.checking.report import CheckReport, build_report
from guard.checking.retrieval import Measured, QuerySet, judged
from guard.core.cosines import compare
from guard.core.findings import Finding
from guard.core.policy import Thresholds, decide
from guard.core.retrieval import score
from guard.core.stats import bound
from guard.hashing import fingerprint_sha256
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
HTTP_CANDIDATE = {"engine": "openai+http://u:pw@emb:8080/v1?model=m", "max_tokens": 512}
# The shape guard.engines.llamacpp's fingerprint() has.
GGUF = {
    "engine": "llamacpp",
    "model": {
        "sha256": "ab" * 32,
        "file": "all-MiniLM-L6-v2.Q8_0.gguf",
        "name": "all-MiniLM-L6-v2",
        "architecture": "bert",
        "file_type": "Q8_0",
        "dims": 16,
        "context_length": 512,
    },
    "settings": {
        "max_tokens": 256,
        "prefix": "query: ",
        "normalize": None,
        "pooling": "mean",
        "token_limit": 256,
        "truncation": "keep closing special tokens (as Hugging Face tokenizers)",
        "device": "cpu",
        "n_gpu_layers": 0,
    },
    "versions": {"llama-cpp-python": "0.3.36"},
}
# The shape guard.engines.st's fingerprint() has.
ST = {
    "engine": "st",
    "model": {"name": "all-MiniLM-L6-v2", "sha256": "cd" * 32, "modules": [], "dims": 16},
    "settings": {"max_tokens": None, "prefix": "", "normalize": None, "pooling": "mean",
                 "token_limit": 256, "model_normalizes": True, "device": "cpu"},
    "versions": {},
}  # fmt: skip


def _report(
    findings: tuple[Finding, ...] = (TRUNCATION,),
    *,
    n: int = 400,
    mismatching: int = 4,
    scale: float = 1.0,
    candidate: dict[str, object] = HTTP_CANDIDATE,
    baseline: dict[str, object] | None = None,
) -> CheckReport:
    """A report of ``n`` records, the longest ``mismatching`` of them replaced by noise
    (4 of 400: a bound that has not decided), the candidate's lengths ``scale`` times
    the stored ones."""
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(n, 16)).astype(np.float32)
    tokens = np.arange(n) + 1
    candidate_vectors = stored * np.float32(scale)
    if mismatching:
        candidate_vectors[tokens > n - mismatching] = rng.normal(size=(mismatching, 16))
    comparison = compare(stored, candidate_vectors, tokens, "cosine")
    thresholds = Thresholds()
    b = bound(comparison.failures(0.99), comparison.n, threshold=0.99, allowed_share=0.01)
    return build_report(
        verdict=decide(b, findings, thresholds, 0.95),
        store=STORE,
        candidate=candidate,
        baseline=baseline,
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
    assert b["decision"] == "continue"
    assert "400" in b["statement"] and "2.9%" in b["statement"]


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


UNDECIDED_LINE = (
    "4 of 400 below 0.99 (median 1.000000); at 99% confidence between 0.20% and 2.9% of the "
    "store, against the allowed 1%"
)


def test_text_summary_shows_verdict_bound_metrics_and_fix() -> None:
    console = Console(record=True, width=200, color_system=None)

    to_text(_report(), console)
    text = console.export_text()

    assert text.startswith("FIX_CONFIG  (exit 3)")
    assert UNDECIDED_LINE in text
    assert "cosine median" in text
    assert "truncation_mismatch: records up to 256 tokens match" in text
    assert "-> set max_tokens=256 on the candidate" in text
    assert "s3cret" not in text


def test_markdown_has_verdict_bound_and_diagnosis() -> None:
    markdown = to_markdown(_report())

    assert markdown.startswith("## guard check: `fix_config` (exit 3)\n")
    assert f"**{UNDECIDED_LINE}" in markdown
    assert "| overlap@10 | 0.950 |" in markdown
    assert (
        "- **truncation_mismatch**: records up to 256 tokens match. "
        "Fix: set max_tokens=256 on the candidate." in markdown
    )


def test_html_is_self_contained_with_charts() -> None:
    page = to_html(_report())

    assert page.startswith("<!doctype html>")
    assert "fix_config" in page
    assert UNDECIDED_LINE in page
    assert page.count("<svg") == 2
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page
    assert not re.search(r"url\((?!#)", page)  # only references inside the page
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and "<metadata" not in page


def _all_formats(report: CheckReport) -> dict[str, str]:
    console = Console(record=True, width=300, color_system=None)
    to_text(report, console)
    return {
        "text": console.export_text(),
        "markdown": to_markdown(report),
        "html": html.unescape(to_html(report)),
    }


def test_every_format_names_the_candidate_the_baseline_and_the_store() -> None:
    """Model file, engine type, key settings and a 12-hex fingerprint of each side, and
    the store as the JSON has it, in text, Markdown and HTML."""
    report = _report(candidate=GGUF, baseline=ST)
    candidate_print = fingerprint_sha256(report.candidate)[:12]
    baseline_print = fingerprint_sha256(report.baseline or {})[:12]

    for name, rendered in _all_formats(report).items():
        assert "all-MiniLM-L6-v2.Q8_0.gguf" in rendered, name
        assert "llamacpp Q8_0" in rendered, name
        assert "max_tokens=256" in rendered and "prefix='query: '" in rendered, name
        assert "pooling=mean" in rendered, name
        assert candidate_print in rendered and baseline_print in rendered, name
        assert "st; token limit 256, pooling=mean, normalized by the model" in rendered, name
        assert "postgresql://guard:***@db:5432/docs?table=chunks" in rendered, name
        assert "120,000 records, 16 dims, cosine, langchain layout" in rendered, name
        assert "s3cret" not in rendered, name


def test_engines_are_described_from_any_fingerprint_shape() -> None:
    served = {
        "engine": "openai+http",
        "model": {"requested": "minilm", "served": "all-MiniLM-L6-v2.F16.gguf"},
        "settings": {"max_tokens": None, "prefix": "", "normalize": True, "pooling": None,
                     "bridge": {"path": "/b/minilm.bridge.npz", "sha256": "ef" * 32},
                     "truncation": "server"},
    }  # fmt: skip

    assert describe_engine(served).line() == (
        "all-MiniLM-L6-v2.F16.gguf (asked for minilm) (openai+http; normalize=true, "
        f"bridge=minilm.bridge.npz), fingerprint {fingerprint_sha256(served)[:12]}"
    )
    flat = describe_engine({"engine": "llamacpp:/models/m.gguf?max_tokens=64", "max_tokens": 64})
    assert (flat.name, flat.kind, flat.settings) == (
        "llamacpp:m.gguf?max_tokens=64",
        "llamacpp",
        ("max_tokens=64",),
    )
    assert "not given" in _all_formats(_report())["text"].split("baseline", 1)[1].splitlines()[0]


def test_a_failure_is_stated_by_its_lower_bound_and_not_repeated() -> None:
    """100 of 100 below: how many, their median, and at least what share of the store;
    the policy's sentence of the same bound is not repeated as the first bullet."""
    report = _report((), n=100, mismatching=100)
    b = report.bound or {}
    median = report.metrics["cosine"]["median"]
    line = (
        f"100 of 100 below 0.99 (median {median:.3f}); at least 95% of the store, at 99% confidence"
    )

    assert (report.verdict, b["decision"]) == ("reindex", "fail")
    assert b["share_below_threshold_lower"] == pytest.approx(0.955, abs=1e-3)
    for name, rendered in _all_formats(report).items():
        assert line in rendered, name
        assert "at most 100%" not in rendered, name
        for reason in report.reasons:
            assert reason not in rendered, (name, reason)
    assert "no setting explains the mismatch" in _all_formats(report)["text"]


def test_an_approval_is_stated_by_its_upper_bound_without_a_diagnosis() -> None:
    """0 of 600 below: at most 0.77% (the upper bound, rounded up); no diagnosis line,
    and a norm ratio that decides nothing under cosine explained, not bare."""
    report = _report((), n=600, mismatching=0, scale=2.94)
    line = "At 99% confidence at most 0.77% of stored vectors fall below 0.99"

    assert report.verdict == "approve"
    assert (report.bound or {})["share_below_threshold_upper"] == pytest.approx(0.00765, abs=1e-5)
    rendered = _all_formats(report)
    for name, text in rendered.items():
        assert line in text, name
        assert "no cause found" not in text.lower() and "diagnosis" not in text.lower(), name
        assert "median 2.94: lengths differ; cosine ranking ignores length" in text, name
        assert "norm ratio" not in text, name
    first_bullet = rendered["markdown"].split("\n- ", 1)[1].splitlines()[0]
    assert first_bullet == "overlap@10 is 0.950"


def test_a_norm_ratio_that_decides_nothing_is_left_out() -> None:
    for name, text in _all_formats(_report((), n=600, mismatching=0)).items():
        assert "|candidate|/|stored|" not in text, name


def test_undecided_has_its_own_colour() -> None:
    assert (VERDICT_STYLES["undecided"], HTML_COLOURS["undecided"]) == ("blue", "#0969da")
    report = _report(())
    if report.verdict == "undecided":  # the policy of this tree decides so
        assert "color: #0969da" in to_html(report)


def test_charts_are_real_text_at_body_size_true_to_the_data_and_deterministic() -> None:
    """matplotlib SVG: text as <text> at 15px (the page's body size); the histogram's
    legend names only the kinds of bands that hold records; the same report renders the
    same bytes."""
    approve = to_html(_report((), n=600, mismatching=0))
    failing = to_html(_report((), n=100, mismatching=100))

    for page in (approve, failing):
        sizes = set(re.findall(r"font-size: ([\d.]+)px", page))
        assert sizes == {"15"}, sizes
        assert "<text" in page and "threshold 0.99" in page
        assert "records per cosine band" in page and "cosine by input length" in page
    assert "at or above 0.99" in approve and "all at or above 0.99" in approve
    assert "wholly below" not in approve and "partly below" not in approve
    assert "has records below" not in approve
    assert "wholly below 0.99" in failing
    assert to_html(_report()) == to_html(_report())


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
    report = _report((), n=600, mismatching=0)

    assert report.verdict == "approve"
    assert report.reasons[1:] == ("overlap@10 is 0.950",)
    assert "reasons" not in json.loads(to_json(report))
    assert "- overlap@10 is 0.950" in to_markdown(report)
