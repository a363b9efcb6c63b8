"""Keys and checksums of the embedding cache: pure functions, no I/O.

A cached vector is found by the engine's whole fingerprint and the exact text given to
``embed``; the prefix, pooling, bridge and versions are part of the fingerprint, so a
vector made under other settings is never found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of the fingerprint as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cacheable(fingerprint: Mapping[str, Any]) -> bool:
    """Only a fingerprint that names the model's content (a file or folder sha256) may key
    vectors: a served model name can stand for other weights after a server upgrade, and
    a cached vector would then hide exactly the drift the guard looks for."""
    model = fingerprint.get("model")
    return isinstance(model, Mapping) and bool(model.get("sha256"))


def text_key(text: str) -> str:
    """sha256 of the text exactly as given to ``embed``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_checksum(fingerprint: str, text: str, dims: int, blob: bytes) -> str:
    """Ties a stored vector to its keys and size: a flipped byte or a row moved under
    another key no longer matches."""
    digest = hashlib.sha256(f"{fingerprint}\0{text}\0{dims}\0".encode())
    digest.update(blob)
    return digest.hexdigest()
