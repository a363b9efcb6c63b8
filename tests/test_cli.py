"""The `guard` command as users run it: a real process, exit codes, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from test_report import DESIGN_FIELDS

from guard.cli import app

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
    assert (report["verdict"], report["exit_code"], report["sample"]["size"]) == ("approve", 0, 120)
    assert report["bound"]["exact"] is True
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
