"""`guard compare`'s text on a terminal: at 80 columns every candidate's name, verdict
and causes stay whole, a block per candidate instead of a squeezed table."""

from __future__ import annotations

import io

from rich.console import Console
from test_screens import _compare_report

from guard.comparing.render import to_text


def render(width: int) -> str:
    buffer = io.StringIO()
    to_text(_compare_report(), Console(file=buffer, width=width, color_system=None))
    return buffer.getvalue()


def test_at_80_columns_each_candidate_is_a_block_with_its_name_and_verdict_whole() -> None:
    lines = render(80).splitlines()
    heads = [line for line in lines if line[:3] in {f"{i}. " for i in range(1, 6)}]

    assert [" ".join(head.split()[1:]) for head in heads] == [
        "llamacpp:all-MiniLM-L6-v2.F16.gguf?max_tokens=256 approve",
        "llamacpp:all-MiniLM-L6-v2.Q8_0.gguf?max_tokens=256 approve",
        "llamacpp:all-MiniLM-L6-v2.Q4_0.gguf?max_tokens=256 reindex",
        "model2vec:all-MiniLM-L6-v2.static reindex",
        "llamacpp:zeta.gguf not loaded",
    ]
    assert all(len(line) <= 80 for line in lines)
    assert "unknown architecture" in "\n".join(lines)


def test_a_wide_terminal_keeps_the_table() -> None:
    text = render(160)
    assert "texts/s" in text and "R@k switch" in text
    assert not any(line.startswith("1. ") for line in text.splitlines())
