"""The qdrant-client objects ``QdrantStore`` connects through: one per server URI, one per
local folder in the whole process.

qdrant-client's local mode locks its folder per client, so every store on one folder
in this process shares one client (a re-index reads one collection and writes another).
That client is not thread-safe (two upserts can take the same slot), so the stores of
one folder take turns: one call at a time per folder (``turns``). The shared clients are
closed at exit, while the interpreter still works.
"""

from __future__ import annotations

import atexit
import threading
import warnings
from pathlib import Path

import httpx
from qdrant_client import QdrantClient

CONNECT_TIMEOUT_S = 4.0
READ_TIMEOUT_S = 60  # whole pages of vectors and upserts of a batch must fit

_local_lock = threading.Lock()
_local_clients: dict[Path, tuple[QdrantClient, int]] = {}
_local_turns: dict[Path, threading.RLock] = {}


def turns(path: Path) -> threading.RLock:
    """The lock the stores of the local folder ``path`` take for each call."""
    with _local_lock:
        return _local_turns.setdefault(path, threading.RLock())


def acquire_local(path: Path) -> QdrantClient:
    """The process's client for the local folder ``path``; ``release_local`` once done."""
    with _local_lock:
        client, users = _local_clients.get(path) or (QdrantClient(path=str(path)), 0)
        _local_clients[path] = (client, users + 1)
        return client


def release_local(path: Path) -> None:
    """Closes the folder's client when its last user lets go."""
    with _local_lock:
        client, users = _local_clients[path]
        if users > 1:
            _local_clients[path] = (client, users - 1)
        else:
            del _local_clients[path]
            client.close()


@atexit.register
def _close_local_clients() -> None:
    """Close folders left open by stores nobody closed, while the interpreter still works
    (qdrant-client's own finaliser fails at shutdown)."""
    with _local_lock:
        for client, _ in _local_clients.values():
            client.close()
        _local_clients.clear()


def server_client(url: str, api_key: str | None) -> QdrantClient:
    """A client of the server at ``url``: connecting fails in seconds, reads have
    ``READ_TIMEOUT_S``."""
    with warnings.catch_warnings():  # "api key over insecure connection"
        warnings.simplefilter("ignore", UserWarning)
        return QdrantClient(
            url=url,
            api_key=api_key,
            timeout=READ_TIMEOUT_S,
            check_compatibility=False,
            event_hooks={"request": [_short_connect]},
        )


def _short_connect(request: httpx.Request) -> None:
    """httpx request hook: a dead host fails in seconds while large reads keep their time."""
    timeout = dict(request.extensions.get("timeout") or {})
    timeout["connect"] = CONNECT_TIMEOUT_S
    request.extensions["timeout"] = timeout
