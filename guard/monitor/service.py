"""The `guard monitor` service: one APScheduler job per watch, metrics, history, alerts.

Jobs coalesce missed runs into one, never overlap themselves (``max_instances=1``) and
run late within ``misfire_grace_seconds``. A run's failure is a run with status
``error`` (recorded, alerted, counted); nothing a run does stops the scheduler.
Interval watches run once at start-up, then on their interval; cron watches on their
cron line.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from guard import faults
from guard.cache import EmbeddingCache, open_cache
from guard.config import GuardConfig, WatchConfig, thresholds_from
from guard.errors import ConfigError, GuardError
from guard.logs import get_logger
from guard.monitor import alerts
from guard.monitor.history import open_history
from guard.monitor.metrics import MonitorMetrics, serve
from guard.monitor.results import WatchRun
from guard.monitor.run import run_watch
from guard.reindex.due import run_due_jobs
from guard.schedule import parse_schedule
from guard.uri import redact

log = get_logger(__name__)


class MonitorService:
    def __init__(self, config: GuardConfig) -> None:
        if not config.watch and not config.monitor.reindex_every_seconds:
            raise ConfigError("no [[watch]] tables in the config: nothing to monitor")
        self.config = config
        self.metrics = MonitorMetrics()
        self._last: dict[str, WatchRun] = {}
        self._scheduler: BackgroundScheduler | None = None
        self._reindex_stop = threading.Event()  # set on stop: the re-index run ends too
        self._server: WSGIServer | None = None

    @property
    def port(self) -> int:
        """The port /metrics listens on (the configured one, or the one picked for 0)."""
        if self._server is None:
            raise RuntimeError("the service is not started")
        return int(self._server.server_address[1])

    def execute(self, watch: WatchConfig) -> WatchRun:
        """One run of ``watch``: measure, alert on a change of status, record, observe."""
        settings = self.config.monitor
        thresholds = thresholds_from(watch.thresholds, base=thresholds_from(self.config.thresholds))
        try:
            with open_history(settings.state_dsn) as history, _cache(self.config) as cache:
                run = run_watch(
                    watch,
                    history,
                    thresholds=thresholds,
                    population_sample=settings.population_sample,
                    cache=cache,
                )
                previous = history.state(watch.name).alerted_status
                delivery: alerts.Delivery = "none"
                if alerts.should_alert(previous, run):
                    if watch.alert_webhook:
                        delivered = alerts.send(
                            watch.alert_webhook,
                            alerts.payload(run, previous),
                            attempts=settings.alert_attempts,
                            backoff_seconds=settings.alert_backoff_seconds,
                        )
                        delivery = "sent" if delivered else "failed"
                        self.metrics.alerts.labels(watch.name, delivery).inc()
                    if delivery != "failed":
                        history.save_alerted(watch.name, run.status)
                faults.step("monitor.before_record")
                history.record(run, delivery)
        except GuardError as exc:  # the state database itself: nothing can be recorded
            now = datetime.now(UTC)
            error = redact(str(exc))
            log.error("monitor.state_unavailable", watch=watch.name, error=error)
            run = WatchRun(
                watch.name, redact(watch.store), redact(watch.engine), "error",
                now, now, 0, None, None, None, (), error,
            )  # fmt: skip
        self._last[watch.name] = run
        self.metrics.observe(run)
        log.info(
            "monitor.run",
            watch=watch.name,
            status=run.status,
            reasons=list(run.reasons),
            error=run.error,
            cosine_median=run.sample.cosine_median if run.sample else None,
            new_records=run.new_records,
        )
        return run

    def _run_due_jobs(self) -> None:
        """The re-index jobs due now, through the same embedding cache as the watches."""
        with _cache(self.config) as cache:
            run_due_jobs(dsn=self.config.monitor.state_dsn, stop=self._reindex_stop, cache=cache)

    def run_once(self) -> list[WatchRun]:
        """Every watch once, in config order (for cron and Kubernetes CronJob users)."""
        return [self.execute(watch) for watch in self.config.watch]

    def start(self) -> None:
        """Serve /metrics and /healthz, and schedule every watch (returns at once)."""
        settings = self.config.monitor
        self._server = serve(self.metrics, settings.host, settings.port, self.health)
        scheduler = BackgroundScheduler(timezone=UTC)
        scheduler.add_listener(_log_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        for watch in self.config.watch:
            schedule = parse_schedule(watch.schedule)
            first: dict[str, Any] = (
                {"next_run_time": datetime.now(UTC)} if schedule.interval_seconds else {}
            )
            scheduler.add_job(
                self.execute,
                schedule.trigger(UTC),
                args=[watch],
                id=watch.name,
                name=watch.name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=settings.misfire_grace_seconds,
                **first,
            )
        if settings.reindex_every_seconds:
            scheduler.add_job(
                self._run_due_jobs,
                IntervalTrigger(seconds=settings.reindex_every_seconds, timezone=UTC),
                id="reindex",
                name="re-index jobs due",
                coalesce=True,
                max_instances=1,
                next_run_time=datetime.now(UTC),
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info(
            "monitor.started",
            watches=[watch.name for watch in self.config.watch],
            port=self.port,
        )

    def stop(self) -> None:
        """Stop scheduling, stop a re-index run (its leases given back), wait for runs in
        progress, stop serving."""
        self._reindex_stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT (what `docker stop` and Ctrl-C send)."""
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        self.start()
        try:
            stopping.wait()
        finally:
            log.info("monitor.stopping")
            self.stop()

    def health(self) -> dict[str, Any]:
        """Healthy while the scheduler runs; watches in drift or error do not make the
        service unhealthy (that is what alerts and metrics are for)."""
        scheduler = self._scheduler
        return {
            "healthy": bool(scheduler and scheduler.running),
            "watches": {
                name: {"status": run.status, "finished_at": run.finished_at.isoformat()}
                for name, run in self._last.items()
            },
        }


@contextlib.contextmanager
def _cache(config: GuardConfig) -> Iterator[EmbeddingCache | None]:
    """The embedding cache for one run, closed after it."""
    cache = open_cache(config.cache)
    try:
        yield cache
    finally:
        if cache is not None:
            cache.close()


def exit_code(runs: Sequence[WatchRun]) -> int:
    """`guard monitor --once`: 2 when any run failed, else 1 when any drifted, else 0."""
    statuses = {run.status for run in runs}
    return 2 if "error" in statuses else 1 if "drift" in statuses else 0


def _log_job_event(event: JobExecutionEvent) -> None:
    if event.exception is not None:
        log.error("monitor.job_failed", job=event.job_id, error=redact(str(event.exception)))
    else:
        log.warning("monitor.run_missed", job=event.job_id)
