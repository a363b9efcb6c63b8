"""``openai+http(s)://HOST:PORT/v1?model=NAME``: any OpenAI-compatible /v1/embeddings.

llama-server, vLLM, TEI, Ollama's /v1 and OpenAI itself all speak it. The server
tokenizes, truncates and pools with its own settings, and this API has no portable way
to change them, so ``max_tokens`` and ``pooling`` are refused here rather than
pretending: set the limit on the server (llama-server ``--ubatch-size``, vLLM
``--max-model-len``, TEI ``--auto-truncate``) and compare again. For the same reason
``count_tokens`` counts characters, not tokens.
"""

from __future__ import annotations

from typing import Any, Self

from guard.engines._http import HttpEngine, vectors_field
from guard.errors import EngineError
from guard.uri import ParsedURI

_PROBE = "The guard asks which model answers."


class OpenAIEngine(HttpEngine):
    """POST {base}/embeddings with {"model", "input": [texts]}, one request per batch."""

    kind = "openai"
    extra_params = ("model", "api_key_env", "timeout", "retries")
    refused_options = ("max_tokens", "pooling", "n_threads", "truncate")
    refused_why = "the server tokenizes, truncates, pools and schedules with its own settings"
    default_key_env = "OPENAI_API_KEY"

    def __init__(self, parsed: ParsedURI) -> None:
        super().__init__(parsed)
        self._served_model: str | None = None

    def with_options(self, **changes: Any) -> Self:
        other = super().with_options(**changes)
        other._served_model = self._served_model
        return other

    def _identify(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self._served_model is None:
            self._embed_batch([_PROBE])
        return {"requested": self.model, "served": self._served_model}, {}

    def _server_settings(self) -> dict[str, Any]:
        return {"truncation": "server"}

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
