"""docs/runbook.md's commands are the real ones: this runs them, section by section, on
an embedded PostgreSQL store (`pgserver:`) and the demo GGUF models, through `guard`'s
own entry point (``guard.cli.main``), and checks each exit code the runbook promises.

Two walks: a candidate with a wrong prefix (check says fix_config, the fixed URI
approves), and a Q4_0 candidate (check says reindex; plan, run, status, verify,
catch-up, cutover, monitor, history, rollback, cleanup).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import psycopg
import pytest

from guard.corpus import demo_corpus
from guard.engines import open_engine
from guard.records import RecordBatch
from guard.stores import open_store

RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "runbook.md"
RECORDS = 24
_BLOCK = re.compile(r"```(sh|toml)\n(.*?)```", re.S)
_CAPTURE = re.compile(r"^(\w+)=\$\((guard .*) \| jq -r \.(\w+)\)$")


def sections() -> dict[str, list[tuple[str, str]]]:
    """Section number -> its fenced sh/toml blocks, in order."""
    found: dict[str, list[tuple[str, str]]] = {}
    for part in re.split(r"^## ", RUNBOOK.read_text(encoding="utf-8"), flags=re.M)[1:]:
        number = part.split(".", 1)[0]
        found[number] = [(m[1], m[2]) for m in _BLOCK.finditer(part)]
    return found


class Shell:
    """Runs a block's lines: `guard ...`, and `VAR=$(guard ... | jq -r .field)`."""

    def __init__(
        self,
        values: dict[str, str],
        run: Callable[[list[str]], tuple[int, str, str]],
        folder: Path,
    ) -> None:
        self.values = values
        self.run = run
        self.folder = folder
        self.codes: list[tuple[str, int]] = []
        self.errors: list[str] = []  # stderr of each command, for failure messages

    def substitute(self, text: str, *, quote: bool = True) -> str:
        """Placeholders replaced; a quoted one in sh becomes one shell word."""
        for name, value in self.values.items():
            if quote:
                text = text.replace(f'"${name}"', shlex.quote(value))
            text = text.replace(f"${name}", value)
        return text

    def block(self, kind: str, body: str) -> list[str]:
        """Run an sh block (or write a toml block to guard.toml); the outputs."""
        if kind == "toml":
            text = self.substitute(body, quote=False)
            (self.folder / "guard.toml").write_text(text, encoding="utf-8")
            return []
        outputs = []
        for line in body.strip().splitlines():
            capture = _CAPTURE.match(line)
            command = capture[2] if capture else line
            words = shlex.split(self.substitute(command))
            assert words[0] == "guard", line
            code, output, error = self.run(words[1:])
            self.errors.append(error)
            self.codes.append((words[1] + " " + words[2], code))
            if capture:
                self.values[capture[1]] = str(json.loads(output)[capture[3]])
            outputs.append(output)
        return outputs


@pytest.fixture
def guard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Iterator[Callable[[list[str]], tuple[int, str, str]]]:
    """`guard ARGS` in this process, through the console entry point: (exit code, stdout,
    stderr).
    Relative paths (report.json, guard.toml) resolve in the test's folder."""
    from guard import cli

    monkeypatch.chdir(tmp_path)

    def run(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["guard", *args])
        capsys.readouterr()
        try:
            cli.main()
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run


@pytest.fixture(scope="module")
def texts() -> list[str]:
    corpus = demo_corpus()
    order = np.random.default_rng(11).permutation(len(corpus))
    return [corpus[i][:60] for i in order[: RECORDS + 1]]


@pytest.fixture
def store(pg_dsn: str, gguf_f16: Path, texts: list[str]) -> Iterator[str]:
    """A `pgserver:` store (the embedded default) written by the F16 engine."""
    datadir = parse_qs(urlsplit(pg_dsn).query)["host"][0]
    uri = f"pgserver:{datadir}?table=docs_{uuid.uuid4().hex[:8]}"
    engine = open_engine(f"llamacpp:{gguf_f16}")
    target = open_store(uri)
    try:
        vectors = engine.embed(texts[:RECORDS])
        target.create(dims=vectors.shape[1], distance="cosine")
        target.upsert(RecordBatch(tuple(range(RECORDS)), tuple(texts[:RECORDS]), vectors))
    finally:
        engine.close()
        target.close()
    yield uri
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        table = uri.rsplit("=", 1)[1]
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{table}%",)
        ).fetchall():
            conn.execute(f'DROP TABLE "{name}"')


def test_fix_config_branch(
    guard: Callable[[list[str]], tuple[int, str, str]],
    store: str,
    gguf_f16: Path,
    state_dsn: str,
    tmp_path: Path,
) -> None:
    """A candidate that adds a prefix the store was written without: exit 3 naming the
    prefix; the candidate with the suggested setting: exit 0."""
    runbook = sections()
    shell = Shell(
        {
            "STORE": store,
            "CANDIDATE": f"llamacpp:{gguf_f16}?prefix=search_document%3A+",
            "FIXED_CANDIDATE": f"llamacpp:{gguf_f16}",
        },
        guard,
        tmp_path,
    )
    shell.block(*runbook["1"][0])
    report = json.loads((tmp_path / "report.json").read_text())
    assert [f["cause"] for f in report["diagnosis"]] == ["prefix_mismatch"]
    for block in runbook["2"]:
        shell.block(*block)
    assert shell.codes == [("check --store", 3), ("check --store", 0)]


def test_reindex_branch(
    guard: Callable[[list[str]], tuple[int, str, str]],
    store: str,
    gguf_q4_0: Path,
    gguf_f16: Path,
    texts: list[str],
    state_dsn: str,
    tmp_path: Path,
) -> None:
    """A Q4_0 candidate: check exits 1, then every re-index step, the monitor on the
    cut-over store, and the rollback exit 0 keeping a record written after cutover."""
    runbook = sections()
    candidate = f"llamacpp:{gguf_q4_0}"
    values = {"STORE": store, "CANDIDATE": candidate, "BASELINE": f"llamacpp:{gguf_f16}"}
    shell = Shell(values, guard, tmp_path)
    shell.block(*runbook["1"][0])
    assert shell.codes == [("check --store", 1)]

    plan, run, verify, catch_up, cutover = runbook["3"]
    for block in (plan, run, verify):
        shell.block(*block)
    # (A record written during the job and copied by catch-up fails the cutover's verify
    # with Q4_0, whose vectors move by ~1e-4 between batch sizes: reported to re-index.)
    assert shell.block(*catch_up)[0].startswith("inserted 0, updated 0, deleted 0")
    shell.block(*cutover)

    for block in runbook["5"]:
        shell.block(*block)
    with open_engine(candidate) as engine, open_store(store) as live:  # the application
        live.upsert(RecordBatch((RECORDS,), (texts[RECORDS],), engine.embed(texts[RECORDS:])))
    rollback, cleanup = runbook["6"][0][1].strip().splitlines()
    shell.block("sh", rollback)
    with open_store(store) as live:
        assert live.fetch([RECORDS]).texts == (texts[RECORDS],)
    shell.block("sh", cleanup)
    assert shell.codes[1:] == [
        ("reindex plan", 0),
        ("reindex run", 0),
        ("reindex status", 0),
        ("reindex verify", 0),
        ("reindex catch-up", 0),
        ("reindex cutover", 0),
        ("monitor --config", 0),
        ("monitor history", 0),
        ("reindex rollback", 0),
        ("reindex cleanup", 0),
    ], "\n".join(shell.errors)
