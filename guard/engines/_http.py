"""The HTTP client the openai and ollama engines share.

One pooled ``httpx.Client`` per engine, with a timeout on every request, and retries
with exponential backoff on what is usually transient (429, 5xx, connection errors and
timeouts); everything else fails at once. Every failure becomes an ``EngineError``
carrying the redacted engine URI and never the API key or the response to a rejected key.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import structlog

from guard.errors import ConfigError, EngineError
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
        attempt = -1
        while True:
            attempt += 1
            last = attempt == self._retries
            try:
                response = self._client.request(method, path, json=payload)
            except _RETRIED as exc:
                if last:
                    raise EngineError(
                        f"{method} {url} failed after {attempt + 1} attempt(s): "
                        f"{type(exc).__name__}: {exc}",
                        engine=self.engine,
                    ) from exc
                self._wait(attempt, None, reason=type(exc).__name__)
                continue
            except httpx.HTTPError as exc:
                raise EngineError(f"{method} {url} failed: {exc}", engine=self.engine) from exc
            status = response.status_code
            if (status == 429 or status >= 500) and not last:
                self._wait(attempt, response.headers.get("retry-after"), reason=f"HTTP {status}")
                continue
            if status in (401, 403):
                # The body of a rejected-key answer may echo part of the key: never show it.
                raise EngineError(
                    f"{method} {url}: HTTP {status}, the server refused the credentials"
                    f"{'; ' + self._auth_hint if self._auth_hint else ''}",
                    engine=self.engine,
                )
            if status >= 400:
                raise EngineError(
                    f"{method} {url}: HTTP {status} after {attempt + 1} attempt(s): "
                    f"{response.text[:300]}",
                    engine=self.engine,
                )
            try:
                return response.json()
            except ValueError as exc:
                raise EngineError(
                    f"{method} {url}: the answer is not JSON: {response.text[:200]!r}",
                    engine=self.engine,
                ) from exc

    def _wait(self, attempt: int, retry_after: str | None, *, reason: str) -> None:
        delay = min(self._backoff * 2**attempt, _MAX_DELAY)
        if retry_after and retry_after.isdigit():
            delay = min(float(retry_after), _MAX_DELAY)
        log.warning("engine_retry", engine=self.engine, reason=reason, delay_s=delay)
        time.sleep(delay)


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
