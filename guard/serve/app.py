"""The HTTP side of ``guard serve``: OpenAI's and Ollama's embedding APIs over one engine.

Each API answers in its own shapes, errors included (OpenAI
``{"error": {"message", "type", "param", "code"}}``, Ollama ``{"error": "..."}``), so
that their own clients work unchanged. Ollama's older ``/api/embeddings`` (one
``prompt``, one ``embedding``) is served beside ``/api/embed``. A request naming a model
that is not the served one gets 404 (code ``model_not_found``) unless the server
accepts any name. A request is checked completely (size, JSON,
types, count) before it reaches the engine thread; whatever goes wrong after that is the
engine's, answered 5xx with its one-line message. Every response carries the engine's
fingerprint hash in ``X-Guard-Fingerprint``.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from guard.errors import GuardError, TextTooLongError
from guard.serve.batcher import Batcher, Embedded, Overloaded
from guard.serve.metrics import Metrics
from guard.serve.model import Limits, ServedModel
from guard.version import __version__

log = structlog.get_logger(__name__)

# "ollama_legacy": Ollama's older /api/embeddings ({"model", "prompt"} -> {"embedding"}).
Api = Literal["openai", "ollama", "ollama_legacy"]
FINGERPRINT_HEADER = "X-Guard-Fingerprint"


class RequestError(Exception):
    """A request the server refuses: HTTP status, the error kind for the metrics, and
    the OpenAI ``param``/``code`` where one applies."""

    def __init__(self, status: int, message: str, *, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


@dataclass(frozen=True)
class Side:
    """One engine as served: its model and its engine thread."""

    model: ServedModel
    batcher: Batcher


@dataclass
class Service:
    """What the routes share: the side that serves new requests (``guard serve --follow``
    replaces it when the store switches), limits and metrics. A request keeps the side
    it started with, so its answer names the engine that embedded it."""

    side: Side
    limits: Limits
    metrics: Metrics
    any_model: bool = False  # answer requests naming any model, not only the served one
    others: tuple[ServedModel, ...] = ()  # more models a request may name (--follow's)

    @property
    def model(self) -> ServedModel:
        return self.side.model

    def headers(self, model: ServedModel | None = None) -> dict[str, str]:
        return {FINGERPRINT_HEADER: f"sha256:{(model or self.model).fingerprint_sha256}"}

    def json(self, body: Any, status: int = 200, model: ServedModel | None = None) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=self.headers(model))


def build_app(service: Service) -> Starlette:
    """The Starlette application; the caller starts and stops the engine threads."""

    async def openai_embeddings(request: Request) -> Response:
        return await _embeddings(service, request, "openai")

    async def ollama_embed(request: Request) -> Response:
        return await _embeddings(service, request, "ollama")

    async def ollama_embeddings(request: Request) -> Response:
        return await _embeddings(service, request, "ollama_legacy")

    async def models(_request: Request) -> Response:
        return service.json({"object": "list", "data": [_openai_model(service.model)]})

    async def tags(_request: Request) -> Response:
        return service.json({"models": [_ollama_model(service.model)]})

    async def show(request: Request) -> Response:
        try:
            body = await _read_json(request, service.limits.max_body_bytes)
            name = body.get("model", body.get("name"))  # "name": older Ollama clients
            if name is not None:
                _check_model(service, {"model": name}, "ollama")
        except RequestError as exc:
            return _error(service, "ollama", exc)
        model = service.model
        return service.json(
            {
                "details": _ollama_details(model),
                "model_info": {
                    "general.architecture": model.architecture,
                    f"{model.architecture}.embedding_length": model.dims,
                },
                "capabilities": ["embedding"],
            }
        )

    async def ollama_version(_request: Request) -> Response:
        return service.json({"version": f"guard-serve/{__version__}"})

    async def healthz(_request: Request) -> Response:
        up = service.side.batcher.alive()
        body = {"status": "ok" if up else "engine thread stopped", "model": service.model.id}
        return service.json(body, 200 if up else 503)

    async def metrics(_request: Request) -> Response:
        return Response(
            generate_latest(service.metrics.registry),
            media_type=CONTENT_TYPE_LATEST,
            headers=service.headers(),
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = f"{request.method} {request.url.path}: {_reason(status)}"
        return _error(
            service, _api_of(request.url.path), RequestError(status, message, kind="route")
        )

    async def any_error(request: Request, exc: Exception) -> Response:
        log.error("serve_internal_error", path=request.url.path, error=repr(exc))
        failure = RequestError(500, f"internal error: {type(exc).__name__}", kind="internal")
        return _error(service, _api_of(request.url.path), failure)

    return Starlette(
        routes=[
            Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/api/embed", ollama_embed, methods=["POST"]),
            Route("/api/embeddings", ollama_embeddings, methods=["POST"]),
            Route("/api/tags", tags, methods=["GET"]),
            Route("/api/show", show, methods=["POST"]),
            Route("/api/version", ollama_version, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: any_error},
    )


async def _embeddings(service: Service, request: Request, api: Api) -> Response:
    started = time.perf_counter()
    side = service.side
    try:
        body = await _read_json(request, service.limits.max_body_bytes)
        _check_model(service, body, api)
        texts = _texts(body, api, service.limits.max_inputs)
        encoding = _encoding(body, api, side.model.dims)
        # Ollama answers an empty prompt with an empty embedding (clients send one to
        # load the model): no engine call.
        embedded = await _embed(side, texts) if texts else None
    except RequestError as exc:
        response = _error(service, api, exc)
    else:
        service.metrics.texts.labels(api).inc(len(texts))
        if embedded is None:
            answer: dict[str, Any] = {"embedding": []}
        elif api == "openai":
            answer = _openai_answer(side.model, embedded, encoding)
        elif api == "ollama":
            answer = _ollama_answer(side.model, embedded, started)
        else:
            answer = {"embedding": embedded.rows[0].tolist()}
        response = service.json(answer, model=side.model)
    service.metrics.requests.labels(api, str(response.status_code)).inc()
    service.metrics.latency.labels(api).observe(time.perf_counter() - started)
    return response


async def _embed(side: Side, texts: list[str]) -> Embedded:
    """The texts' rows from the engine thread; its failures as request errors."""
    try:
        return await side.batcher.embed(texts)
    except Overloaded as exc:
        raise RequestError(503, f"server busy: {exc}", kind="overloaded") from exc
    except TextTooLongError as exc:
        raise RequestError(400, str(exc), kind="text_too_long", param="input") from exc
    except GuardError as exc:
        raise RequestError(500, str(exc), kind="engine") from exc
    except Exception as exc:  # an engine bug: one line, never a traceback to the client
        log.error("serve_engine_bug", error=repr(exc))
        raise RequestError(500, f"engine failed: {type(exc).__name__}", kind="engine") from exc


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refused (413) as soon as it passes ``limit`` bytes."""
    too_large = RequestError(413, f"request body over the limit of {limit} bytes", kind="too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}", kind="bad_json") from exc
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object", kind="bad_request")
    return body


def _check_model(service: Service, body: dict[str, Any], api: Api) -> None:
    """The request's ``model`` must name the served model (its id or an alias), unless
    the server takes any name; OpenAI's may be absent, Ollama's is required."""
    name = body.get("model")
    if api != "openai" and not isinstance(name, str):
        raise RequestError(400, "model is required", kind="bad_request", param="model")
    if name is not None and not isinstance(name, str):
        raise RequestError(400, "'model' must be a string", kind="bad_request", param="model")
    models = (service.model, *service.others)
    if name is None or service.any_model or any(model.answers_to(name) for model in models):
        return
    raise RequestError(
        404,
        f"model {name!r} not found: this server serves {service.model.id!r} (names: "
        f"{', '.join(service.model.names)}); start guard serve with --any-model to answer "
        "any name",
        kind="model_not_found",
        param="model",
    )


def _texts(body: dict[str, Any], api: Api, max_inputs: int) -> list[str]:
    """``input`` as a list of non-empty strings (token arrays are not taken); Ollama's
    older endpoint: ``prompt``, one string (empty: no text)."""
    if api == "ollama_legacy":
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be a string", kind="bad_request", param="prompt")
        return [prompt] if prompt else []
    raw = body.get("input")
    if raw is None:
        raise RequestError(400, "'input' is required", kind="bad_request", param="input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise RequestError(
            400, "'input' must be a string or a list of strings", kind="bad_request", param="input"
        )
    if not texts or not all(texts):
        raise RequestError(
            400, "'input' must not be empty or hold empty strings", kind="empty_input",
            param="input",
        )  # fmt: skip
    if len(texts) > max_inputs:
        raise RequestError(
            400, f"'input' holds {len(texts)} texts; at most {max_inputs} per request",
            kind="too_many_inputs", param="input",
        )  # fmt: skip
    return texts


def _encoding(body: dict[str, Any], api: Api, dims: int) -> str:
    """OpenAI's ``encoding_format`` (its Python client asks for base64), and ``dimensions``
    only where it is the engine's own size: the server never cuts vectors."""
    if api != "openai":
        return "float"
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(
            400, "'encoding_format' must be float or base64", kind="bad_request",
            param="encoding_format",
        )  # fmt: skip
    wanted = body.get("dimensions")
    if wanted is not None and wanted != dims:
        raise RequestError(
            400, f"'dimensions' must be {dims}, the engine's size, or absent",
            kind="bad_request", param="dimensions",
        )  # fmt: skip
    return str(encoding)


def _openai_answer(model: ServedModel, embedded: Embedded, encoding: str) -> dict[str, Any]:
    rows = embedded.rows
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
            if encoding == "base64"
            else row.tolist(),
        }
        for index, row in enumerate(rows)
    ]
    tokens = sum(embedded.tokens)
    return {
        "object": "list",
        "data": data,
        "model": model.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _ollama_answer(model: ServedModel, embedded: Embedded, started: float) -> dict[str, Any]:
    return {
        "model": model.id,
        "embeddings": embedded.rows.tolist(),
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": sum(embedded.tokens),
    }


def _openai_model(model: ServedModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "guard",
        "dims": model.dims,
        "fingerprint": model.fingerprint,
        "fingerprint_sha256": model.fingerprint_sha256,
    }


def _ollama_details(model: ServedModel) -> dict[str, Any]:
    return {"format": "gguf" if model.engine == "llamacpp" else model.engine,
            "family": model.architecture, "families": [model.architecture],
            "parameter_size": "", "quantization_level": model.file_type}  # fmt: skip


def _ollama_model(model: ServedModel) -> dict[str, Any]:
    return {
        "name": model.id,
        "model": model.id,
        "digest": f"sha256:{model.fingerprint_sha256}",
        "size": 0,
        "details": _ollama_details(model),
    }


def _api_of(path: str) -> Api:
    return "ollama" if path.startswith("/api/") else "openai"


def _reason(status: int) -> str:
    return {404: "no such endpoint", 405: "method not allowed"}.get(status, f"HTTP {status}")


def _error(service: Service, api: Api, exc: RequestError) -> JSONResponse:
    """The error in the API's own shape, counted by kind."""
    service.metrics.errors.labels(exc.kind).inc()
    if api != "openai":
        return service.json({"error": str(exc)}, exc.status)
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    body = {"error": {"message": str(exc), "type": kind, "param": exc.param, "code": exc.kind}}
    return service.json(body, exc.status)
