"""The Prometheus series of ``guard serve``, in a registry of their own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from guard.serve.batcher import BatchStats
from guard.serve.model import ServedModel

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Requests, texts, errors by kind, request latency, what each engine call took, and
    which engine answers (``guard_serve_engine_info``: its fingerprint hash, model name,
    engine and dimensions, so that a dashboard or an alert can tell a switch)."""

    def __init__(self, model: ServedModel) -> None:
        self.registry = registry = CollectorRegistry()
        Info(
            "guard_serve_engine", "The served engine: fingerprint hash, model, engine, size.",
            registry=registry,
        ).info(
            {
                "model": model.id,
                "fingerprint_sha256": model.fingerprint_sha256,
                "engine": model.engine,
                "file_type": model.file_type,
                "dims": str(model.dims),
            }
        )  # fmt: skip
        self.requests = Counter(
            "guard_serve_requests", "Embedding requests by API and HTTP status.",
            ["api", "status"], registry=registry,
        )  # fmt: skip
        self.texts = Counter("guard_serve_texts", "Texts embedded.", ["api"], registry=registry)
        self.errors = Counter(
            "guard_serve_errors", "Refused or failed requests by kind.", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "guard_serve_request_seconds", "Time from request to answer.", ["api"],
            buckets=_SECONDS, registry=registry,
        )  # fmt: skip
        self.batch_texts = Histogram(
            "guard_serve_batch_texts", "Texts per engine call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), registry=registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "guard_serve_batch_requests", "Requests answered by one engine call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry,
        )  # fmt: skip
        self.engine_seconds = Histogram(
            "guard_serve_engine_seconds", "Time of one engine call.", buckets=_SECONDS,
            registry=registry,
        )  # fmt: skip
        self._depth = Gauge(
            "guard_serve_queue_depth", "Requests waiting for the engine.", registry=registry
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self._depth.set_function(lambda: float(depth()))

    def batch(self, stats: BatchStats) -> None:
        """The engine thread's callback after each call."""
        self.batch_texts.observe(stats.texts)
        self.batch_requests.observe(stats.requests)
        self.engine_seconds.observe(stats.seconds)
