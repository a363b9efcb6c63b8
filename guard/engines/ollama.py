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

from typing import Any

from guard.engines._http import HttpEngine, vectors_field
from guard.errors import EngineError, TextTooLongError

# The parts of /api/show's model_info that change vectors or tell models apart.
_INFO_SUFFIXES = (
    "general.architecture",
    ".embedding_length",
    ".context_length",
    ".pooling_type",
    "general.file_type",
)


class OllamaEngine(HttpEngine):
    """POST /api/embed with {"model", "input": [texts], "truncate": true}, one per batch."""

    kind = "ollama"
    extra_params = ("model", "timeout", "retries")
    refused_options = ("pooling",)
    refused_why = "Ollama pools as the model file says"

    def _embed_batch(self, inputs: list[str]) -> list[Any]:
        try:
            answer = self._http().post_json("/api/embed", self._payload(inputs))
        except EngineError as exc:
            if not self.options.truncate and "context length" in str(exc):
                raise TextTooLongError(
                    "Ollama refused an input over the model's context (truncate=false)",
                    engine=self.uri,
                ) from exc
            raise
        return vectors_field(answer, "embeddings", expected=len(inputs), engine=self.uri)

    def _identify(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The digest /api/tags lists, the details /api/show reports, the server version."""
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
        model = {
            "name": entry.get("name") or entry.get("model"),
            "digest": entry.get("digest"),
            "details": entry.get("details") or {},
            "info": {
                key: value for key, value in (info or {}).items() if key.endswith(_INFO_SUFFIXES)
            },
        }
        return model, {"ollama": server.get("version") if isinstance(server, dict) else None}

    def _server_settings(self) -> dict[str, Any]:
        return {
            "server_normalizes": True,
            "truncation": (
                f"server, num_ctx={self.options.max_tokens}"
                if self.options.max_tokens
                else "server, the model's num_ctx"
            ),
        }

    def _payload(self, inputs: list[str]) -> dict[str, Any]:
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
