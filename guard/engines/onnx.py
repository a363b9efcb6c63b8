"""``onnx:PATH``: an embedding model run by ONNX Runtime (the ``onnx`` extra).

PATH is one of three layouts:

- a folder as sentence-transformers saves a model with ``backend="onnx"``:
  ``onnx/model.onnx``, ``tokenizer.json``, ``modules.json``, ``1_Pooling/config.json``,
  ``sentence_bert_config.json``;
- a folder as optimum exports one: ``model.onnx``, ``tokenizer.json``, ``config.json``;
- a ``.onnx`` file with ``tokenizer.json`` beside it (or one folder up, for a file in
  a sentence-transformers folder's ``onnx/``).

``file=`` picks another model file in the folder (``file=onnx/model_qint8.onnx``). The
model's own configuration decides pooling (``1_Pooling``; mean when there is none),
normalisation (a ``Normalize`` module in ``modules.json``) and the token limit
(``max_seq_length``, else the tokenizer's ``model_max_length``, else the model's
``max_position_embeddings``), so a faithful export needs no options; ``pooling``,
``normalize`` and ``max_tokens`` override it. Texts are cut by the Hugging Face tokenizer
(the closing [SEP] kept, as sentence-transformers does), sorted by length and run in
batches padded to their longest text. Only onnxruntime and ``tokenizers`` are needed at
run time. ``provider=cuda`` runs on ONNX Runtime's CUDA provider, and is an error where
that provider is missing: never a silent CPU run.

A dynamically quantised graph (onnxruntime's ``quantize_dynamic``: INT8 weights, and
activations quantised at run time with one scale for the whole input tensor) would make
a text's vector depend on the other texts of its batch and on their padding (measured on
the demo INT8 export: cosine 0.98-0.99 between a text embedded alone and in a batch of
32). Such a graph runs one text per ``session.run``, unpadded, so every text gets the
vector the model gives it alone; in-process, that costs no round trip, and without
padding it is no slower.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guard.closing import Closing
from guard.engines import EngineOptions, Pooling
from guard.engines._common import (
    check_params,
    finish,
    local_path,
    refuse_long,
    version,
    with_params,
)
from guard.errors import ConfigError, EngineError
from guard.hashing import file_sha256
from guard.records import Vectors
from guard.uri import ParsedURI

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_TOKEN_OUTPUTS = ("token_embeddings", "last_hidden_state")
_SENTENCE_OUTPUTS = ("sentence_embedding", "sentence_embeddings", "embeddings", "text_embeds")
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
_DEFAULT_LIMIT = 512  # a model that states no limit at all: BERT's
# Op types of run-time activation quantisation (DynamicQuantizeLinear, ORT's fused
# DynamicQuantizeMatMul and DynamicQuantizeLSTM): node op types are plain strings in the
# protobuf, so the file's bytes tell without the onnx package.
_DYNAMIC_QUANTIZATION = b"DynamicQuantize"


class OnnxEngine(Closing):
    """An ONNX model in this process, loaded on first use. ``with_options`` copies share
    the session (and tokenizer) when they keep the file, provider and threads: pooling,
    normalisation and truncation happen outside the graph."""

    def __init__(self, parsed: ParsedURI) -> None:
        check_params(parsed, extra=("file", "provider"))
        self._parsed = parsed
        self.uri = parsed.redacted
        self.options = EngineOptions.from_params(parsed.params)
        self.provider = parsed.params.get("provider") or "cpu"
        if self.provider not in _PROVIDERS:
            raise ConfigError(
                f"option provider must be cpu or cuda, not {self.provider!r} [{self.uri}]"
            )
        self.path = local_path(parsed)
        self.file = parsed.params.get("file") or None
        self._model: _Loaded | None = None
        if self.provider == "cuda":
            _require_provider(_PROVIDERS["cuda"], self.uri)

    # -- the Protocol -------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> Vectors:
        model = self._load()
        if not texts:
            return np.zeros((0, model.dims), dtype=np.float32)
        inputs = [self.options.prefix + text for text in texts]
        limit = self._token_limit(model)
        if not self.options.truncate:
            refuse_long(self.count_tokens(texts), limit, engine=self.uri)
        encodings = model.tokenizer(limit).encode_batch(inputs)
        ids = [encoding.ids for encoding in encodings]
        rows = model.embed_ids(
            ids,
            batch_size=self.options.batch_size,
            pooling=self._pooling(model),
            normalize=self._normalize(model),
            engine=self.uri,
        )
        return finish(rows, expected=len(texts), options=self.options, engine=self.uri)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model's tokenizer makes (prefix and special tokens included), before
        truncation."""
        tokenizer = self._load().tokenizer(None)
        encodings = tokenizer.encode_batch([self.options.prefix + text for text in texts])
        return [len(encoding.ids) for encoding in encodings]

    def fingerprint(self) -> dict[str, Any]:
        model = self._load()
        settings = self.options.vector_settings()
        settings["pooling"] = self._pooling(model)
        settings["token_limit"] = self._token_limit(model)
        settings["model_normalizes"] = model.config.normalize
        settings["provider"] = self.provider
        settings["truncation"] = "keep closing special tokens (Hugging Face tokenizers)"
        layout = model.layout
        return {
            "engine": "onnx",
            "model": {
                "sha256": file_sha256(layout.model_file),
                "file": layout.model_file.relative_to(layout.root).as_posix(),
                "tokenizer_sha256": file_sha256(layout.tokenizer_file),
                "layout": layout.kind,
                "output": model.output_name,
                "output_kind": model.output_kind,
                "dims": model.dims,
                "dynamic_quantization": model.dynamic,
                "token_limit_from": model.config.limit_from,
            },
            "settings": settings,
            "versions": {
                "onnxruntime": version("onnxruntime"),
                "tokenizers": version("tokenizers"),
            },
        }

    def with_options(self, **changes: Any) -> OnnxEngine:
        other = OnnxEngine(with_params(self._parsed, changes))
        if self._model is not None and other.options.n_threads == self.options.n_threads:
            other._refuse_pooling(self._model)
            other._model = self._model
        return other

    def close(self) -> None:
        self._model = None  # copies made by with_options keep their own reference

    # -- internals ------------------------------------------------------------------------

    def _load(self) -> _Loaded:
        if self._model is None:
            layout = _resolve(self.path, self.file, self.uri)
            self._model = _Loaded.open(layout, self.options, self.provider, self.uri)
            self._refuse_pooling(self._model)
        return self._model

    def _refuse_pooling(self, model: _Loaded) -> None:
        if model.output_kind == "sentence_embedding":
            if self.options.pooling:
                raise ConfigError(
                    f"{model.layout.model_file.name} returns a pooled sentence embedding "
                    f"({model.output_name}); pooling={self.options.pooling} cannot change "
                    f"it [{self.uri}]"
                )
        elif not self.options.pooling and model.config.pooling is None:
            raise ConfigError(
                f"the model pools in a way the onnx engine does not ({model.config.pooling_from}); "
                f"set pooling=mean, cls or last [{self.uri}]"
            )

    def _token_limit(self, model: _Loaded) -> int:
        limit = self.options.max_tokens or model.config.limit
        positions = model.config.positions
        return min(limit, positions) if positions else limit

    def _pooling(self, model: _Loaded) -> Pooling | None:
        """The pooling applied (None: the graph pools itself)."""
        if model.output_kind == "sentence_embedding":
            return None
        return self.options.pooling or model.config.pooling

    def _normalize(self, model: _Loaded) -> bool:
        """Scale rows to unit length as the model's own Normalize module would, unless
        ``normalize`` says otherwise (``finish`` scales again after ``bridge``)."""
        if self.options.normalize is not None:
            return self.options.normalize
        return model.config.normalize


# -- the model folder -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    root: Path  # where the tokenizer and the configuration files are
    model_file: Path
    tokenizer_file: Path
    kind: str  # sentence-transformers, optimum or file


def _resolve(path: Path, file: str | None, engine: str) -> _Layout:
    """Where the model file, its tokenizer and its configuration are, or one line saying
    what is missing."""
    if not path.exists():
        raise EngineError(f"ONNX model not found: {path}", engine=engine)
    if path.is_file():
        if file:
            raise ConfigError(f"file= picks a file in a folder, but {path} is a file [{engine}]")
        model_file = path
        root = path.parent
        if not (root / "tokenizer.json").is_file() and (root.parent / "tokenizer.json").is_file():
            root = root.parent  # a file in a sentence-transformers folder's onnx/
    else:
        root = path
        model_file = root / file if file else _default_model_file(root, engine)
        if not model_file.is_file():
            raise EngineError(f"ONNX model file not found: {model_file}", engine=engine)
    tokenizer_file = root / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise EngineError(
            f"no tokenizer.json in {root} (the onnx engine needs the model's Hugging Face "
            "tokenizer file beside it)",
            engine=engine,
        )
    kind = (
        "sentence-transformers"
        if (root / "modules.json").is_file()
        else "optimum"
        if (root / "config.json").is_file()
        else "file"
    )
    return _Layout(root, model_file, tokenizer_file, kind)


def _default_model_file(root: Path, engine: str) -> Path:
    for candidate in (root / "onnx" / "model.onnx", root / "model.onnx"):
        if candidate.is_file():
            return candidate
    found = sorted(p.relative_to(root).as_posix() for p in root.glob("**/*.onnx"))
    listed = f" (found {', '.join(found)}: pick one with file=)" if found else ""
    raise EngineError(f"no onnx/model.onnx or model.onnx in {root}{listed}", engine=engine)


@dataclass(frozen=True)
class _Config:
    """What the model's own files say about pooling, normalisation and length."""

    pooling: Pooling | None  # None: a pooling the engine does not do (``pooling_from``)
    pooling_from: str
    normalize: bool
    limit: int
    limit_from: str
    positions: int | None  # max_position_embeddings: no option may go past it
    modules: tuple[str, ...]

    @classmethod
    def read(cls, root: Path, engine: str) -> _Config:
        modules = _module_list(root, engine)
        pooling, pooling_from = _pooling_from(root, modules, engine)
        config = _json(root / "config.json", engine)
        positions = config.get("max_position_embeddings")
        positions = int(positions) if isinstance(positions, int) and positions > 0 else None
        limit, limit_from = _native_limit(root, positions, engine)
        kinds = tuple(kind for kind, _ in modules)
        normalize = "Normalize" in kinds
        return cls(pooling, pooling_from, normalize, limit, limit_from, positions, kinds)


def _json(path: Path, engine: str, kind: type = dict) -> Any:
    """The JSON ``kind`` (object, list) in ``path``; an empty one where there is no file."""
    if not path.is_file():
        return kind()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {path}: {_first_line(exc)}", engine=engine) from exc
    if not isinstance(data, kind):
        raise EngineError(f"{path} is not a JSON {kind.__name__}", engine=engine)
    return data


def _module_list(root: Path, engine: str) -> tuple[tuple[str, str], ...]:
    """(class name, folder) of each module in modules.json: ``Transformer``, ``Pooling``,
    ``Normalize``, ..."""
    data = _json(root / "modules.json", engine, list)
    if not all(isinstance(entry, dict) for entry in data):
        raise EngineError(f"{root / 'modules.json'} is not a list of modules", engine=engine)
    return tuple(
        (str(entry.get("type", "")).rsplit(".", 1)[-1], str(entry.get("path", "")))
        for entry in data
    )


def _pooling_from(
    root: Path, modules: tuple[tuple[str, str], ...], engine: str
) -> tuple[Pooling | None, str]:
    """The pooling of the model's Pooling module (mean where it has none), or None and
    what it says when the engine cannot pool that way (max, several modes at once)."""
    folder = next((path for kind, path in modules if kind == "Pooling"), None)
    if folder is None:
        return "mean", "no Pooling module"
    config = _json(root / folder / "config.json", engine)
    if isinstance(config.get("pooling_mode"), str):
        modes = {str(config["pooling_mode"])}
    else:
        modes = {
            key.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
            for key, value in config.items()
            if key.startswith("pooling_mode_") and value is True
        }
    named: dict[str, Pooling] = {"mean": "mean", "cls": "cls", "lasttoken": "last", "last": "last"}
    said = f"{folder}/config.json: {', '.join(sorted(modes)) or 'nothing'}"
    if len(modes) != 1 or next(iter(modes)) not in named:
        return None, said
    return named[next(iter(modes))], said


def _native_limit(root: Path, positions: int | None, engine: str) -> tuple[int, str]:
    sbert = _json(root / "sentence_bert_config.json", engine).get("max_seq_length")
    if isinstance(sbert, int) and sbert > 0:
        return sbert, "sentence_bert_config.json max_seq_length"
    tokenizer = _json(root / "tokenizer_config.json", engine).get("model_max_length")
    if isinstance(tokenizer, int | float) and 0 < tokenizer < 1_000_000:
        return int(tokenizer), "tokenizer_config.json model_max_length"
    if positions:
        return positions, "config.json max_position_embeddings"
    return _DEFAULT_LIMIT, "default"


# -- the session ------------------------------------------------------------------------------


def _ort() -> Any:
    try:
        import onnxruntime
        import tokenizers  # noqa: F401  (the extra brings both)
    except ImportError as exc:
        raise ConfigError(
            "the onnx engine needs onnxruntime and tokenizers: "
            "pip install 'vector-migration-guard[onnx]'"
        ) from exc
    return onnxruntime


def _require_provider(provider: str, engine: str) -> None:
    available = _ort().get_available_providers()
    if provider not in available:
        raise ConfigError(
            f"provider={'cuda' if provider.startswith('CUDA') else provider} asked, but this "
            f"onnxruntime has only {', '.join(available)} (install onnxruntime-gpu for CUDA) "
            f"[{engine}]"
        )


def _threads(options: EngineOptions) -> int:
    """``n_threads``, else one per CPU this process may run on (a cpuset counts)."""
    if options.n_threads:
        return options.n_threads
    granted = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(granted) if granted else os.cpu_count() or 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Loaded:
    """An ONNX Runtime session with its tokenizer and the model's configuration."""

    def __init__(self, layout: _Layout, config: _Config, session: Any, tokenizer: Any) -> None:
        self.layout = layout
        self.config = config
        self.session = session
        self._tokenizer_json: str = tokenizer.to_str()
        self._tokenizers: dict[int | None, Any] = {}
        self._lock = threading.Lock()
        padding = tokenizer.padding  # the pad id does not matter under the mask, but
        self.pad_id = int(padding["pad_id"]) if padding else 0  # keep the model's own
        inputs = {node.name: node for node in session.get_inputs()}
        self.input_types = {name: node.type for name, node in inputs.items()}
        unknown = sorted(
            set(inputs) - {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
        )
        if "input_ids" not in inputs or unknown:
            raise ConfigError(
                f"{layout.model_file.name} takes inputs {', '.join(sorted(inputs))}; the onnx "
                "engine feeds input_ids, attention_mask, token_type_ids and position_ids"
            )
        self.output_name, self.output_kind, self.dims = _pick_output(session, layout.model_file)
        self.dynamic = _quantizes_at_run_time(layout.model_file)
        if self.output_kind == "token_embeddings":
            extra = sorted(set(config.modules) - set(_KNOWN_MODULES))
            if extra:
                raise ConfigError(
                    f"modules.json of {layout.root} has {', '.join(extra)} after the "
                    "transformer, which the ONNX graph does not contain and the onnx engine "
                    "cannot run"
                )

    @classmethod
    def open(cls, layout: _Layout, options: EngineOptions, provider: str, engine: str) -> _Loaded:
        ort = _ort()
        from tokenizers import Tokenizer

        config = _Config.read(layout.root, engine)
        try:
            tokenizer = Tokenizer.from_file(str(layout.tokenizer_file))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise EngineError(
                f"{layout.tokenizer_file} is not a Hugging Face tokenizer: {_first_line(exc)}",
                engine=engine,
            ) from exc
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = _threads(options)
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3  # errors arrive as exceptions
        wanted = _PROVIDERS[provider]
        _require_provider(wanted, engine)
        try:
            session = ort.InferenceSession(
                str(layout.model_file), sess_options=session_options, providers=[wanted]
            )
        except Exception as exc:  # onnxruntime's errors subclass Exception directly
            raise EngineError(
                f"{layout.model_file} is not an ONNX model ONNX Runtime can load: "
                f"{_first_line(exc)}",
                engine=engine,
            ) from exc
        if wanted not in session.get_providers():  # ORT falls back to CPU on its own
            raise EngineError(
                f"ONNX Runtime could not start {wanted} for {layout.model_file.name}",
                engine=engine,
            )
        try:
            return cls(layout, config, session, tokenizer)
        except ConfigError as exc:
            raise ConfigError(f"{exc} [{engine}]") from exc

    def tokenizer(self, limit: int | None) -> Any:
        """The tokenizer cutting at ``limit`` tokens the Hugging Face way (room kept for
        [CLS] and [SEP]), or not at all; never padding (batches pad themselves)."""
        with self._lock:
            if limit not in self._tokenizers:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_str(self._tokenizer_json)
                tokenizer.no_padding()
                if limit is None:
                    tokenizer.no_truncation()
                else:
                    tokenizer.enable_truncation(max_length=limit)
                self._tokenizers[limit] = tokenizer
            return self._tokenizers[limit]

    def embed_ids(
        self,
        token_lists: Sequence[list[int]],
        *,
        batch_size: int,
        pooling: Pooling | None,
        normalize: bool,
        engine: str,
    ) -> Vectors:
        """Vectors for token lists, longest first in batches padded to their longest
        list (one list per run for a dynamically quantised graph), returned in the order
        given."""
        if self.dynamic:
            batch_size = 1
        out = np.empty((len(token_lists), self.dims), dtype=np.float32)
        order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            lengths = [len(token_lists[i]) for i in chunk]
            if min(lengths) == 0:
                raise EngineError("a text has no tokens at all", engine=engine)
            ids = np.full((len(chunk), max(lengths)), self.pad_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, index in enumerate(chunk):
                ids[row, : lengths[row]] = token_lists[index]
                mask[row, : lengths[row]] = 1
            out[chunk] = self._run(ids, mask, pooling, engine)
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms > 0, norms, 1.0)
        return out

    def _run(
        self, ids: np.ndarray, mask: np.ndarray, pooling: Pooling | None, engine: str
    ) -> np.ndarray:
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
            "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape),
        }
        feeds = {
            name: np.ascontiguousarray(
                value, dtype=np.int32 if kind == "tensor(int32)" else np.int64
            )
            for name, value in feeds.items()
            if (kind := self.input_types.get(name)) is not None
        }
        try:
            (output,) = self.session.run([self.output_name], feeds)
        except Exception as exc:  # onnxruntime's errors subclass Exception directly
            raise EngineError(f"ONNX Runtime failed: {_first_line(exc)}", engine=engine) from exc
        output = np.asarray(output, dtype=np.float32)
        if pooling is None:
            return output
        return _pool(output, mask, pooling)


def _pool(tokens: np.ndarray, mask: np.ndarray, pooling: Pooling) -> np.ndarray:
    """Pool token vectors over the real tokens as sentence-transformers' Pooling does."""
    if pooling == "cls":
        return np.asarray(tokens[:, 0])
    if pooling == "last":
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        return np.asarray(tokens[np.arange(len(tokens)), last])
    weights = mask.astype(np.float32)[:, :, None]
    summed = (tokens * weights).sum(axis=1)
    return np.asarray(summed / np.maximum(weights.sum(axis=1), 1e-9))


def _pick_output(session: Any, model_file: Path) -> tuple[str, str, int]:
    """The output holding token embeddings (batch, tokens, dims) or a sentence embedding
    (batch, dims): by name first, else the first output of either shape."""
    outputs = session.get_outputs()

    def kind(node: Any) -> str | None:
        shape = node.shape if isinstance(node.shape, list) else None
        if (
            not shape
            or not str(node.type).startswith("tensor(float")
            or not isinstance(shape[-1], int)
        ):
            return None
        return {3: "token_embeddings", 2: "sentence_embedding"}.get(len(shape))

    for names, wanted in (
        (_TOKEN_OUTPUTS, "token_embeddings"),
        (_SENTENCE_OUTPUTS, "sentence_embedding"),
    ):
        for node in outputs:
            if node.name in names and kind(node) == wanted:
                return node.name, wanted, int(node.shape[-1])
    for node in outputs:
        found = kind(node)
        if found:
            return node.name, found, int(node.shape[-1])
    described = ", ".join(f"{node.name} {node.type} {node.shape}" for node in outputs)
    raise ConfigError(
        f"{model_file.name} returns neither token embeddings (batch, tokens, dims) nor a "
        f"sentence embedding (batch, dims): {described or 'no outputs'}"
    )


def _quantizes_at_run_time(model_file: Path) -> bool:
    """Whether the graph quantises activations at run time (see the module's notes)."""
    with model_file.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return False
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(_DYNAMIC_QUANTIZATION) >= 0
