"""`guard monitor` end to end: real stores (qdrant-local, pgvector), the real llama.cpp
engine behind a symlink the test swaps (F16 <-> Q4_0), a real webhook receiver and a
real TCP relay in front of PostgreSQL that the test switches off to make a store
unreachable. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from fixtures_models import free_port

from guard.config import GuardConfig
from guard.corpus import demo_corpus
from guard.engines import open_engine
from guard.faults import KILLED_EXIT
from guard.monitor.service import MonitorService, exit_code
from guard.records import RecordBatch, Vectors
from guard.stores import open_store

STORED = 32  # records in the scheduled watches' stores: small enough for 1 s runs
OLD, NEW = 100, 40  # the population test's older and newer records


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Short paragraphs (embedding is the slow part), spread over the corpus."""
    corpus = demo_corpus()
    order = np.random.default_rng(5).permutation(len(corpus))
    return [corpus[i][:120] for i in order[: OLD + NEW]]


def _embed(path: Path, texts: list[str]) -> Vectors:
    engine = open_engine(f"llamacpp:{path}")
    try:
        return engine.embed(texts)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def f16_vectors(gguf_f16: Path, texts: list[str]) -> Vectors:
    return _embed(gguf_f16, texts)


@pytest.fixture(scope="module")
def q4_vectors(gguf_q4_0: Path, texts: list[str]) -> Vectors:
    """The newest ``NEW`` texts as a writer on the Q4_0 file embeds them."""
    return _embed(gguf_q4_0, texts[OLD:])


@pytest.fixture
def engine_link(tmp_path: Path, gguf_f16: Path) -> Path:
    """The production engine's model file: a symlink the test re-points."""
    link = tmp_path / "production.gguf"
    link.symlink_to(gguf_f16)
    return link


def point(link: Path, target: Path) -> None:
    """Re-point ``link`` atomically, as a deploy that swaps the model file would."""
    fresh = link.with_name(f".{link.name}.{uuid.uuid4().hex[:6]}")
    fresh.symlink_to(target)
    os.replace(fresh, link)


def fill(uri: str, ids: list[Any], texts: list[str], vectors: Vectors, create: bool) -> None:
    store = open_store(uri)
    try:
        if create:
            store.create(dims=vectors.shape[1], distance="cosine")
        store.upsert(RecordBatch(tuple(ids), tuple(texts), vectors))
    finally:
        store.close()


def config(state_dsn: str, *watches: dict[str, Any]) -> GuardConfig:
    return GuardConfig.model_validate(
        {
            "monitor": {"port": 0, "host": "127.0.0.1", "state_dsn": state_dsn,
                        "alert_backoff_seconds": 0.05},
            "watch": list(watches),
        }
    )  # fmt: skip


class Receiver:
    """A webhook endpoint: records every JSON body POSTed to it; answers 503 to the first
    ``fail_first`` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self._fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                receiver.requests += 1
                code = 503 if receiver.requests <= receiver._fail_first else 200
                if code == 200:
                    receiver.bodies.append(body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        # A token in the path, as Slack-style webhooks have: it must never be logged.
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/T0KEN-s3cret"

    def statuses(self, watch: str) -> list[str]:
        return [body["status"] for body in self.bodies if body["watch"] == watch]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Relay:
    """127.0.0.1:port -> a unix socket; ``stop`` refuses new connections and cuts open
    ones, ``start`` listens again on the same port."""

    def __init__(self, unix_socket: Path) -> None:
        self._target = str(unix_socket)
        self._listener: socket.socket | None = None
        self.stopped = True
        self._open: list[socket.socket] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        self.stopped = False
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        self.stopped = True
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self._target)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def pg_socket(pg_dsn: str) -> Path:
    folder = Path(parse_qs(urlsplit(pg_dsn).query)["host"][0])
    return next(p for p in folder.glob(".s.PGSQL.*") if not p.name.endswith(".lock"))


def scrape(port: int) -> dict[tuple[str, str, str], float]:
    """/metrics over HTTP, parsed by prometheus-client's own parser:
    (sample name, watch, status label) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, s.labels.get("watch", ""), s.labels.get("status", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def status_of(metrics: dict[tuple[str, str, str], float], watch: str) -> str | None:
    return next(
        (k[2] for k, v in metrics.items() if k[:2] == ("guard_watch_status", watch) and v == 1),
        None,
    )


def runs_of(metrics: dict[tuple[str, str, str], float], watch: str) -> float:
    return sum(v for k, v in metrics.items() if k[:2] == ("guard_watch_runs_total", watch))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def settle(service: MonitorService, watches: list[str], more: int = 2) -> None:
    """Wait until every watch has finished ``more`` further runs."""
    start = scrape(service.port)
    wait_for(
        lambda: all(runs_of(scrape(service.port), w) >= runs_of(start, w) + more for w in watches),
        f"{more} more runs",
    )


def test_scheduled_watches_alert_once_per_change_of_status(
    state_dsn: str,
    pg_dsn: str,
    qdrant_dir: Path,
    engine_link: Path,
    gguf_f16: Path,
    gguf_q4_0: Path,
    texts: list[str],
    f16_vectors: Vectors,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Every 1 s against qdrant-local and pgvector: F16 -> Q4_0 sends one drift alert per
    watch, back to F16 one recovery; an unreachable store one error alert, then one
    recovery while the scheduler goes on; /metrics shows the values meanwhile."""
    relay = Relay(pg_socket(pg_dsn))
    relay.start()
    receiver = Receiver()
    stores = {
        "qdrant": f"qdrant+local:{qdrant_dir}?collection=watched",
        "pgvector": f"postgresql://postgres@127.0.0.1:{relay.port}/postgres"
        f"?table=t_{uuid.uuid4().hex[:12]}",
    }
    for uri in stores.values():
        fill(uri, list(range(STORED)), texts[:STORED], f16_vectors[:STORED], create=True)
    watches = [
        {"name": name, "store": uri, "engine": f"llamacpp:{engine_link}",
         "schedule": "every 1s", "alert_webhook": receiver.url}
        for name, uri in stores.items()
    ]  # fmt: skip
    service = MonitorService(config(state_dsn, *watches))
    service.start()
    try:
        wait_for(lambda: all(status_of(scrape(service.port), w) == "ok" for w in stores), "ok runs")
        metrics = scrape(service.port)
        for watch in stores:
            assert metrics[("guard_watch_cosine_median", watch, "")] > 0.999
            assert metrics[("guard_watch_cosine_p1", watch, "")] > 0.99
            assert metrics[("guard_watch_bound_upper_share", watch, "")] == 0.0
            assert metrics[("guard_watch_overlap", watch, "")] == 1.0
            assert time.time() - metrics[("guard_watch_last_run_timestamp_seconds", watch, "")] < 60
        assert receiver.bodies == []

        point(engine_link, gguf_q4_0)
        wait_for(lambda: all(receiver.statuses(w) == ["drift"] for w in stores), "drift alerts")
        settle(service, list(stores))
        metrics = scrape(service.port)
        for watch in stores:
            assert receiver.statuses(watch) == ["drift"]
            assert status_of(metrics, watch) == "drift"
            assert metrics[("guard_watch_cosine_median", watch, "")] < 0.99

        point(engine_link, gguf_f16)
        wait_for(lambda: all(receiver.statuses(w) == ["drift", "ok"] for w in stores), "recoveries")

        relay.stop()
        wait_for(lambda: receiver.statuses("pgvector")[-1] == "error", "an error alert")
        relay.start()
        wait_for(lambda: receiver.statuses("pgvector")[-1] == "ok", "recovery after the error")
        settle(service, list(stores))
        assert receiver.statuses("pgvector") == ["drift", "ok", "error", "ok"]
        assert receiver.statuses("qdrant") == ["drift", "ok"]
        health = httpx.get(f"http://127.0.0.1:{service.port}/healthz", timeout=5)
        assert (health.status_code, health.json()["healthy"]) == (200, True)
    finally:
        service.stop()
        receiver.close()
        if relay.stopped:
            relay.start()
        for uri in stores.values():
            store = open_store(uri)
            store.drop()
            store.close()
        relay.stop()

    error = next(b for b in receiver.bodies if b["status"] == "error")
    assert (error["event"], error["previous_status"]) == ("error", "ok")
    assert "127.0.0.1" in error["error"] and error["sample"] is None
    drift = receiver.bodies[0]
    assert drift["sample"]["cosine_median"] < 0.99 and drift["reasons"]
    captured = capfd.readouterr()
    assert "T0KEN-s3cret" not in captured.out + captured.err

    from guard.monitor.history import open_history

    with open_history(state_dsn) as history:
        trend = history.trend("pgvector", limit=1000)
    statuses = [row["status"] for row in trend]
    assert {"ok", "drift", "error"} == set(statuses)
    assert [row["status"] for row in trend if row["alert"] == "sent"] == [
        "drift", "ok", "error", "ok"
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["pgvector-int-ids", "qdrant-uuid-ids"])
def test_records_written_by_another_engine_are_flagged_by_the_population_check(
    kind: str,
    state_dsn: str,
    pg_dsn: str,
    qdrant_dir: Path,
    gguf_f16: Path,
    texts: list[str],
    f16_vectors: Vectors,
    q4_vectors: Vectors,
) -> None:
    """New records embedded by F16 like the old ones pass; new records embedded by Q4_0
    are flagged by the domain classifier; a run with nothing new checks nothing."""
    if kind.startswith("pgvector"):
        uri = f"{pg_dsn}&table=t_{uuid.uuid4().hex[:12]}"

        def ids(numbers: range) -> list[Any]:
            return list(numbers)
    else:
        uri = f"qdrant+local:{qdrant_dir}?collection=population"

        def ids(numbers: range) -> list[Any]:
            return [str(uuid.UUID(int=n * 0x9E3779B97F4A7C15 + 1)) for n in numbers]

    fill(uri, ids(range(OLD)), texts[:OLD], f16_vectors[:OLD], create=True)
    service = MonitorService(
        config(state_dsn, {"name": kind, "store": uri, "engine": f"llamacpp:{gguf_f16}",
                           "sample": 8})
    )  # fmt: skip
    try:
        first = service.execute(service.config.watch[0])
        assert (first.status, first.new_records, first.population) == ("ok", None, None)

        fill(uri, ids(range(OLD, OLD + NEW)), texts[OLD:], f16_vectors[OLD:], create=False)
        same = service.execute(service.config.watch[0])
        assert same.population is not None
        assert (same.status, same.new_records, same.population.drifted) == ("ok", NEW, False)

        other = range(OLD + NEW, OLD + 2 * NEW)
        fill(uri, ids(other), texts[OLD:], q4_vectors, create=False)
        flagged = service.execute(service.config.watch[0])
        assert flagged.population is not None
        assert (flagged.status, flagged.new_records, flagged.population.drifted) == (
            "drift", NEW, True
        )  # fmt: skip
        assert any("domain-classifier AUC" in reason for reason in flagged.reasons)
        assert flagged.population.auc > flagged.population.auc_threshold > 0.5

        quiet = service.execute(service.config.watch[0])
        assert (quiet.new_records, quiet.population) == (0, None)
    finally:
        store = open_store(uri)
        store.drop()
        store.close()


def test_alert_delivery_is_retried_and_a_failed_one_is_sent_by_the_next_run(
    state_dsn: str, qdrant_dir: Path, gguf_f16: Path
) -> None:
    """A missing collection fails the run (no embedding needed): the error alert meets
    four 503s, is recorded as failed, goes out with the next run, then stays quiet."""
    receiver = Receiver(fail_first=4)
    watch = {"name": "missing", "store": f"qdrant+local:{qdrant_dir}?collection=absent",
             "engine": f"llamacpp:{gguf_f16}", "alert_webhook": receiver.url}  # fmt: skip
    service = MonitorService(config(state_dsn, watch))
    try:
        runs = [service.execute(service.config.watch[0]) for _ in range(3)]
    finally:
        receiver.close()
    assert [run.status for run in runs] == ["error"] * 3
    assert exit_code(runs) == 2
    assert (receiver.requests, receiver.statuses("missing")) == (5, ["error"])
    delivered = {
        delivery: service.metrics.registry.get_sample_value(
            "guard_watch_alerts_total", {"watch": "missing", "delivery": delivery}
        )
        for delivery in ("failed", "sent")
    }
    assert delivered == {"failed": 1.0, "sent": 1.0}
    from guard.monitor.history import open_history

    with open_history(state_dsn) as history:
        assert [row["alert"] for row in history.trend("missing")] == ["failed", "sent", "none"]


def test_once_exit_codes_and_history_through_the_cli(
    state_dsn: str,
    qdrant_dir: Path,
    engine_link: Path,
    gguf_q4_0: Path,
    texts: list[str],
    f16_vectors: Vectors,
    tmp_path: Path,
) -> None:
    """`guard monitor --once` exits 0 when ok and 1 on drift; `guard monitor history`
    prints both runs."""
    from typer.testing import CliRunner

    from guard.cli import app

    uri = f"qdrant+local:{qdrant_dir}?collection=cli"
    fill(uri, list(range(STORED)), texts[:STORED], f16_vectors[:STORED], create=True)
    toml = tmp_path / "guard.toml"
    toml.write_text(
        f'[monitor]\nstate_dsn = "{state_dsn}"\n\n'
        f'[[watch]]\nname = "cli"\nstore = "{uri}"\nengine = "llamacpp:{engine_link}"\n'
        'schedule = "*/5 * * * *"\n',
        encoding="utf-8",
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["monitor", "--config", str(toml), "--once", "--format", "json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["runs"][0]["status"] == "ok"
    point(engine_link, gguf_q4_0)
    drift = runner.invoke(app, ["monitor", "--config", str(toml), "--once"])
    assert drift.exit_code == 1, drift.output
    assert drift.stdout.startswith("cli: drift")
    shown = runner.invoke(app, ["monitor", "history", "--config", str(toml), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    assert [row["status"] for row in json.loads(shown.stdout)] == ["ok", "drift"]


def test_a_rerun_hits_the_cache_and_another_model_file_behind_the_same_uri_never_does(
    state_dsn: str,
    qdrant_dir: Path,
    engine_link: Path,
    gguf_q4_0: Path,
    texts: list[str],
    f16_vectors: Vectors,
    tmp_path: Path,
) -> None:
    """`guard monitor --once` twice: the second run takes every sampled vector from the
    cache and says so; the same engine URI on a Q4_0 file (another sha256 in the
    fingerprint) embeds afresh and still reports the drift."""
    from typer.testing import CliRunner

    from guard.cli import app

    uri = f"qdrant+local:{qdrant_dir}?collection=cached"
    fill(uri, list(range(STORED)), texts[:STORED], f16_vectors[:STORED], create=True)
    toml = tmp_path / "guard.toml"
    toml.write_text(
        f'[monitor]\nstate_dsn = "{state_dsn}"\n\n[cache]\npath = "{tmp_path / "cache.sqlite"}"\n\n'
        f'[[watch]]\nname = "cached"\nstore = "{uri}"\nengine = "llamacpp:{engine_link}"\n'
        'schedule = "*/5 * * * *"\n',
        encoding="utf-8",
    )
    once = ["monitor", "--config", str(toml), "--once"]
    runner = CliRunner()

    first = runner.invoke(app, [*once, "--format", "json"])
    rerun = runner.invoke(app, [*once, "--format", "json"])
    shown = runner.invoke(app, once)
    point(engine_link, gguf_q4_0)
    swapped = runner.invoke(app, [*once, "--format", "json"])

    runs = [json.loads(result.stdout)["runs"][0] for result in (first, rerun, swapped)]
    assert [(run["status"], run["cache"]) for run in runs] == [
        ("ok", {"enabled": True, "hits": 0, "misses": STORED}),
        ("ok", {"enabled": True, "hits": STORED, "misses": 0}),
        ("drift", {"enabled": True, "hits": 0, "misses": STORED}),
    ]
    assert runs[1]["sample"] == runs[0]["sample"]
    assert f"{STORED} of {STORED} sampled vectors from the cache" in shown.stdout
    assert (first.exit_code, rerun.exit_code, shown.exit_code, swapped.exit_code) == (0, 0, 0, 1)


def test_the_service_serves_health_and_stops_on_sigterm(
    state_dsn: str, qdrant_dir: Path, gguf_f16: Path, tmp_path: Path
) -> None:
    """`guard monitor` as a process: /healthz answers 200 (a watch in error does not make
    the service unhealthy), the failed run shows in /metrics, SIGTERM stops it with 0."""
    port = free_port()
    toml = tmp_path / "guard.toml"
    toml.write_text(
        f'[monitor]\nport = {port}\nhost = "127.0.0.1"\nstate_dsn = "{state_dsn}"\n\n'
        f'[[watch]]\nname = "absent"\nstore = "qdrant+local:{qdrant_dir}?collection=absent"\n'
        f'engine = "llamacpp:{gguf_f16}"\nschedule = "every 1h"\n',
        encoding="utf-8",
    )
    guard = Path(sys.executable).with_name("guard")
    process = subprocess.Popen(
        [str(guard), "--log-format", "json", "-v", "monitor", "--config", str(toml)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _answers(port), "the service's /healthz", timeout=60)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert (health.status_code, health.json()["healthy"]) == (200, True)
        wait_for(lambda: status_of(scrape(port), "absent") == "error", "the first run")
    finally:
        process.send_signal(signal.SIGTERM)
        _, logs = process.communicate(timeout=30)
    assert process.returncode == 0
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    assert {"monitor.started", "monitor.run", "monitor.stopping"} <= set(events)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("kind", ["pgvector-int-ids", "qdrant-uuid-ids"])
def test_a_run_killed_before_it_is_recorded_leaves_its_new_records_to_the_next_run(
    kind: str,
    state_dsn: str,
    pg_dsn: str,
    qdrant_dir: Path,
    gguf_f16: Path,
    texts: list[str],
    f16_vectors: Vectors,
    tmp_path: Path,
) -> None:
    """`guard monitor --once` killed after the population check and before its run is
    recorded moves no watermark: the next run counts and checks the records the killed
    run saw as new."""
    if kind.startswith("pgvector"):
        uri = f"{pg_dsn}&table=t_{uuid.uuid4().hex[:12]}"
        ids: list[Any] = list(range(OLD + NEW))
    else:
        uri = f"qdrant+local:{qdrant_dir}?collection=watermark"
        ids = [str(uuid.UUID(int=n * 0x9E3779B97F4A7C15 + 1)) for n in range(OLD + NEW)]
    fill(uri, ids[:OLD], texts[:OLD], f16_vectors[:OLD], create=True)
    toml = tmp_path / "guard.toml"
    toml.write_text(
        f'[monitor]\nstate_dsn = "{state_dsn}"\n\n[[watch]]\nname = "{kind}"\n'
        f'store = "{uri}"\nengine = "llamacpp:{gguf_f16}"\nsample = 8\n',
        encoding="utf-8",
    )

    def once(fault: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "GUARD_FAULT"}
        env |= {"GUARD_FAULT": fault} if fault else {}
        command = ["monitor", "--config", str(toml), "--once", "--format", "json"]
        guard = str(Path(sys.executable).with_name("guard"))
        return subprocess.run(
            [guard, *command], capture_output=True, text=True, env=env, timeout=300
        )

    try:
        assert once().returncode == 0, "the first run takes the snapshot"
        fill(uri, ids[OLD:], texts[OLD:], f16_vectors[OLD:], create=False)
        killed = once("monitor.before_record")
        assert killed.returncode == KILLED_EXIT, killed.stderr
        after = once()
        assert after.returncode == 0, after.stderr
        run = json.loads(after.stdout)["runs"][0]
        assert (run["status"], run["new_records"]) == ("ok", NEW)
        assert run["population"] is not None
    finally:
        store = open_store(uri)
        store.drop()
        store.close()
