"""``model2vec:PATH``: static embeddings (the ``model2vec`` extra).

A model2vec model averages one stored vector per token, so it is fast and has no
context limit of its own; ``max_tokens`` becomes ``encode(max_length=...)``, which cuts
the token list (model2vec adds no special tokens). Pooling is always the mean, so
``pooling`` other than ``mean`` is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from guard.closing import Closing
from guard.engines import EngineOptions
from guard.engines._common import (
    check_params,
    finish,
    local_path,
    refuse_long,
    reject_options,
    version,
    with_params,
)
from guard.errors import ConfigError, EngineError
from guard.hashing import tree_sha256
from guard.records import Vectors
from guard.uri import ParsedURI


class Model2VecEngine(Closing):
    """A model2vec ``StaticModel`` loaded from a local folder on first use."""

    def __init__(self, parsed: ParsedURI) -> None:
        check_params(parsed)
        self._parsed = parsed
        self.uri = parsed.redacted
        self.options = EngineOptions.from_params(parsed.params)
        if self.options.pooling not in (None, "mean"):
            reject_options(parsed, self.options, "pooling", why="static models average tokens")
        self.path = local_path(parsed)
        self._model: Any = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        model = self._load()
        if not texts:
            return np.zeros((0, model.dim), dtype=np.float32)
        if not self.options.truncate:
            limit = self.options.max_tokens or model.max_length
            refuse_long(self.count_tokens(texts), limit, engine=self.uri)
        kwargs: dict[str, Any] = {"batch_size": self.options.batch_size}
        if self.options.max_tokens:
            kwargs["max_length"] = self.options.max_tokens
        rows = model.encode(
            [self.options.prefix + text for text in texts],
            use_multiprocessing=False,
            **kwargs,
        )
        return finish(rows, expected=len(texts), options=self.options, engine=self.uri)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the static model averages (no special tokens), before truncation."""
        model = self._load()
        return [len(ids) for ids in model.tokenize([self.options.prefix + t for t in texts])]

    def fingerprint(self) -> dict[str, Any]:
        model = self._load()
        settings = self.options.vector_settings()
        settings["pooling"] = "mean"
        settings["token_limit"] = self.options.max_tokens or model.max_length
        settings["model_normalizes"] = bool(model.normalize)
        return {
            "engine": "model2vec",
            "model": {
                "sha256": tree_sha256(self.path),
                "folder": self.path.name,
                "base_model": model.base_model_name,
                "dims": int(model.dim),
            },
            "settings": settings,
            "versions": {"model2vec": version("model2vec")},
        }

    def with_options(self, **changes: Any) -> Model2VecEngine:
        other = Model2VecEngine(with_params(self._parsed, changes))
        other._model = self._model
        return other

    def close(self) -> None:
        self._model = None

    def _load(self) -> Any:
        if self._model is None:
            try:
                from model2vec import StaticModel
            except ImportError as exc:
                raise ConfigError(
                    "the model2vec engine needs model2vec: "
                    "pip install 'vector-migration-guard[model2vec]'"
                ) from exc
            if not self.path.is_dir():
                raise EngineError(f"model folder not found: {self.path}", engine=self.uri)
            try:
                self._model = StaticModel.from_pretrained(self.path, force_download=False)
            except (OSError, ValueError, KeyError) as exc:
                raise EngineError(
                    f"model2vec cannot load {self.path}: {exc}", engine=self.uri
                ) from exc
        return self._model
