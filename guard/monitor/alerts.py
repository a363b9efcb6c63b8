"""Alerts to a generic JSON webhook, sent when a watch's status changes.

A run alerts when its status differs from the status the last *delivered* alert
announced (``ok`` before the first): ok → drift, drift → ok, anything → error and back.
A delivery that fails after every retry leaves that status unchanged, so the next run
tries again. Webhook URLs often carry tokens in their path: logs show only the scheme
and host.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
)

from guard.logs import get_logger
from guard.monitor.results import WatchRun, WatchStatus
from guard.version import __version__

log = get_logger(__name__)

Delivery = Literal["sent", "failed", "none"]
TIMEOUT_S = 10.0


def should_alert(previous: WatchStatus, run: WatchRun) -> bool:
    return run.status != previous


def payload(run: WatchRun, previous: WatchStatus) -> dict[str, Any]:
    """The JSON body: what changed, why, and the run's numbers."""
    return {
        "event": "recovered" if run.status == "ok" else run.status,
        "guard_version": __version__,
        "previous_status": previous,
        **run.as_dict(),
    }


def webhook_label(url: str) -> str:
    """Scheme and host only: the path and query of a webhook URL may be its secret."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/..."


def send(url: str, body: dict[str, Any], *, attempts: int, backoff_seconds: float) -> bool:
    """POST ``body`` to ``url``; retry transport errors, 429 and 5xx with exponential
    backoff. True when the receiver answered 2xx."""
    label = webhook_label(url)

    def log_retry(state: RetryCallState) -> None:  # after each failed attempt, the last too
        outcome = state.outcome
        assert outcome is not None
        exc = outcome.exception() if outcome.failed else None
        problem = type(exc).__name__ if exc else f"HTTP {outcome.result().status_code}"
        log.warning(
            "monitor.alert_retry", webhook=label, attempt=state.attempt_number, problem=problem
        )

    response: httpx.Response | None = None
    if attempts > 0:
        response = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=backoff_seconds),  # backoff * 2 ** (attempt - 1)
            # any other answer is final: a 4xx means retrying will not help
            retry=retry_if_exception_type(httpx.HTTPError) | retry_if_result(_transient),
            after=log_retry,
            retry_error_callback=lambda _state: None,  # out of attempts
        )(httpx.post, url, json=body, timeout=TIMEOUT_S)
    if response is not None and response.is_success:
        log.info("monitor.alert_sent", webhook=label, status=body["status"])
        return True
    log.error("monitor.alert_failed", webhook=label, status=body["status"])
    return False


def _transient(response: httpx.Response) -> bool:
    return not response.is_success and (response.status_code == 429 or response.status_code >= 500)
