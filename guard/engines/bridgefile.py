"""Bridge files: a fitted linear map in a small, portable .npz (numpy, no pickles).

Arrays in the archive:
    format          "guard-bridge/1"
    kind            "orthogonal" or "affine"
    matrix          float32 (input_dims, output_dims): output = input @ matrix + bias
    bias            float32 (output_dims,)
    input_dims      int64 scalar, the engine output size the bridge takes
    output_dims     int64 scalar, the stored vectors' size it makes
    fitted_between  JSON: the candidate's fingerprint and the store it was fitted to
    validation      JSON: fitted on N, validated on M, held-out cosines, overlap@k, bound
Any program that reads .npz files can apply it; ``guard`` reads it for ``bridge=PATH``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guard.core.bridge import LinearMap
from guard.errors import ConfigError
from guard.hashing import file_sha256
from guard.paths import guard_home
from guard.records import Vectors

FORMAT = "guard-bridge/1"


@dataclass(frozen=True, eq=False)
class BridgeFile:
    """A loaded bridge: what ``bridge=PATH`` applies to an engine's output."""

    path: Path
    sha256: str
    kind: str
    matrix: np.ndarray[Any, np.dtype[np.float32]]
    bias: np.ndarray[Any, np.dtype[np.float32]]

    @property
    def input_dims(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def output_dims(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, vectors: Vectors, *, engine: str) -> Vectors:
        """The engine's rows through the map; a size that does not fit is the URI's fault."""
        if vectors.shape[1] != self.input_dims:
            raise ConfigError(
                f"bridge {self.path} takes {self.input_dims}-dimensional vectors, but the "
                f"engine makes {vectors.shape[1]}-dimensional ones [{engine}]"
            )
        return np.ascontiguousarray(vectors @ self.matrix + self.bias, dtype=np.float32)


_LOADED: dict[tuple[str, str], BridgeFile] = {}


def load(path: str | Path) -> BridgeFile:
    """The bridge at ``path``, read once per file content; anything else is a ConfigError."""
    where = Path(path).expanduser()
    try:
        digest = file_sha256(where)
    except OSError as exc:
        raise ConfigError(f"bridge file {where} cannot be read: {exc.strerror}") from exc
    key = (str(where.resolve()), digest)
    if key not in _LOADED:
        _LOADED[key] = _read(where, digest)
    return _LOADED[key]


def _read(path: Path, digest: str) -> BridgeFile:
    not_a_bridge = f"{path} is not a guard bridge file ({FORMAT} .npz)"
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["format"]) != FORMAT:
                raise ConfigError(not_a_bridge)
            matrix = np.asarray(archive["matrix"], dtype=np.float32)
            bias = np.asarray(archive["bias"], dtype=np.float32)
            kind = str(archive["kind"])
            sizes = (int(archive["input_dims"]), int(archive["output_dims"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(not_a_bridge) from exc
    if matrix.ndim != 2 or bias.shape != (matrix.shape[1],) or sizes != matrix.shape:
        raise ConfigError(f"{not_a_bridge}: its matrix, bias and sizes disagree")
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(bias))):
        raise ConfigError(f"{not_a_bridge}: it holds NaN or infinite values")
    return BridgeFile(path, digest, kind, matrix, bias)


def save(
    bridge: LinearMap,
    path: Path | None,
    *,
    fitted_between: dict[str, Any],
    validation: dict[str, Any],
) -> Path:
    """Write the bridge; without a path, under GUARD_HOME/bridges named by its content."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.array(FORMAT),
        kind=np.array(bridge.kind),
        matrix=bridge.matrix.astype(np.float32),
        bias=bridge.bias.astype(np.float32),
        input_dims=np.array(bridge.input_dims, dtype=np.int64),
        output_dims=np.array(bridge.output_dims, dtype=np.int64),
        fitted_between=np.array(json.dumps(fitted_between, sort_keys=True, default=str)),
        validation=np.array(json.dumps(validation, sort_keys=True, default=str)),
    )
    content = buffer.getvalue()
    if path is None:
        name = f"bridge-{hashlib.sha256(content).hexdigest()[:16]}.npz"
        path = guard_home() / "bridges" / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    except OSError as exc:
        raise ConfigError(f"cannot write the bridge file {path}: {exc.strerror}") from exc
    return path.resolve()
