"""Prometheus gauges per watch, served with /healthz on the monitor's port.

/metrics is prometheus-client's own WSGI app (content negotiation, gzip); a small WSGI
app around it answers /healthz; wsgiref serves both, a thread per request.

Each service has a registry of its own (not prometheus-client's global one), so that
several services in one process, as in tests, do not collide. An error run updates the
status and the time, and leaves the last measured values in place.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, generate_latest

from guard.monitor.results import WatchRun

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

STATUSES = ("ok", "drift", "error")


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, ["watch", *labels], registry=self.registry)

        self.cosine_p1 = gauge("guard_watch_cosine_p1", "1st percentile of sampled cosines")
        self.cosine_median = gauge("guard_watch_cosine_median", "Median of sampled cosines")
        self.bound_upper = gauge(
            "guard_watch_bound_upper_share",
            "Upper confidence bound on the share of records below min_cosine",
        )
        self.overlap = gauge("guard_watch_overlap", "Mean overlap@k of stored vs re-embedded")
        self.population_auc = gauge(
            "guard_watch_population_auc", "Domain-classifier AUC, new records vs older ones"
        )
        self.population_distance = gauge(
            "guard_watch_population_mean_distance",
            "Cosine distance between the mean vectors of new and older records",
        )
        self.new_records = gauge(
            "guard_watch_new_records", "Records written since the previous run"
        )
        self.last_run = gauge(
            "guard_watch_last_run_timestamp_seconds", "When the last run finished"
        )
        self.duration = gauge("guard_watch_last_run_duration_seconds", "Last run's wall time")
        self.status = gauge("guard_watch_status", "1 for the last run's status", "status")
        self.runs = Counter(
            "guard_watch_runs", "Runs by status", ["watch", "status"], registry=self.registry
        )
        self.alerts = Counter(
            "guard_watch_alerts",
            "Alerts by delivery (sent, or failed after every retry)",
            ["watch", "delivery"],
            registry=self.registry,
        )

    def observe(self, run: WatchRun) -> None:
        watch = run.watch
        for status in STATUSES:
            self.status.labels(watch, status).set(1.0 if run.status == status else 0.0)
        self.runs.labels(watch, run.status).inc()
        self.last_run.labels(watch).set(run.finished_at.timestamp())
        self.duration.labels(watch).set((run.finished_at - run.started_at).total_seconds())
        sample = run.sample
        if sample is not None:
            for gauge, value in (
                (self.cosine_p1, sample.cosine_p1),
                (self.cosine_median, sample.cosine_median),
                (self.bound_upper, sample.bound_upper),
                (self.overlap, sample.overlap),
            ):
                if value is not None:
                    gauge.labels(watch).set(value)
        if run.new_records is not None:
            self.new_records.labels(watch).set(run.new_records)
        if run.population is not None:
            self.population_auc.labels(watch).set(run.population.auc)
            self.population_distance.labels(watch).set(run.population.mean_distance)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr; structlog logs the runs."""


def app(metrics: MonitorMetrics, health: Callable[[], dict[str, Any]]) -> WSGIApplication:
    """/metrics by prometheus-client's WSGI app, /healthz as JSON, 404 elsewhere."""
    exposition = make_wsgi_app(metrics.registry)

    def guard_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return cast("Iterable[bytes]", exposition(environ, start_response))
        if path == "/healthz":
            state = health()
            body = json.dumps(state, default=str).encode()
            code = "200 OK" if state["healthy"] else "503 Service Unavailable"
            start_response(code, [("Content-Type", "application/json")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return guard_app


def serve(
    metrics: MonitorMetrics, host: str, port: int, health: Callable[[], dict[str, Any]]
) -> WSGIServer:
    """Serve /metrics and /healthz in a daemon thread (a thread per request); ``health()``
    returns a dict whose ``healthy`` key decides between 200 and 503. Port 0 picks a free
    port (``server_address[1]``). Call ``shutdown()`` to stop."""
    server = make_server(
        host, port, app(metrics, health), ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="guard-metrics", daemon=True).start()
    return server
