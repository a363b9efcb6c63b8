"""A stand-in for an Ollama server, for the ollama engine's tests.

No Ollama server can be installed on the machines these tests run on (no network but
PyPI), so this speaks the part of Ollama's documented HTTP API that the engine uses,
backed by a real GGUF model run by llama.cpp (what Ollama itself runs):

- ``POST /api/embed`` ``{"model", "input": str | [str], "truncate": bool,
  "options": {"num_ctx": N}}`` -> ``{"model", "embeddings": [[...]], ...}``; vectors are
  scaled to unit length as Ollama does; ``num_ctx`` reloads the model with that context,
  as Ollama does, and ``truncate: false`` rejects inputs longer than it;
- ``GET /api/tags`` (digest, size, details), ``POST /api/show`` (details, model_info),
  ``GET /api/version``.

It is a test helper, not a reimplementation: the truncation is llama-cpp-python's plain
cut, and the digest is the GGUF file's sha256 rather than Ollama's manifest digest.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import llama_cpp

FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 7: "Q8_0", 15: "Q4_K_M"}


class OllamaStandIn:
    """Serve one GGUF file as ``name`` on 127.0.0.1:``port`` (0 picks a free port)."""

    def __init__(self, model_path: Path, name: str = "all-minilm:latest", port: int = 0) -> None:
        self.model_path = model_path
        self.name = name
        self.digest = "sha256:" + hashlib.sha256(model_path.read_bytes()).hexdigest()
        self.requests: list[dict[str, Any]] = []
        self._models: dict[int, llama_cpp.Llama] = {}
        self._lock = threading.Lock()
        self._default = self._llama(0)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OllamaStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for llama in self._models.values():
            llama.close()

    def knows(self, model: str) -> bool:
        return model in {self.name, self.name.removesuffix(":latest")}

    def _llama(self, num_ctx: int) -> llama_cpp.Llama:
        if num_ctx not in self._models:
            self._models[num_ctx] = llama_cpp.Llama(
                str(self.model_path),
                embedding=True,
                n_ctx=num_ctx,
                n_batch=num_ctx or 512,
                n_ubatch=num_ctx or 512,
                verbose=False,
            )
        return self._models[num_ctx]

    # -- the API --------------------------------------------------------------------------

    def embed(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        num_ctx = int((body.get("options") or {}).get("num_ctx") or 0)
        with self._lock:
            llama = self._llama(num_ctx)
            limit = llama.n_ctx()
            if body.get("truncate") is False:
                for text in texts:
                    if len(llama.tokenize(text.encode())) > limit:
                        return 400, {"error": "input length exceeds the context length"}
            vectors = llama.embed(texts, normalize=True, truncate=True)
        return 200, {"model": self.name, "embeddings": vectors, "prompt_eval_count": 0}

    def tags(self) -> dict[str, Any]:
        entry = {
            "name": self.name,
            "model": self.name,
            "size": self.model_path.stat().st_size,
            "digest": self.digest,
            "details": self._details(),
        }
        return {"models": [entry]}

    def show(self) -> dict[str, Any]:
        info = {key: _number(value) for key, value in self._default.metadata.items()}
        return {"details": self._details(), "model_info": info, "capabilities": ["embedding"]}

    def _details(self) -> dict[str, Any]:
        meta = self._default.metadata
        return {
            "format": "gguf",
            "family": meta.get("general.architecture"),
            "parameter_size": meta.get("general.size_label"),
            "quantization_level": FILE_TYPES.get(int(meta.get("general.file_type", -1)), "?"),
        }


def _number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


def _handler(server: OllamaStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            if self.path == "/api/tags":
                self._send(200, server.tags())
            elif self.path == "/api/version":
                self._send(200, {"version": "0.0.0-stand-in"})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            server.requests.append({"path": self.path, "body": body})
            if not server.knows(str(body.get("model", ""))):
                self._send(404, {"error": f"model '{body.get('model')}' not found"})
            elif self.path == "/api/embed":
                self._send(*server.embed(body))
            elif self.path == "/api/show":
                self._send(200, server.show())
            else:
                self._send(404, {"error": "not found"})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
