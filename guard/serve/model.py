"""What ``guard serve`` serves and within which limits: plain values, no web framework."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote

from guard.engines import EmbeddingEngine
from guard.errors import ConfigError
from guard.hashing import fingerprint_sha256
from guard.uri import parse


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one client from starving the others or the memory."""

    max_batch: int = 128  # texts per engine call, over all waiting requests
    max_inputs: int = 2048  # texts per request (OpenAI's own limit)
    max_body_bytes: int = 8 * 1024 * 1024
    max_queue: int = 256  # requests waiting for the engine; more get 503

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_inputs", "max_body_bytes", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")


@dataclass(frozen=True)
class ServedModel:
    """The engine as both APIs name and describe it.

    ``aliases`` are the other names a request may give it (the model file's name with
    its suffix); Ollama's ``:latest`` tag is accepted on each name."""

    id: str
    dims: int
    fingerprint: dict[str, Any]
    fingerprint_sha256: str
    created: int = field(default_factory=lambda: int(time.time()))
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request may give the model, the served id first."""
        return (self.id, *(alias for alias in self.aliases if alias != self.id))

    def answers_to(self, name: str) -> bool:
        """Whether a request naming ``name`` asks for this model."""
        return name in self.names or name.removesuffix(":latest") in self.names

    @property
    def engine(self) -> str:
        return str(self.fingerprint.get("engine", ""))

    @property
    def architecture(self) -> str:
        model = self.fingerprint.get("model")
        found = model.get("architecture") if isinstance(model, dict) else None
        return str(found or self.engine)

    @property
    def file_type(self) -> str:
        model = self.fingerprint.get("model")
        found = model.get("file_type") if isinstance(model, dict) else None
        return str(found or "")


def describe(engine: EmbeddingEngine, engine_uri: str, dims: int) -> ServedModel:
    """Name the engine by its URI: the ``model=`` it asks a server for, else the file or
    folder it loads without its suffix (``llamacpp:/m/minilm-F16.gguf`` -> ``minilm-F16``,
    with ``minilm-F16.gguf`` as an alias)."""
    parsed = parse(engine_uri)
    served = parsed.params.get("model")
    loaded = PurePosixPath(unquote(parsed.path or parsed.netloc))
    name = served or loaded.stem
    fingerprint = engine.fingerprint()
    return ServedModel(
        id=name or parsed.scheme,
        dims=dims,
        fingerprint=fingerprint,
        fingerprint_sha256=fingerprint_sha256(fingerprint),
        aliases=() if served or not loaded.name else (loaded.name,),
    )
