"""The `guard` command as users run it: a real process, exit codes, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from test_report import DESIGN_FIELDS

from guard.cli import app
from guard.core.policy import Thresholds

REPO = Path(__file__).resolve().parents[1]
SECRET = "hunter2-s3cret"


def guard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from guard.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("store", "candidate", "expected"),
    [
        (f"mongodb://app:{SECRET}@db/x", "llamacpp:/m.gguf", "unknown store scheme"),
        ("pgserver:/tmp/x?table=t", f"cohere://x?api_key={SECRET}", "unknown engine scheme"),
        (
            f"postgresql://app:{SECRET}@127.0.0.1:1/db?table=t",
            "llamacpp:/nonexistent/model.gguf",
            "",
        ),
        ("pgserver:/tmp/x?table=t", "llamacpp:/m.gguf?max_tokens=lots", "max_tokens"),
    ],
)
def test_bad_input_is_one_line_exit_2_without_secrets(
    store: str, candidate: str, expected: str
) -> None:
    line = assert_one_line_error(guard("check", "--store", store, "--candidate", candidate))
    assert line.startswith("error:")
    assert expected in line


def test_a_bad_config_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "guard.toml"
    config.write_text("[thresholds]\nmin_cosine = 2.0\n")
    line = assert_one_line_error(
        guard(
            "check",
            "--config",
            str(config),
            "--store",
            "pgserver:/x?table=t",
            "--candidate",
            "llamacpp:/m.gguf",
        )
    )
    assert "min_cosine" in line


def test_usage_errors_exit_2() -> None:
    result = guard("check", "--store", "pgserver:/x?table=t")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--candidate" in result.stderr


def test_check_writes_every_report_format(f16_store: str, gguf_f16: Path, tmp_path: Path) -> None:
    candidate = f"llamacpp:{gguf_f16}"
    as_json = guard(
        "--log-format",
        "json",
        "check",
        "--store",
        f16_store,
        "--candidate",
        candidate,
        "--format",
        "json",
    )
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert list(report) == DESIGN_FIELDS
    assert (report["verdict"], report["exit_code"], report["sample"]["size"]) == ("approve", 0, 109)
    # 109 of the 120 records decide exactly (hypergeometric): the store is not read whole.
    assert (report["bound"]["exact"], report["bound"]["method"]) == (False, "hypergeometric")
    assert report["candidate"]["model"]["sha256"] == _sha256(gguf_f16)

    for fmt, marker in [("markdown", "approve"), ("html", "<svg"), ("text", "approve")]:
        out = tmp_path / f"report.{fmt}"
        result = guard(
            "check",
            "--store",
            f16_store,
            "--candidate",
            candidate,
            "--format",
            fmt,
            "--output",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        assert marker in out.read_text().lower()


def test_baseline_agreement_is_reported(f16_store: str, gguf_f16: Path, gguf_q8_0: Path) -> None:
    result = guard(
        "check",
        "--store",
        f16_store,
        "--candidate",
        f"llamacpp:{gguf_q8_0}",
        "--baseline",
        f"llamacpp:{gguf_f16}",
        "--format",
        "json",
    )
    report = json.loads(result.stdout)
    assert report["baseline"]["agreement_with_stored"]["cosine_min"] >= 0.99999


def test_json_logs_never_carry_the_dsn_password(gguf_f16: Path) -> None:
    result = guard(
        "--log-format",
        "json",
        "-vv",
        "check",
        "--store",
        f"postgresql://app:{SECRET}@127.0.0.1:1/db?table=t",
        "--candidate",
        f"llamacpp:{gguf_f16}",
    )
    assert result.returncode == 2
    assert SECRET not in result.stderr + result.stdout


def test_every_command_is_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    group = typer.main.get_command(app)
    names = []
    for name, sub in getattr(group, "commands", {}).items():
        names.append(name)
        names += [f"{name} {child}" for child in getattr(sub, "commands", {})]
    assert "check" in names
    missing = [name for name in names if not re.search(rf"guard {re.escape(name)}\b", readme)]
    assert missing == []


def _help(*command: str) -> dict[str, str]:
    """``guard COMMAND --help`` as {option: its help, continuation lines joined}."""
    result = guard(*command, "--help")
    assert result.returncode == 0, result.stderr
    options: dict[str, str] = {}
    current = None
    for line in result.stdout.splitlines():
        found = re.match(r" {2}(-\w, )?(--[\w-]+)", line)  # continuations sit deeper
        if found:
            current = found.group(2)
            options[current] = line.strip()
        elif current is not None and line.strip():
            options[current] += " " + line.strip()
        else:
            current = None
    return options


def test_help_shows_flags_as_flags_defaults_and_ranges() -> None:
    check = _help("check")
    defaults = Thresholds()
    for flag in ("--schedule", "--no-cache"):
        assert re.match(rf"{flag}\s+\w", check[flag]), check[flag]  # no <bool> after it
    assert "[default: 2000]" in check["--sample"]
    assert f"[default: {defaults.max_sample}]" in check["--sample"]
    for flag, field in [("--min-cosine", "min_cosine"), ("--allowed-share", "allowed_share"),
                        ("--confidence", "confidence"), ("--min-overlap", "min_overlap"),
                        ("--overlap-k", "overlap_k"), ("--initial-sample", "initial_sample"),
                        ("--min-recall-ratio", "min_recall_ratio")]:  # fmt: skip
        assert f"[default: {getattr(defaults, field)}" in check[flag], check[flag]
    assert "-1.0<=x<=1.0" in check["--min-cosine"]
    assert '"relevant": [ids]' in check["--queries"]
    assert "[thresholds]" in check["--config"]
    top = _help()
    assert re.match(r"-v, --verbose\s+More logs", top["--verbose"]), top["--verbose"]
    assert "<bool>" not in "".join(top.values()) + "".join(check.values())


def test_verbose_is_a_count() -> None:
    """-vv is two -v (debug); -v takes no value."""
    counted = guard("-vv", "--log-format", "json", "check", "--store", "pgserver:/x?table=t",
                    "--candidate", "llamacpp:/nonexistent.gguf")  # fmt: skip
    assert "No such" not in counted.stderr
    assert counted.returncode == 2
    assert "No such command '1'" in assert_one_line_error(guard("-v", "1", "check"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--sample", "0"), "--sample must be at least 100 (the first round's size), not 0"),
        (("--sample", "50"), "--sample must be at least 100 (the first round's size), not 50"),
        (("--sample", "20", "--initial-sample", "30"), "--sample must be at least 30"),
        (("--initial-sample", "5000"), "--initial-sample must be at most 2000"),
        (("--confidence", "1"), "'--confidence': 1 is not in the range 0<x<1"),
        (("--allowed-share", "1"), "'--allowed-share': 1 is not in the range 0<=x<1"),
        (("--min-cosine", "2"), "Invalid value for '--min-cosine'"),
        (("--overlap-k", "0"), "Invalid value for '--overlap-k'"),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_the_option(
    args: tuple[str, ...], expected: str
) -> None:
    line = assert_one_line_error(
        guard("check", "--store", "pgserver:/x?table=t", "--candidate", "llamacpp:/m.gguf", *args)
    )
    assert expected in line
    assert "max_sample" not in line


def test_an_unknown_option_is_one_line_exit_2() -> None:
    line = assert_one_line_error(guard("check", "--stor", "pgserver:/x?table=t"))
    assert line == (
        "error: No such option: --stor (Possible options: --store) (see: guard check --help)"
    )
    line = assert_one_line_error(guard("reindex", "run", "abc", "--lease", "x"))
    assert "No such option: --lease (Possible options: --lease-seconds)" in line


@pytest.mark.parametrize(
    ("candidate", "meant"),
    [
        ("./models/m.Q8_0.gguf", "llamacpp:./models/m.Q8_0.gguf"),
        ("/m/m.gguf?max_tokens=256", "llamacpp:/m/m.gguf?max_tokens=256"),
        ("file:///m/m.gguf", "llamacpp:/m/m.gguf"),
        ("gguf:/m/m.gguf", "llamacpp:/m/m.gguf"),
    ],
)
def test_a_bare_model_path_suggests_its_scheme(candidate: str, meant: str) -> None:
    line = assert_one_line_error(
        guard("check", "--store", "pgserver:/x?table=t", "--candidate", candidate)
    )
    assert line.endswith(f"; did you mean {meant}?"), line


def test_a_bare_folder_suggests_the_folder_engines(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text("[]")
    line = assert_one_line_error(
        guard("check", "--store", "pgserver:/x?table=t", "--candidate", str(tmp_path))
    )
    assert line.endswith(f"did you mean st:{tmp_path}?"), line
    known = assert_one_line_error(
        guard("check", "--store", "pgserver:/x?table=t", "--candidate", "llamacpp:/m.txt")
    )
    assert "did you mean" not in known  # a known scheme gets its own error, no guess


@pytest.mark.parametrize("store_kind", ["qdrant-local"])
@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_a_closed_pipe_keeps_the_verdicts_exit_code(
    reader: str, f16_store: str, gguf_f16: Path
) -> None:
    """`| true` closes the pipe before the first write (EPIPE for certain); `| head -1`
    after the first line. Either way the approve's 0 stands, with no traceback, and -vv
    logs at debug level on stderr."""
    command = shlex.join(
        [sys.executable, "-c", "from guard.cli import main; main()", "-vv", "--log-format",
         "json", "check", "--store", f16_store, "--candidate", f"llamacpp:{gguf_f16}"]
    )  # fmt: skip
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | {reader}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr
    assert '"level": "debug"' in result.stderr  # -vv counted twice
    if reader == "head -1":
        assert result.stdout.startswith("APPROVE"), result.stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
