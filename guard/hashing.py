"""Every sha256 the guard keeps: files and model folders, texts, engine fingerprints.

One place, because the same hash is a key in several stores at once: the embedding
cache, the re-index ledger and the served fingerprint header all name an engine by
``fingerprint_sha256`` and a text by ``text_sha256``, and must agree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def text_sha256(text: str) -> str:
    """sha256 of the text exactly as given (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_sha256(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of the fingerprint as canonical JSON (sorted keys, no spaces), stable
    across runs and processes."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Stamp:
    path: str
    mtime_ns: int
    size: int


_FILE_HASHES: dict[_Stamp, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, mtime, size) in this process: model
    files are hundreds of MB and every fingerprint names them."""
    stat = path.stat()
    stamp = _Stamp(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if stamp not in _FILE_HASHES:
        with path.open("rb") as handle:
            _FILE_HASHES[stamp] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _FILE_HASHES[stamp]


_SKIPPED = {"README.md", ".gitattributes"}


def tree_sha256(folder: Path) -> str:
    """One sha256 over every file of a model folder (names and contents), so that any
    change to weights, tokenizer or module config changes the identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if path.name in _SKIPPED or any(part.startswith(".") for part in Path(relative).parts):
            continue
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
