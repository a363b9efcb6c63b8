"""The embedding-engine extension point: one Protocol, one registry keyed by URI scheme.

Each engine lives in its own module here and is imported only when a URI asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

from guard.errors import ConfigError
from guard.records import Vectors
from guard.registry import instantiate
from guard.uri import as_bool, as_int, redact

Pooling = Literal["mean", "cls", "last"]


@dataclass(frozen=True)
class EngineOptions:
    """Settings every engine understands; None means 'the engine's own default'."""

    max_tokens: int | None = None
    prefix: str = ""
    normalize: bool | None = None
    pooling: Pooling | None = None
    batch_size: int = 32
    n_threads: int | None = None
    truncate: bool = True  # False: refuse texts over the token limit instead of cutting
    bridge: str | None = None  # a bridge file (guard.engines.bridgefile) applied to the output

    @classmethod
    def from_params(cls, params: dict[str, str]) -> EngineOptions:
        pooling = params.get("pooling") or None
        if pooling not in (None, "mean", "cls", "last"):
            raise ConfigError(f"option pooling must be mean, cls or last, not {pooling!r}")
        return cls(
            max_tokens=as_int(params.get("max_tokens"), name="max_tokens"),
            prefix=params.get("prefix", ""),
            normalize=as_bool(params.get("normalize"), name="normalize"),
            pooling=pooling,  # type: ignore[arg-type]
            batch_size=as_int(params.get("batch_size"), name="batch_size", default=32) or 32,
            n_threads=as_int(params.get("n_threads"), name="n_threads"),
            truncate=as_bool(params.get("truncate"), name="truncate") is not False,
            bridge=params.get("bridge") or None,
        )

    def vector_settings(self) -> dict[str, Any]:
        """The settings that change vectors. Batch size and threads must not; truncate
        does not: it only decides whether an over-long text gets a vector at all."""
        settings = asdict(self)
        del settings["batch_size"], settings["n_threads"], settings["truncate"]
        if self.bridge:  # the file's content, not its name, decides the vectors
            from guard.engines.bridgefile import load

            settings["bridge"] = {"path": self.bridge, "sha256": load(self.bridge).sha256}
        return settings


OPTION_NAMES = tuple(option.name for option in fields(EngineOptions))


@runtime_checkable
class EmbeddingEngine(Protocol):
    """Turns texts into vectors.

    Contract every engine keeps (tests/test_engine_contract.py checks it):
    - ``embed`` returns a C-contiguous float32 array of shape (len(texts), dims), row i
      for texts[i], sending texts to the backend in batches, never one call per text;
    - ``options.prefix`` is put before every text, ``options.normalize`` True scales
      rows to unit length, ``options.max_tokens`` truncates as the model's tokenizer
      does, and ``options.truncate`` False raises ``TextTooLongError`` for a text over
      the token limit instead of cutting it (or the engine refuses the option);
    - errors come out as ``EngineError`` with the redacted URI.
    """

    uri: str  # redacted
    options: EngineOptions

    def embed(self, texts: Sequence[str]) -> Vectors: ...

    def fingerprint(self) -> dict[str, Any]:
        """Model identity (file sha256 or served model id), every setting that changes
        vectors, and engine/library versions."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text where the engine can tokenize, else characters."""
        ...

    def with_options(self, **changes: Any) -> EmbeddingEngine:
        """The same model with other settings (used by diagnosis to try alternatives)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Closes the engine (``guard.closing.Closing``)."""
        ...


ENGINES: dict[str, str] = {
    "llamacpp": "guard.engines.llamacpp:LlamaCppEngine",
    "openai+http": "guard.engines.openai:OpenAIEngine",
    "openai+https": "guard.engines.openai:OpenAIEngine",
    "ollama+http": "guard.engines.ollama:OllamaEngine",
    "ollama+https": "guard.engines.ollama:OllamaEngine",
    "st": "guard.engines.st:SentenceTransformerEngine",
    "model2vec": "guard.engines.model2vec:Model2VecEngine",
    "onnx": "guard.engines.onnx:OnnxEngine",
}


def open_engine(uri: str) -> EmbeddingEngine:
    try:
        engine: EmbeddingEngine = instantiate(ENGINES, uri, "engine")
    except ConfigError as exc:
        suggestion = _did_you_mean(uri)
        if suggestion is None:
            raise
        raise ConfigError(f"{exc}; did you mean {redact(suggestion)}?") from exc
    return engine


def _did_you_mean(uri: str) -> str | None:
    """The engine URI meant by a bare model path (or one behind an unknown scheme): a
    ``.gguf`` file is llama.cpp's, a ``.onnx`` file or a folder holding one ONNX
    Runtime's, another folder sentence-transformers' or model2vec's."""
    scheme, colon, rest = uri.partition(":")
    if colon and scheme.lower() in ENGINES:
        return None
    path = rest.removeprefix("//") if colon else uri  # file:///m.gguf -> /m.gguf
    file = Path(path.split("?", 1)[0]).expanduser()
    onnx = "onnx" in ENGINES
    if file.suffix.lower() == ".gguf":
        return f"llamacpp:{path}"
    if file.suffix.lower() == ".onnx" and onnx:
        return f"onnx:{path}"
    if not file.is_dir():
        return None
    if onnx and any((file / name).is_file() for name in ("model.onnx", "onnx/model.onnx")):
        return f"onnx:{path}"
    if (file / "modules.json").is_file():
        return f"st:{path}"
    return f"st:{path} or model2vec:{path}"
