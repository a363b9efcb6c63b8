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
from test_cli import assert_one_line_error, guard

from guard.engines import open_engine
from guard.records import RecordBatch
from guard.stores import open_store


@pytest.fixture
def f16_store(new_store_uri: Callable[..., str], gguf_f16: Path, corpus: list[str]) -> str:
    """120 short paragraphs embedded by llama.cpp F16: the whole store is the sample."""
    texts = [text for text in corpus if len(text) < 600][:120]
    engine = open_engine(f"llamacpp:{gguf_f16}")
    vectors = engine.embed(texts)
    engine.close()
    uri = new_store_uri()
    store = open_store(uri)
    store.create(dims=vectors.shape[1], distance="cosine")
    store.upsert(RecordBatch(tuple(range(len(texts))), tuple(texts), vectors))
    store.close()
    return uri


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
        assert speed["texts"] == 100 and speed["tokens"] > speed["texts"]
        assert speed["model_bytes"] > 1_000_000
        assert speed["peak_rss_added_bytes"] is not None and speed["peak_rss_added_bytes"] >= 0
        assert rows[uri]["retrieval"] == dict.fromkeys(
            ("as_stored", "switch", "reindexed", "bridged")
        )
    assert rows[f16]["speed"]["model_bytes"] > rows[q4]["speed"]["model_bytes"]
    assert (report["k"], report["queries"], report["sample"]["size"]) == (10, None, 120)


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
