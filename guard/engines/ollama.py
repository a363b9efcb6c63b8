"""``ollama+http://HOST:11434?model=NAME``: Ollama's native /api/embed.

Ollama scales every /api/embed vector to unit length, so ``normalize`` cannot undo
that; the fingerprint says so. ``max_tokens`` becomes the request's ``num_ctx`` with
``truncate: true``: the server then truncates with the model's own tokenizer (how it
treats the closing [SEP] is Ollama's choice, which the comparison will show);
``truncate=false`` sends ``truncate: false``, and the server's refusal of a long input
becomes ``TextTooLongError``. Pooling
is fixed by the model file, so ``pooling`` is refused. The model identity is the digest
Ollama lists in /api/tags, with the details /api/show reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guard.engines import EngineOptions
from guard.engines._common import (
    batches,
    check_params,
    finish,
    reject_options,
    version,
    with_params,
)
from guard.engines._http import (
    HttpClient,
    base_url,
    retries_param,
    timeout_param,
    vectors_field,
)
from guard.errors import ConfigError, EngineError, TextTooLongError
from guard.records import Vectors
from guard.uri import ParsedURI

_PARAMS = ("model", "timeout", "retries")
# The parts of /api/show's model_info that change vectors or tell models apart.
_INFO_SUFFIXES = (
    "general.architecture",
    ".embedding_length",
    ".context_length",
    ".pooling_type",
    "general.file_type",
)


class OllamaEngine:
    """POST /api/embed with {"model", "input": [texts], "truncate": true}, one per batch."""

    def __init__(self, parsed: ParsedURI) -> None:
        check_params(parsed, _PARAMS)
        self._parsed = parsed
        self.uri = parsed.redacted
        self.options = EngineOptions.from_params(parsed.params)
        reject_options(parsed, self.options, "pooling", why="Ollama pools as the model file says")
        self.model = parsed.params.get("model") or ""
        if not self.model:
            raise ConfigError(f"ollama engines need ?model=NAME [{self.uri}]")
        self._url = base_url(parsed)
        self._timeout = timeout_param(parsed)
        self._retries = retries_param(parsed)
        self._client: HttpClient | None = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        rows: list[Any] = []
        for chunk in batches(texts, self.options.batch_size):
            inputs = [self.options.prefix + text for text in chunk]
            try:
                answer = self._http().post_json("/api/embed", self._request(inputs))
            except EngineError as exc:
                if not self.options.truncate and "context length" in str(exc):
                    raise TextTooLongError(
                        "Ollama refused an input over the model's context (truncate=false)",
                        engine=self.uri,
                    ) from exc
                raise
            rows.extend(vectors_field(answer, "embeddings", expected=len(inputs), engine=self.uri))
        return finish(rows, expected=len(texts), options=self.options, engine=self.uri)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Characters, prefix included: Ollama has no tokenize endpoint."""
        return [len(self.options.prefix + text) for text in texts]

    def fingerprint(self) -> dict[str, Any]:
        http = self._http()
        listed = http.get_json("/api/tags")
        entry = _find_model(listed, self.model)
        if entry is None:
            raise EngineError(
                f"model {self.model!r} is not on the Ollama server (ollama pull {self.model})",
                engine=self.uri,
            )
        shown = http.post_json("/api/show", {"model": self.model})
        info = shown.get("model_info") if isinstance(shown, dict) else None
        server = http.get_json("/api/version")
        settings = self.options.vector_settings()
        settings["server_normalizes"] = True
        settings["truncation"] = (
            f"server, num_ctx={self.options.max_tokens}"
            if self.options.max_tokens
            else "server, the model's num_ctx"
        )
        return {
            "engine": "ollama",
            "model": {
                "name": entry.get("name") or entry.get("model"),
                "digest": entry.get("digest"),
                "details": entry.get("details") or {},
                "info": {
                    key: value
                    for key, value in (info or {}).items()
                    if key.endswith(_INFO_SUFFIXES)
                },
            },
            "settings": settings,
            "versions": {
                "ollama": server.get("version") if isinstance(server, dict) else None,
                "httpx": version("httpx"),
            },
        }

    def with_options(self, **changes: Any) -> OllamaEngine:
        return OllamaEngine(with_params(self._parsed, changes))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self) -> HttpClient:
        if self._client is None:
            self._client = HttpClient(
                self._url, engine=self.uri, timeout=self._timeout, retries=self._retries
            )
        return self._client

    def _request(self, inputs: list[str]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.options.max_tokens:
            options["num_ctx"] = self.options.max_tokens
        if self.options.n_threads:
            options["num_thread"] = self.options.n_threads
        request: dict[str, Any] = {
            "model": self.model,
            "input": inputs,
            "truncate": self.options.truncate,  # false: the server refuses long inputs
        }
        if options:
            request["options"] = options
        return request


def _find_model(listed: Any, name: str) -> dict[str, Any] | None:
    """The /api/tags entry for ``name`` (``name`` alone means ``name:latest``)."""
    models = listed.get("models") if isinstance(listed, dict) else None
    wanted = {name, name if ":" in name else f"{name}:latest"}
    for entry in models if isinstance(models, list) else []:
        if isinstance(entry, dict) and {entry.get("name"), entry.get("model")} & wanted:
            return entry
    return None
