"""What the openai and ollama engines share: the HTTP client and the engine base class.

One pooled ``httpx.Client`` per engine, with a timeout on every request, and retries
with exponential backoff on what is usually transient (429, 5xx, connection errors and
timeouts); everything else fails at once. Every failure becomes an ``EngineError``
carrying the redacted engine URI and never the API key or the response to a rejected key.
``HttpEngine`` holds the rest they have in common (URI options, the API key, the client's
life, batching, the fingerprint's frame); each engine adds its endpoint and shapes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import httpx
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
)

from guard.closing import Closing
from guard.engines import EngineOptions
from guard.engines._common import (
    batches,
    check_params,
    finish,
    reject_options,
    version,
    with_params,
)
from guard.errors import ConfigError, EngineError
from guard.records import Vectors
from guard.uri import ParsedURI, as_int

log = structlog.get_logger(__name__)

_RETRIED = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_MAX_DELAY = 8.0


def base_url(parsed: ParsedURI) -> str:
    """``openai+https://host/v1?...`` -> ``https://host/v1``: the guard's scheme prefix
    and query parameters are not the server's."""
    transport = parsed.scheme.split("+", 1)[1]
    return f"{transport}://{parsed.netloc}{parsed.path}".rstrip("/")


def timeout_param(parsed: ParsedURI, default: float = 60.0) -> float:
    raw = parsed.params.get("timeout")
    if raw is None or raw == "":
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"option timeout must be seconds, not {raw!r}") from None
    if seconds <= 0:
        raise ConfigError(f"option timeout must be positive, not {raw!r}")
    return seconds


def retries_param(parsed: ParsedURI, default: int = 4) -> int:
    value = as_int(parsed.params.get("retries"), name="retries", default=default, minimum=0)
    return default if value is None else value


class HttpClient:
    """JSON over HTTP with retries; connects on the first request."""

    def __init__(
        self,
        url: str,
        *,
        engine: str,
        timeout: float,
        retries: int,
        headers: dict[str, str] | None = None,
        backoff: float = 0.5,
        auth_hint: str = "",
    ) -> None:
        self.engine = engine
        self._retries = retries
        self._backoff = backoff
        self._auth_hint = auth_hint
        self._client = httpx.Client(
            base_url=url,
            headers=headers or {},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )

    def get_json(self, path: str) -> Any:
        return self._request("GET", path, None)

    def post_json(self, path: str, payload: dict[str, Any]) -> Any:
        return self._request("POST", path, payload)

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        url = f"{str(self._client.base_url).rstrip('/')}{path}"  # httpx adds a trailing /
        retrying = Retrying(
            stop=stop_after_attempt(self._retries + 1),
            retry=retry_if_exception_type(_RETRIED) | retry_if_result(_transient),
            wait=self._delay,
            before_sleep=self._log_retry,
            retry_error_callback=_last_outcome,
        )
        try:
            response: httpx.Response = retrying(self._client.request, method, path, json=payload)
        except _RETRIED as exc:
            raise EngineError(
                f"{method} {url} failed after {retrying.statistics['attempt_number']} "
                f"attempt(s): {type(exc).__name__}: {exc}",
                engine=self.engine,
            ) from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"{method} {url} failed: {exc}", engine=self.engine) from exc
        status = response.status_code
        if status in (401, 403):
            # The body of a rejected-key answer may echo part of the key: never show it.
            raise EngineError(
                f"{method} {url}: HTTP {status}, the server refused the credentials"
                f"{'; ' + self._auth_hint if self._auth_hint else ''}",
                engine=self.engine,
            )
        if status >= 400:
            raise EngineError(
                f"{method} {url}: HTTP {status} after {retrying.statistics['attempt_number']} "
                f"attempt(s): {response.text[:300]}",
                engine=self.engine,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise EngineError(
                f"{method} {url}: the answer is not JSON: {response.text[:200]!r}",
                engine=self.engine,
            ) from exc

    def _delay(self, state: RetryCallState) -> float:
        """Exponential backoff from ``backoff``, or the server's numeric Retry-After;
        either way at most ``_MAX_DELAY`` seconds."""
        delay: float = min(self._backoff * 2 ** (state.attempt_number - 1), _MAX_DELAY)
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            retry_after = outcome.result().headers.get("retry-after")
            if retry_after and retry_after.isdigit():
                delay = min(float(retry_after), _MAX_DELAY)
        return delay

    def _log_retry(self, state: RetryCallState) -> None:
        outcome = state.outcome
        assert outcome is not None  # tenacity sleeps only after an attempt
        exc = outcome.exception() if outcome.failed else None
        reason = type(exc).__name__ if exc else f"HTTP {outcome.result().status_code}"
        log.warning("engine_retry", engine=self.engine, reason=reason, delay_s=state.upcoming_sleep)


def _transient(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def _last_outcome(state: RetryCallState) -> Any:
    """Out of attempts: the last answer as it is, or the last error raised again."""
    assert state.outcome is not None
    return state.outcome.result()


class HttpEngine(Closing):
    """An engine behind an HTTP server: subclasses name their kind, extra parameters and
    refused options, and implement ``_embed_batch`` and ``_identify``."""

    kind: ClassVar[str]  # "openai", "ollama": the fingerprint's engine name
    extra_params: ClassVar[tuple[str, ...]]  # query parameters besides the common options
    refused_options: ClassVar[tuple[str, ...]]  # options only the server can set
    refused_why: ClassVar[str]
    default_key_env: ClassVar[str | None] = None  # where the API key is, for servers with one

    def __init__(self, parsed: ParsedURI) -> None:
        check_params(parsed, self.extra_params)
        self._parsed = parsed
        self.uri = parsed.redacted
        self.options = EngineOptions.from_params(parsed.params)
        reject_options(parsed, self.options, *self.refused_options, why=self.refused_why)
        self.model = parsed.params.get("model") or ""
        if not self.model:
            raise ConfigError(f"{self.kind} engines need ?model=NAME [{self.uri}]")
        self.api_key_env = parsed.params.get("api_key_env") or self.default_key_env
        self._url = base_url(parsed)
        self._timeout = timeout_param(parsed)
        self._retries = retries_param(parsed)
        self._client: HttpClient | None = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        rows: list[Any] = []
        for chunk in batches(texts, self.options.batch_size):
            rows.extend(self._embed_batch([self.options.prefix + text for text in chunk]))
        return finish(rows, expected=len(texts), options=self.options, engine=self.uri)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Characters, prefix included: the server's tokenizer is out of reach."""
        return [len(self.options.prefix + text) for text in texts]

    def fingerprint(self) -> dict[str, Any]:
        model, server_versions = self._identify()
        settings = self.options.vector_settings()
        settings.update(self._server_settings())
        return {
            "engine": self.kind,
            "model": model,
            "settings": settings,
            "versions": {**server_versions, "httpx": version("httpx")},
        }

    def with_options(self, **changes: Any) -> Self:
        return type(self)(with_params(self._parsed, changes))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self) -> HttpClient:
        if self._client is None:
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            self._client = HttpClient(
                self._url,
                engine=self.uri,
                timeout=self._timeout,
                retries=self._retries,
                headers={"Authorization": f"Bearer {key}"} if key else None,
                auth_hint=f"check the key in ${self.api_key_env}" if self.api_key_env else "",
            )
        return self._client

    def _embed_batch(self, inputs: list[str]) -> list[Any]:
        """One request: the rows for ``inputs`` (prefixed already), in their order."""
        raise NotImplementedError

    def _identify(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The fingerprint's model identity, and the server's versions."""
        raise NotImplementedError

    def _server_settings(self) -> dict[str, Any]:
        """Settings the server applies, added to the options' vector settings."""
        return {}


def vectors_field(data: Any, field: str, *, expected: int, engine: str) -> list[Any]:
    """``data[field]`` as a list of ``expected`` items, or an EngineError saying what is wrong."""
    items = data.get(field) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise EngineError(f"malformed answer: no {field!r} list in it", engine=engine)
    if len(items) != expected:
        raise EngineError(
            f"the server returned {len(items)} vectors for {expected} texts", engine=engine
        )
    return items
