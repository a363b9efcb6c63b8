"""Alerts to a generic JSON webhook, sent when a watch's status changes.

A run alerts when its status differs from the status the last *delivered* alert
announced (``ok`` before the first): ok → drift, drift → ok, anything → error and back.
A delivery that fails after every retry leaves that status unchanged, so the next run
tries again. Webhook URLs often carry tokens in their path: logs show only the scheme
and host.
"""

from __future__ import annotations

import time
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from guard import __version__
from guard.logs import get_logger
from guard.monitor.results import WatchRun, WatchStatus

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
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.post(url, json=body, timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            problem = type(exc).__name__
        else:
            if response.is_success:
                log.info("monitor.alert_sent", webhook=label, status=body["status"])
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code != 429 and response.status_code < 500:
                break  # the receiver refuses this request: retrying will not help
        log.warning("monitor.alert_retry", webhook=label, attempt=attempt, problem=problem)
        if attempt < attempts:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
    log.error("monitor.alert_failed", webhook=label, status=body["status"])
    return False
