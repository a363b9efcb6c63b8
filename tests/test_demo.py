"""`guard demo` as the quick start runs it, on a small corpus in a data folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_fills_both_stores_and_gives_each_candidate_its_verdict(
    tmp_path: Path, demo_models: dict[str, Path], models_cache: Path, llama_cpp_src: Path
) -> None:
    env = {
        **os.environ,
        "GUARD_HOME": str(tmp_path),
        "GUARD_MODELS_CACHE": str(models_cache),
        "GUARD_LLAMACPP_SRC": str(llama_cpp_src),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from guard.cli import main; main()",
            "demo",
            "--limit",
            "150",
            "--sample",
            "150",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**env, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"qdrant+local:{tmp_path}/demo/qdrant?collection=pydoc" in out
    assert f"pgserver:{tmp_path}/demo/pg?table=pydoc" in out
    rows = {
        line.split("  ")[0].strip(): line.split()[-1]
        for line in out.splitlines()
        if line.strip().startswith(("F16", "Q8_0", "Q4_0")) and ": " not in line
    }
    assert rows == {
        "F16": rows["F16"],  # fix_config or approve: depends on long texts among the 150
        "F16 max_tokens=256": "approve",
        "Q8_0 max_tokens=256": "approve",
        "Q4_0 max_tokens=256": "reindex",
    }
    assert rows["F16"] in {"fix_config", "approve"}
    assert "Q4_0 max_tokens=256: quantization_noise:" in out
    assert "Traceback" not in result.stderr
