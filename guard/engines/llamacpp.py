"""``llamacpp:PATH.gguf``: a GGUF embedding model run in-process by llama-cpp-python.

Truncation is the point where llama.cpp and the model's own tokenizer part ways. With
``max_tokens=N`` this engine cuts the way Hugging Face tokenizers (and so
sentence-transformers) do: it keeps the first tokens and then the closing special
tokens ([SEP] for BERT), so texts longer than N reproduce the reference vectors. A plain
cut of the token list drops [SEP] and moves long texts to cosine 0.985-0.999. Without
``max_tokens`` the engine cuts at the model's context the way ``Llama.embed`` does
(plain cut) and says so in the fingerprint; ``truncate=false`` refuses longer texts.

Texts are tokenized here and packed several per ``llama_decode`` (up to ``n_batch``
tokens and ``n_seq_max`` sequences), which ``Llama.embed`` cannot do for token lists.

``n_gpu_layers=N`` offloads N layers to the GPU (-1: all of them). A llama-cpp-python
build that cannot offload, or one that finds no GPU, is a ConfigError: llama.cpp itself
would silently run every layer on the CPU.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import llama_cpp
import llama_cpp._internals as llama_internals
import numpy as np

from guard.closing import Closing
from guard.engines import EngineOptions
from guard.engines._common import (
    batches,
    check_params,
    finish,
    local_path,
    refuse_long,
    version,
    with_params,
)
from guard.errors import ConfigError, EngineError
from guard.hashing import file_sha256
from guard.logs import get_logger
from guard.records import Vectors
from guard.uri import ParsedURI, as_int

log = get_logger(__name__)

_POOLING_TYPES = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}
_POOLING_NAMES = {value: name for name, value in _POOLING_TYPES.items()}
_FILE_TYPES = {
    value: name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_")
    for name, value in vars(llama_cpp).items()
    if name.startswith("LLAMA_FTYPE_") and isinstance(value, int)
}
# Non-causal encoders need a whole sequence in one micro-batch, and attention memory grows
# with its square: bound the context so a long-context model cannot ask for gigabytes.
_MAX_CONTEXT = 8192


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _silence(_level: int, _text: bytes, _user_data: Any) -> None:
    """Drop llama.cpp's own log lines. llama-cpp-python's callback maps this llama.cpp's
    levels one off and prints warnings to stderr, such as the pooling override that the
    diagnosis asks for on purpose; failures reach the guard as exceptions instead. It
    must stay trivial: llama.cpp also logs while the interpreter shuts down."""


llama_cpp.llama_log_set(_silence, None)


class LlamaCppEngine(Closing):
    """A GGUF model in this process; loaded on first use. ``with_options`` copies share
    its context when they keep the same pooling and threads, and its weights always."""

    def __init__(self, parsed: ParsedURI) -> None:
        check_params(parsed, extra=("n_gpu_layers",))
        self._parsed = parsed
        self.uri = parsed.redacted
        self.options = EngineOptions.from_params(parsed.params)
        self.gpu_layers = _gpu_layers(parsed.params.get("n_gpu_layers"), self.uri)
        self.path = local_path(parsed)
        self._metadata: dict[str, Any] | None = None
        self._model: _LoadedModel | None = None

    # -- the Protocol -------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> Vectors:
        model = self._load()
        limit = self._token_limit()
        out = np.empty((len(texts), model.dims), dtype=np.float32)
        done = 0
        for chunk in batches(texts, self.options.batch_size):
            tokenized = [model.tokenize(self.options.prefix + text) for text in chunk]
            if not self.options.truncate:
                refuse_long([len(tokens) for tokens in tokenized], limit, engine=self.uri)
            tokens = [self._truncate(each, limit, model) for each in tokenized]
            out[done : done + len(chunk)] = model.embed_tokens(tokens, engine=self.uri)
            done += len(chunk)
        return finish(out, expected=len(texts), options=self.options, engine=self.uri)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model sees for each text (prefix and special tokens included),
        before truncation."""
        model = self._load()
        return [len(model.tokenize(self.options.prefix + text)) for text in texts]

    def fingerprint(self) -> dict[str, Any]:
        meta = self._read_metadata()
        arch = str(meta.get("general.architecture", ""))
        file_type = meta.get("general.file_type")
        settings = self.options.vector_settings()
        settings["pooling"] = self.options.pooling or _POOLING_NAMES.get(
            int(meta.get(f"{arch}.pooling_type", -1)), "model default"
        )
        settings["token_limit"] = self._token_limit()
        settings["truncation"] = (
            "keep closing special tokens (as Hugging Face tokenizers)"
            if self.options.max_tokens
            else "plain cut at the model context (as Llama.embed)"
        )
        settings["device"] = "gpu" if self.gpu_layers else "cpu"
        settings["n_gpu_layers"] = self.gpu_layers
        return {
            "engine": "llamacpp",
            "model": {
                "sha256": file_sha256(self.path),
                "file": self.path.name,
                "name": meta.get("general.name"),
                "architecture": arch,
                "file_type": _FILE_TYPES.get(int(file_type), str(file_type))
                if file_type is not None
                else None,
                "dims": meta.get(f"{arch}.embedding_length"),
                "context_length": meta.get(f"{arch}.context_length"),
            },
            "settings": settings,
            "versions": {"llama-cpp-python": version("llama_cpp_python")},
        }

    def with_options(self, **changes: Any) -> LlamaCppEngine:
        other = LlamaCppEngine(with_params(self._parsed, changes))
        other._metadata = self._metadata
        same_context = (other.options.pooling, other.options.n_threads) == (
            self.options.pooling,
            self.options.n_threads,
        )
        if self._model is not None:
            other._model = (
                self._model.share()
                if same_context
                else self._model.with_context(other.options, other.uri, other.path.name)
            )
        return other

    def close(self) -> None:
        if self._model is not None:
            self._model.release()
            self._model = None

    # -- internals ------------------------------------------------------------------------

    def _read_metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            if not self.path.is_file():
                raise EngineError(f"model file not found: {self.path}", engine=self.uri)
            try:
                self._metadata = read_gguf_metadata(self.path)
            except ValueError as exc:
                raise EngineError(
                    f"{self.path} is not a GGUF model: {exc}", engine=self.uri
                ) from exc
        return self._metadata

    def _context(self) -> int:
        meta = self._read_metadata()
        trained = meta.get(f"{meta.get('general.architecture')}.context_length")
        return min(int(trained), _MAX_CONTEXT) if trained else 512

    def _token_limit(self) -> int:
        context = self._context()
        return min(self.options.max_tokens, context) if self.options.max_tokens else context

    def _load(self) -> _LoadedModel:
        if self._model is None:
            self._read_metadata()
            architecture = str(self._read_metadata().get("general.architecture", "unknown"))
            self._model = _LoadedModel.open(
                self.path, self._context(), self.options, self.uri, architecture, self.gpu_layers
            )
        return self._model

    def _truncate(self, tokens: list[int], limit: int, model: _LoadedModel) -> list[int]:
        if len(tokens) <= limit:
            return tokens
        if not self.options.max_tokens:
            return tokens[:limit]
        keep = model.closing_tokens
        if limit <= keep:
            raise ConfigError(f"max_tokens={limit} leaves no room for text [{self.uri}]")
        return tokens[: limit - keep] + tokens[len(tokens) - keep :]


class _Weights:
    """One loaded GGUF (a ``Llama`` with its default context), reference-counted: every
    context made on it holds a share, so the file is read once per engine family."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.dims: int = llama.n_embd()
        self.closing_tokens = _closing_special_tokens(llama)
        self._users = 0
        self._lock = threading.Lock()

    def share(self) -> _Weights:
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self.llama.close()

    def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        return tokens


def _threads(options: EngineOptions) -> int:
    """``n_threads`` from the URI, else one thread per CPU this process may run on.

    llama-cpp-python's own default counts every CPU of the machine, also when a cpuset
    or ``taskset`` grants fewer; ggml's threads spin at each barrier, so threads beyond
    the granted CPUs wait on each other for whole time slices."""
    if options.n_threads:
        return options.n_threads
    granted = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(granted) if granted else os.cpu_count() or 1


class _LoadedModel:
    """One llama.cpp context on loaded weights, reference-counted so ``with_options``
    copies that keep the same pooling and threads share it. Another pooling or thread
    count is another context on the same weights (pooling is a context parameter)."""

    def __init__(self, weights: _Weights, ctx: Any, batch: Any, *, owned: bool) -> None:
        self.weights = weights.share()
        self.dims = weights.dims
        self.closing_tokens = weights.closing_tokens
        self._ctx = ctx
        self._batch = batch
        self._owned = owned  # False: the Llama's own context, closed with the weights
        self._n_batch = int(ctx.params.n_batch)
        self._n_seq_max = int(ctx.params.n_seq_max)
        self._users = 1
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path,
        context: int,
        options: EngineOptions,
        engine: str,
        architecture: str,
        gpu_layers: int,
    ) -> _LoadedModel:
        """Load the model; a failure names the GGUF's architecture, since llama.cpp's
        own message ("Failed to load model from file") does not say that it is one
        this llama.cpp does not know."""
        # In embedding mode llama-cpp-python sets n_seq_max to min(n_batch, 256) itself,
        # so a decode can hold as many texts as fit in n_batch tokens.
        threads = _threads(options)
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                embedding=True,
                n_ctx=context,
                n_batch=context,
                n_ubatch=context,
                pooling_type=_pooling_type(options),
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=gpu_layers,
                # Without it, packing texts into one decode is slower than one text per
                # decode on CPU (2 cores: 44 vs 92 texts/s; with it, packed runs 122).
                flash_attn=True,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(
                f"llama.cpp (llama-cpp-python {version('llama_cpp_python')}) cannot load {path} "
                f"(architecture {architecture!r}): {exc}",
                engine=engine,
            ) from exc
        log.info("llamacpp.loaded", file=path.name)
        weights = _Weights(llama)
        loaded = cls(weights, llama._ctx, llama._batch, owned=False)
        loaded._refuse_no_pooling(path.name, engine)
        return loaded

    def with_context(self, options: EngineOptions, engine: str, file: str) -> _LoadedModel:
        """A new context on these weights with the pooling and threads of ``options``."""
        params = llama_cpp.llama_context_params.from_buffer_copy(self._ctx.params)
        params.pooling_type = _pooling_type(options)
        params.n_threads = params.n_threads_batch = _threads(options)
        llama = self.weights.llama
        try:
            ctx = llama_internals.LlamaContext(model=llama._model, params=params, verbose=False)
        except ValueError as exc:
            raise EngineError(f"llama.cpp cannot make a context: {exc}", engine=engine) from exc
        batch = llama_internals.LlamaBatch(
            n_tokens=self._n_batch, embd=0, n_seq_max=int(params.n_ctx), verbose=False
        )
        loaded = _LoadedModel(self.weights, ctx, batch, owned=True)
        loaded._refuse_no_pooling(file, engine)
        return loaded

    def _refuse_no_pooling(self, file: str, engine: str) -> None:
        if int(self._ctx.pooling_type()) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            self.release()
            raise ConfigError(
                f"{file} has no pooling of its own; set pooling=mean, cls or last [{engine}]"
            )

    def share(self) -> _LoadedModel:
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            if self._owned:
                self._batch.close()
                self._ctx.close()
        self.weights.release()

    def tokenize(self, text: str) -> list[int]:
        return self.weights.tokenize(text)

    def embed_tokens(self, token_lists: Sequence[list[int]], *, engine: str) -> Vectors:
        """Pooled vectors for token lists, several sequences per decode (the loop of
        ``Llama.embed``, which only takes strings)."""
        out = np.empty((len(token_lists), self.dims), dtype=np.float32)
        with self._lock:
            pending: list[int] = []
            used = 0
            for index, tokens in enumerate(token_lists):
                if not tokens:
                    raise EngineError("a text has no tokens at all", engine=engine)
                if pending and (
                    used + len(tokens) > self._n_batch or len(pending) >= self._n_seq_max
                ):
                    self._decode(pending, out, engine)
                    pending, used = [], 0
                self._batch.add_sequence(tokens, len(pending), True)
                pending.append(index)
                used += len(tokens)
            if pending:
                self._decode(pending, out, engine)
        return out

    def _decode(self, indices: list[int], out: Vectors, engine: str) -> None:
        try:
            self._ctx.kv_cache_clear()
            self._ctx.decode(self._batch)
        except RuntimeError as exc:
            raise EngineError(f"llama.cpp failed to embed: {exc}", engine=engine) from exc
        finally:
            self._batch.reset()
        for seq_id, index in enumerate(indices):
            pointer = llama_cpp.llama_get_embeddings_seq(self._ctx.ctx, seq_id)
            if not pointer:
                raise EngineError("llama.cpp returned no pooled embedding", engine=engine)
            out[index] = np.ctypeslib.as_array(pointer, shape=(self.dims,))


def _gpu_layers(value: str | None, engine: str) -> int:
    """``n_gpu_layers`` (default 0: CPU only), refused when nothing can take the layers."""
    layers = as_int(value, name="n_gpu_layers", default=0, minimum=-1) or 0
    if layers and not llama_cpp.llama_supports_gpu_offload():
        raise ConfigError(
            f"n_gpu_layers={layers} asked, but this llama-cpp-python "
            f"{version('llama_cpp_python')} cannot offload to a GPU (a CPU-only build, or no "
            f'GPU visible); no CPU fallback: reinstall with CMAKE_ARGS="-DGGML_CUDA=on" '
            f"(README: GPUs) [{engine}]"
        )
    return layers


def _pooling_type(options: EngineOptions) -> int:
    return (
        _POOLING_TYPES[options.pooling]
        if options.pooling
        else llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
    )


def _closing_special_tokens(llama: Any) -> int:
    """How many special tokens the tokenizer appends after the text ([SEP] for BERT: 1)."""
    with_special: list[int] = llama.tokenize(b"a", add_bos=True, special=False)
    plain: list[int] = llama.tokenize(b"a", add_bos=False, special=False)
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return len(with_special) - start - len(plain)
    return 0


# -- GGUF header -----------------------------------------------------------------------------

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string key/values of a GGUF header (arrays such as the vocabulary
    are skipped), read without llama.cpp so that nothing is loaded or logged."""
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError("no GGUF magic number")
        try:
            _version, _tensors, count = struct.unpack("<IQQ", _exact(handle, 20))
            metadata: dict[str, Any] = {}
            for _ in range(count):
                key = _read_string(handle)
                (kind,) = struct.unpack("<I", _exact(handle, 4))
                if kind == _ARRAY:
                    _skip_array(handle)
                else:
                    metadata[key] = _read_value(handle, kind)
        except struct.error as exc:
            raise ValueError(f"malformed header: {exc}") from exc
    return metadata


def _exact(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("header ends early")
    return data


def _read_string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _exact(handle, 8))
    return _exact(handle, length).decode("utf-8", errors="replace")


def _read_value(handle: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _read_string(handle)
    if kind not in _SCALARS:
        raise ValueError(f"unknown value type {kind}")
    fmt = _SCALARS[kind]
    return struct.unpack(fmt, _exact(handle, struct.calcsize(fmt)))[0]


def _skip_array(handle: BinaryIO) -> None:
    kind, length = struct.unpack("<IQ", _exact(handle, 12))
    for _ in range(length):
        if kind == _ARRAY:
            _skip_array(handle)
        elif kind == _STRING:
            (size,) = struct.unpack("<Q", _exact(handle, 8))
            handle.seek(size, 1)
        elif kind in _SCALARS:
            handle.seek(struct.calcsize(_SCALARS[kind]) * length, 1)
            return
        else:
            raise ValueError(f"unknown array type {kind}")
