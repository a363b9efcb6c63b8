"""`guard compare` as users run it: a real process on a real store written by the F16
GGUF, real candidates (GGUF F16 and Q4_0, a model2vec static model, a GGUF whose
architecture llama.cpp does not know), exit codes and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures_models import UNKNOWN_ARCHITECTURE, free_port
from fixtures_stores import write_store
from test_cli import assert_one_line_error, guard

from guard.checking.charts import candidate_colours
from guard.engines import open_engine


def compare_json(store: str, *candidates: str, seed: int = 3) -> tuple[int, dict[str, Any]]:
    args = [arg for uri in candidates for arg in ("--candidate", uri)]
    result = guard("compare", "--store", store, *args, "--seed", str(seed), "--format", "json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["candidate"]: row for row in report["candidates"]}


def test_four_candidates_are_ranked_with_verdict_speed_and_load_failures(
    f16_store: str,
    gguf_f16: Path,
    gguf_q4_0: Path,
    static_model_dir: Path,
    gguf_unknown_arch: Path,
) -> None:
    """F16 approves and ranks first; Q4_0 needs a re-index; the static model is another
    space and the fastest by far; the unknown architecture is a row that names it; exit 0."""
    f16, q4, static = (
        f"llamacpp:{gguf_f16}",
        f"llamacpp:{gguf_q4_0}",
        f"model2vec:{static_model_dir}",
    )
    unknown = f"llamacpp:{gguf_unknown_arch}"
    code, report = compare_json(f16_store, unknown, static, q4, f16)
    rows = by_name(report)

    assert code == 0
    assert report["candidates"][0]["candidate"] == f16
    assert (rows[f16]["verdict"], rows[f16]["exit_code"], rows[f16]["causes"]) == ("approve", 0, [])
    assert rows[q4]["verdict"] == "reindex"
    assert (rows[static]["verdict"], "different_space" in rows[static]["causes"]) == (
        "reindex",
        True,
    )
    assert (rows[unknown]["loaded"], rows[unknown]["verdict"], rows[unknown]["speed"]) == (
        False,
        None,
        None,
    )
    assert UNKNOWN_ARCHITECTURE in rows[unknown]["error"]
    assert "\n" not in rows[unknown]["error"]
    assert report["candidates"][-1]["candidate"] == unknown

    speeds = {uri: rows[uri]["speed"]["texts_per_second"] for uri in (f16, q4, static)}
    assert speeds[static] > 10 * max(speeds[f16], speeds[q4])
    for uri in (f16, q4, static):
        speed = rows[uri]["speed"]
        assert (
            speed["texts"] == report["sample"]["speed_texts"] and speed["tokens"] > speed["texts"]
        )
        assert speed["model_bytes"] > 1_000_000
        assert speed["peak_rss_added_bytes"] is not None and speed["peak_rss_added_bytes"] >= 0
        retrieval = rows[uri]["retrieval"]
        assert (retrieval["as_stored"], retrieval["bridged"]) == (None, None)  # no baseline
        assert retrieval["switch"]["queries"] == report["queries"]["count"]
        assert retrieval["reindexed"] is not None
    assert rows[unknown]["retrieval"]["switch"] is None
    assert rows[f16]["speed"]["model_bytes"] > rows[q4]["speed"]["model_bytes"]
    assert (report["k"], report["queries"]["synthetic"], report["sample"]["size"]) == (
        10,
        True,
        120,
    )
    assert report["queries"]["count"] > 20


def test_no_candidate_loading_exits_4(f16_store: str, gguf_unknown_arch: Path) -> None:
    """Unknown architecture, missing file, server down: three rows, each with its reason."""
    down = f"openai+http://127.0.0.1:{free_port()}/v1?model=minilm"
    code, report = compare_json(
        f16_store, f"llamacpp:{gguf_unknown_arch}", "llamacpp:/nonexistent/model.gguf", down
    )
    assert code == 4
    rows = report["candidates"]
    assert [row["loaded"] for row in rows] == [False, False, False]
    assert "model file not found" in rows[1]["error"]
    assert "Connection refused" in rows[2]["error"]


def test_a_row_holds_what_guard_check_decides(f16_store: str, gguf_q4_0: Path) -> None:
    """Same store, seed and candidate: compare's verdict, causes and bound are check's."""
    q4 = f"llamacpp:{gguf_q4_0}"
    checked = guard(
        "check", "--store", f16_store, "--candidate", q4, "--seed", "5", "--format", "json"
    )
    report = json.loads(checked.stdout)
    _, compared = compare_json(f16_store, q4, seed=5)
    row = compared["candidates"][0]
    assert (row["verdict"], row["exit_code"], row["causes"], row["bound"]) == (
        report["verdict"],
        checked.returncode,
        [finding["cause"] for finding in report["diagnosis"]],
        report["bound"],
    )


def test_only_candidates_needing_a_reindex_exit_1_and_render_as_a_table(
    f16_store: str, gguf_q4_0: Path, tmp_path: Path
) -> None:
    out = tmp_path / "compare.md"
    result = guard(
        "compare", "--store", f16_store, "--candidate", f"llamacpp:{gguf_q4_0}",
        "--format", "markdown", "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    text = out.read_text()
    assert "no candidate can be switched to without re-indexing" in text
    assert f"| 1 | llamacpp:{gguf_q4_0} | reindex |" in text


def test_the_same_seed_gives_the_same_figures(
    f16_store: str, gguf_f16: Path, gguf_q4_0: Path
) -> None:
    """Everything but the speed figures is reproducible."""
    candidates = (f"llamacpp:{gguf_q4_0}", f"llamacpp:{gguf_f16}")
    runs = [compare_json(f16_store, *candidates, seed=11) for _ in range(2)]
    for _, report in runs:
        for row in report["candidates"]:
            row.pop("speed")
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "store",
    ["mongodb://app:hunter2-s3cret@db/x", "postgresql://app:hunter2-s3cret@127.0.0.1:1/db?table=t"],
)
def test_a_bad_store_is_one_line_exit_2(store: str, gguf_f16: Path) -> None:
    line = assert_one_line_error(
        guard("compare", "--store", store, "--candidate", f"llamacpp:{gguf_f16}")
    )
    assert line.startswith("error:")


def stdlib_docs() -> list[tuple[str, str]]:
    """(summary line, docstring body) of documented stdlib functions: queries whose one
    right answer is known."""
    import inspect
    import json as json_module
    import os.path
    import shutil
    import statistics
    import string
    import textwrap

    pairs = []
    for module in (os.path, shutil, statistics, textwrap, string, json_module, inspect):
        for name, value in sorted(vars(module).items()):
            doc = inspect.getdoc(value) if callable(value) and not name.startswith("_") else None
            if not doc or "\n\n" not in doc:
                continue
            summary, body = doc.split("\n\n", 1)
            summary, body = " ".join(summary.split()), " ".join(body.split())[:800]
            if len(summary.split()) >= 4 and len(body.split()) >= 8:
                pairs.append((summary, body))
    return list(dict.fromkeys(pairs))


@pytest.fixture
def docs_store(
    new_store_uri: Callable[..., str], gguf_f16: Path, tmp_path: Path
) -> tuple[str, Path]:
    """Docstring bodies embedded by the F16 GGUF, and a queries file of their summaries."""
    pairs = stdlib_docs()
    engine = open_engine(f"llamacpp:{gguf_f16}")
    vectors = engine.embed([body for _, body in pairs])
    engine.close()
    uri = write_store(new_store_uri(), [body for _, body in pairs], vectors)
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"query": q, "relevant": [i]}) + "\n" for i, (q, _) in enumerate(pairs))
    )
    return uri, queries


def test_retrieval_on_stdlib_docstrings_as_stored_switch_and_reindexed(
    docs_store: tuple[str, Path], gguf_f16: Path, gguf_q4_0: Path, static_model_dir: Path
) -> None:
    """Known answers: F16's switch is what is stored; Q4_0 does not beat it; Model2Vec
    cannot search the stored vectors but is measured after a re-index."""
    store, queries = docs_store
    f16, q4, static = (
        f"llamacpp:{gguf_f16}",
        f"llamacpp:{gguf_q4_0}",
        f"model2vec:{static_model_dir}",
    )
    result = guard(
        "compare", "--store", store, "--candidate", f16, "--candidate", q4,
        "--candidate", static, "--baseline", f16, "--queries", str(queries),
        "--format", "json",
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    rows = by_name(report)
    assert report["queries"] == {"count": len(stdlib_docs()), "synthetic": False}
    stored = rows[f16]["retrieval"]["as_stored"]
    assert stored["recall_at_k"] > 0.5
    assert stored["recall_at_k_ci"][0] <= stored["recall_at_k"] <= stored["recall_at_k_ci"][1]
    switch = rows[f16]["retrieval"]["switch"]  # the same engine: the same hits; pgvector's
    # HNSW may order ties of two runs' vectors differently, which moves MRR a little
    assert switch["recall_at_k"] == stored["recall_at_k"]
    assert abs(switch["mrr_at_k"] - stored["mrr_at_k"]) < 0.01
    assert rows[q4]["retrieval"]["switch"]["recall_at_k"] <= stored["recall_at_k_ci"][1]
    static_switch = rows[static]["retrieval"]["switch"]
    assert static_switch["recall_at_k_ci"][1] < stored["recall_at_k_ci"][0]
    assert rows[static]["retrieval"]["reindexed"]["recall_at_k"] > 0.2
    sub = report["subcorpus"]
    assert sub["relevant"] == len(stdlib_docs()) and sub["size"] == len(stdlib_docs())


def test_a_bad_queries_file_is_one_line_naming_the_line(
    f16_store: str, gguf_f16: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"query": "ok text", "relevant": [1]}\n{"query": "no ids"}\n')
    line = assert_one_line_error(
        guard("compare", "--store", f16_store, "--candidate", f"llamacpp:{gguf_f16}",
              "--queries", str(bad))
    )  # fmt: skip
    assert "line 2" in line and "relevant" in line
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"query": "a text", "relevant": [99999]}\n')
    line = assert_one_line_error(
        guard("compare", "--store", f16_store, "--candidate", f"llamacpp:{gguf_f16}",
              "--queries", str(unknown))
    )  # fmt: skip
    assert "not in the store" in line and "99999" in line


def test_check_queries_joins_the_report_and_a_strict_ratio_vetoes_an_approval(
    docs_store: tuple[str, Path], gguf_f16: Path, gguf_q8_0: Path
) -> None:
    """F16 on its own store keeps every query (ratio 1, approve); Q8_0 approves on cosine
    and is held to min_recall_ratio 1.0 by its figures."""
    store, queries = docs_store
    f16, q8 = f"llamacpp:{gguf_f16}", f"llamacpp:{gguf_q8_0}"
    strictly = ("--queries", str(queries), "--min-recall-ratio", "1.0", "--format", "json")
    same = guard("check", "--store", store, "--candidate", f16, "--baseline", f16, *strictly)
    report = json.loads(same.stdout)
    assert (same.returncode, report["verdict"]) == (0, "approve")
    assert report["retrieval"]["recall_ratio"]["lower_bound"] == 1.0
    assert report["retrieval"]["as_stored"] == report["retrieval"]["switch"]
    strict = guard("check", "--store", store, "--candidate", q8, "--baseline", f16, *strictly)
    report = json.loads(strict.stdout)
    lower = report["retrieval"]["recall_ratio"]["lower_bound"]
    causes = [f["cause"] for f in report["diagnosis"]]
    assert lower < 1.0, report["retrieval"]
    assert (strict.returncode, report["verdict"], "recall_loss" in causes) == (1, "reindex", True)


def test_the_html_report_is_self_contained_with_a_labelled_chart(
    f16_store: str, gguf_q4_0: Path, tmp_path: Path
) -> None:
    """No fetches, no scripts; the table, the synthetic-queries label and the chart."""
    out = tmp_path / "compare.html"
    result = guard(
        "compare", "--store", f16_store, "--candidate", f"llamacpp:{gguf_q4_0}",
        "--format", "html", "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    page = out.read_text()
    assert ("http://" not in page, "https://" not in page, "<script" not in page) == (
        True,
        True,
        True,
    )
    assert f"llamacpp:{gguf_q4_0.name}" in page
    assert "ESTIMATED from synthetic queries" in page
    assert page.count('<svg class="chart"') == 1 and ">#1</text>" in page
    assert "switch, no re-index" in page and "after a re-index" in page
    # the candidate's colour comes from its URI, the same in every run and at any rank
    colour = candidate_colours([f"llamacpp:{gguf_q4_0}"])[f"llamacpp:{gguf_q4_0}"]
    assert f"background:{colour}" in page
