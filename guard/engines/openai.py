"""``openai+http(s)://HOST:PORT/v1?model=NAME``: any OpenAI-compatible /v1/embeddings.

llama-server, vLLM, TEI, Ollama's /v1 and OpenAI itself all speak it. The server
tokenizes, truncates and pools with its own settings, and this API has no portable way
to change them, so ``max_tokens`` and ``pooling`` are refused here rather than
pretending: set the limit on the server (llama-server ``--ubatch-size``, vLLM
``--max-model-len``, TEI ``--auto-truncate``) and compare again. For the same reason
``count_tokens`` counts characters, not tokens.
"""

from __future__ import annotations

import os
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
from guard.errors import ConfigError, EngineError
from guard.records import Vectors
from guard.uri import ParsedURI

_PARAMS = ("model", "api_key_env", "timeout", "retries")
_PROBE = "The guard asks which model answers."


class OpenAIEngine:
    """POST {base}/embeddings with {"model", "input": [texts]}, one request per batch."""

    def __init__(self, parsed: ParsedURI) -> None:
        check_params(parsed, _PARAMS)
        self._parsed = parsed
        self.uri = parsed.redacted
        self.options = EngineOptions.from_params(parsed.params)
        reject_options(
            parsed,
            self.options,
            "max_tokens",
            "pooling",
            "n_threads",
            "truncate",
            why="the server tokenizes, truncates, pools and schedules with its own settings",
        )
        self.model = parsed.params.get("model") or ""
        if not self.model:
            raise ConfigError(f"openai engines need ?model=NAME [{self.uri}]")
        self.api_key_env = parsed.params.get("api_key_env") or "OPENAI_API_KEY"
        self._url = base_url(parsed)
        self._timeout = timeout_param(parsed)
        self._retries = retries_param(parsed)
        self._client: HttpClient | None = None
        self._served_model: str | None = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        rows: list[Any] = []
        for chunk in batches(texts, self.options.batch_size):
            rows.extend(self._embed_batch([self.options.prefix + text for text in chunk]))
        return finish(rows, expected=len(texts), options=self.options, engine=self.uri)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Characters, prefix included: the server's tokenizer is out of reach."""
        return [len(self.options.prefix + text) for text in texts]

    def fingerprint(self) -> dict[str, Any]:
        if self._served_model is None:
            self._embed_batch([_PROBE])
        settings = self.options.vector_settings()
        settings["truncation"] = "server"
        return {
            "engine": "openai",
            "model": {"requested": self.model, "served": self._served_model},
            "settings": settings,
            "versions": {"httpx": version("httpx")},
        }

    def with_options(self, **changes: Any) -> OpenAIEngine:
        other = OpenAIEngine(with_params(self._parsed, changes))
        other._served_model = self._served_model
        return other

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self) -> HttpClient:
        if self._client is None:
            key = os.environ.get(self.api_key_env)
            self._client = HttpClient(
                self._url,
                engine=self.uri,
                timeout=self._timeout,
                retries=self._retries,
                headers={"Authorization": f"Bearer {key}"} if key else None,
                auth_hint=f"check the key in ${self.api_key_env}",
            )
        return self._client

    def _embed_batch(self, inputs: list[str]) -> list[Any]:
        answer = self._http().post_json("/embeddings", {"model": self.model, "input": inputs})
        items = vectors_field(answer, "data", expected=len(inputs), engine=self.uri)
        try:
            ordered = sorted(items, key=lambda item: int(item.get("index", 0)))
            rows = [item["embedding"] for item in ordered]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"malformed answer: {exc!r} in 'data'", engine=self.uri) from exc
        served = answer.get("model")
        self._served_model = str(served) if served else self.model
        return rows
