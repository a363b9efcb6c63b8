"""Progress on long work: a line per round of a check, per batch of a re-index run, on
stderr when a person watches it (a terminal), and nothing in a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from guard.checking.run import run_check
from guard.core.policy import Thresholds
from guard.engines import open_engine
from guard.stores import open_store


def test_a_check_reports_each_round_it_measures(f16_store: str, gguf_f16: Path) -> None:
    lines: list[str] = []
    with open_store(f16_store) as store, open_engine(f"llamacpp:{gguf_f16}") as engine:
        report = run_check(
            store, engine, thresholds=Thresholds(max_sample=110), seed=1, progress=lines.append
        )

    assert report.bound is not None
    assert len(lines) == report.bound["rounds"]
    assert lines[-1] == (
        f"round {report.bound['rounds']} of {report.bound['planned_rounds']}: 0 of "
        f"{report.bound['n']} records below cosine 0.99, the bound approves"
    )


def _check_on(stderr_is_a_terminal: bool, store: str, candidate: str) -> str:
    command = [sys.executable, "-c", "from guard.cli import main; main()", "check"]
    command += ["--store", store, "--candidate", candidate, "--format", "json"]
    if not stderr_is_a_terminal:
        return subprocess.run(command, capture_output=True, text=True, check=False).stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=600)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


def test_the_command_prints_progress_on_a_terminal_and_not_in_a_pipe(
    f16_store: str, gguf_f16: Path
) -> None:
    candidate = f"llamacpp:{gguf_f16}"
    on_terminal = _check_on(True, f16_store, candidate)
    in_a_pipe = _check_on(False, f16_store, candidate)

    assert "round 1 of " in on_terminal and "the bound approves" in on_terminal
    assert "round 1 of " not in in_a_pipe
