"""A re-index of a pgvector table or a Qdrant collection while an application keeps
reading and writing it.

    python bench/live_migration.py [--store pgvector|qdrant] [--records 1400]
        [--readers 2] [--writers 2] [--write-rate 25] [--read-rate 10] [--shared-cpus]

A store of demo-corpus paragraphs embedded by the baseline (llama.cpp F16, CLS pooling):
an embedded PostgreSQL table, or with ``--store qdrant`` a Qdrant collection the
application queries through an alias (the server at QDRANT_URL, else qdrant-client's
local mode in a temporary folder). The candidate is the same model with its own mean
pooling, so every vector says which engine made it. The application embeds through
`guard serve --follow JOB` and talks to the store by the name it queries (the table; the
alias): readers run top-10 searches, writers insert, edit (new text) and delete, each on
ids of its own. Meanwhile: plan -> a worker stopped mid-run (SIGKILLed; in Qdrant's
local mode, which admits one process per folder, a worker thread of this process told to
stop), another finishing -> catch-up -> cutover -> rollback -> cutover. Printed: reads,
reader errors, p50/p99/max read latency, the longest writer wait during a switch,
writes acknowledged / refused / lost (split into those clear of any switch and those
that overlapped one: on Qdrant a write landing between a switch's last comparison and
the alias move stays behind, see README), and writes in the wrong engine's space (split
the same way). tests/test_reindex_live.py runs a short version of the same.

In production the application's embedder and the migration run on machines of their
own; on one machine they fight for the same cores, and a switch's writers then wait for
an engine starved by the application's own embedding. So, unless --shared-cpus, the
application's `guard serve` runs on the first half of this machine's CPUs and the
migration (workers, catch-up, cutover, rollback) on the other half; PostgreSQL and the
application's threads run anywhere.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo
from qdrant_client import QdrantClient, models

from guard import api
from guard.adapters.qdrant_clients import acquire_local, release_local, turns
from guard.adapters.qdrant_reindex import QdrantReindex
from guard.engines import open_engine
from guard.records import RecordBatch
from guard.reindex.worker import run_worker
from guard.stores import open_store
from guard.uri import parse

SPACE_COSINE = 0.999  # a vector is in an engine's space when this close to its embedding
FIRST_NEW_ID = 1_000_000
PAGE = 256

Held = dict[int, tuple[str | None, np.ndarray]]  # id -> (text, vector) as the store holds it


class Connection(Protocol):
    """One application thread's access to its store, by the name the application queries."""

    def search(self, vector: list[float], k: int) -> list[int]: ...

    def upsert(self, record_id: int, text: str, vector: list[float]) -> None: ...

    def delete(self, record_id: int) -> None: ...

    def held(self) -> Held: ...

    def close(self) -> None: ...


class AppStore(Protocol):
    """Where the application keeps its records: the guard's URI of it, and connections."""

    kind: str

    @property
    def uri(self) -> str: ...

    @property
    def in_process(self) -> bool:
        """Only this process may open it (Qdrant's local mode)."""
        ...

    def create(self, batch: RecordBatch) -> None: ...

    def connect(self) -> Connection: ...


class SqlConnection:
    """SQL on the table's name, as an application writes it."""

    def __init__(self, dsn: str, table: str) -> None:
        self.table = table
        self.db = psycopg.connect(dsn, autocommit=True)

    def search(self, vector: list[float], k: int) -> list[int]:
        rows = self.db.execute(
            f'SELECT id FROM "{self.table}" ORDER BY embedding <=> %s::vector LIMIT %s',  # noqa: S608
            (str(vector), k),
        ).fetchall()
        return [int(i) for (i,) in rows]

    def upsert(self, record_id: int, text: str, vector: list[float]) -> None:
        self.db.execute(
            f'INSERT INTO "{self.table}" (id, text, embedding)'  # noqa: S608
            " VALUES (%s, %s, %s::vector) ON CONFLICT (id) DO UPDATE"
            " SET text = excluded.text, embedding = excluded.embedding",
            (record_id, text, str(vector)),
        )

    def delete(self, record_id: int) -> None:
        self.db.execute(f'DELETE FROM "{self.table}" WHERE id = %s', (record_id,))  # noqa: S608

    def held(self) -> Held:
        rows = self.db.execute(f'SELECT id, text, embedding::text FROM "{self.table}"').fetchall()  # noqa: S608
        return {int(i): (text, np.array(vector.strip("[]").split(","), dtype=np.float32))
                for i, text, vector in rows}  # fmt: skip

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True)
class PgTable:
    """A pgvector table the application queries by its name."""

    dsn: str
    table: str
    kind = "pgvector"
    in_process = False

    @property
    def uri(self) -> str:
        return store_uri(self.dsn, self.table)

    def create(self, batch: RecordBatch) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        with open_store(self.uri) as store:
            store.create(dims=int(batch.vectors.shape[1]), distance="cosine")
            store.upsert(batch)

    def connect(self) -> Connection:
        return SqlConnection(self.dsn, self.table)


class QdrantConnection:
    """qdrant-client on the alias. In local mode, the process's one client of the folder,
    taking the folder's turns with the guard's own stores (guard.adapters.qdrant_clients):
    qdrant-client admits one client per folder, and that client is not thread-safe."""

    def __init__(self, place: QdrantAliased) -> None:
        self.alias, self._path = place.alias, place.folder
        self._turn: AbstractContextManager[Any] = nullcontext()
        if self._path is not None:
            self.client = acquire_local(self._path)
            self._turn = turns(self._path)
        else:
            self.client = QdrantClient(
                url=place.location, api_key=os.environ.get("QDRANT_API_KEY"), timeout=60
            )

    def search(self, vector: list[float], k: int) -> list[int]:
        with self._turn:
            points = self.client.query_points(self.alias, query=vector, limit=k).points
        return [int(p.id) for p in points]

    def upsert(self, record_id: int, text: str, vector: list[float]) -> None:
        point = models.PointStruct(id=record_id, vector=vector, payload={"text": text})
        with self._turn:
            self.client.upsert(self.alias, [point], wait=True)

    def delete(self, record_id: int) -> None:
        with self._turn:
            self.client.delete(self.alias, models.PointIdsList(points=[record_id]), wait=True)

    def held(self) -> Held:
        found: Held = {}
        offset: Any = None
        while True:
            with self._turn:
                points, offset = self.client.scroll(
                    self.alias, offset=offset, limit=PAGE, with_payload=True, with_vectors=True
                )
            for p in points:
                found[int(p.id)] = ((p.payload or {}).get("text"), np.asarray(p.vector, np.float32))
            if offset is None:
                return found

    def close(self) -> None:
        if self._path is not None:
            release_local(self._path)
        else:
            self.client.close()


@dataclass(frozen=True)
class QdrantAliased:
    """A Qdrant collection (``<alias>_v1``) the application queries through ``alias``, as
    it must for a cutover to move it: on the server at ``location`` (http(s)://), else in
    qdrant-client's local mode in the folder ``location``."""

    location: str
    alias: str
    kind = "qdrant"

    @property
    def folder(self) -> Path | None:
        if self.location.startswith(("http://", "https://")):
            return None
        return Path(self.location).expanduser().resolve()  # as the guard's stores key it

    @property
    def in_process(self) -> bool:
        return self.folder is not None

    def named(self, collection: str) -> str:
        """The guard's URI of ``collection`` (or alias) in this Qdrant."""
        if self.folder is not None:
            return f"qdrant+local:{self.folder}?collection={collection}"
        server = urlsplit(self.location)
        key = "?api_key_env=QDRANT_API_KEY" if os.environ.get("QDRANT_API_KEY") else ""
        return f"qdrant+{server.scheme}://{server.netloc}/{collection}{key}"

    @property
    def uri(self) -> str:
        return self.named(self.alias)

    def create(self, batch: RecordBatch) -> None:
        first = self.named(f"{self.alias}_v1")
        with open_store(first) as store:
            store.create(dims=int(batch.vectors.shape[1]), distance="cosine")
            store.upsert(batch)
        with QdrantReindex(parse(first)) as qdrant:
            qdrant.point_alias(self.alias, f"{self.alias}_v1")

    def connect(self) -> Connection:
        return QdrantConnection(self)

    def drop(self) -> None:
        """The alias and every collection named after it (the first, the job's target)."""
        connection = QdrantConnection(self)
        try:
            with connection._turn:
                client = connection.client
                client.update_collection_aliases(
                    change_aliases_operations=[
                        models.DeleteAliasOperation(
                            delete_alias=models.DeleteAlias(alias_name=self.alias)
                        )
                    ]
                )
                for found in client.get_collections().collections:
                    if found.name.startswith(self.alias):
                        client.delete_collection(found.name)
        finally:
            connection.close()


@dataclass
class Write:
    text: str | None  # None: deleted
    clean: bool  # no switch began or ended while it was embedded and written
    fingerprint: str


@dataclass
class Tally:
    reads: int = 0
    read_errors: int = 0
    read_seconds: list[float] = field(default_factory=list)
    acknowledged: int = 0
    refused: int = 0
    writer_waits: list[float] = field(default_factory=list)  # writes during a switch
    fingerprints: set[str] = field(default_factory=set)
    seconds: float = 0.0  # how long the application ran


class Application:
    """Readers and writers as an application runs them: every vector from `guard serve`,
    every read and write through the store's own client on the name the application
    queries. Writer ``w`` owns the base ids ``id % writers == w`` and the new ids it
    inserts, so what each id must hold at the end is the last write its one writer saw
    acknowledged."""

    def __init__(
        self,
        store: AppStore,
        url: str,
        base: dict[int, str],
        *,
        readers: int = 2,
        writers: int = 2,
        pause: float = 0.01,
        write_rate: float | None = None,
        read_rate: float | None = None,
    ) -> None:
        self.store, self.url, self.pause = store, url, pause
        # Each writer's share of the application's writes per second (None: as fast as
        # the embedding allows).
        self.write_gap = writers / write_rate if write_rate else 0.0
        self.read_gap = readers / read_rate if read_rate else 0.0
        self.base = dict(base)
        self.writes: dict[int, Write] = {}
        self.tally = Tally()
        self._epoch = 0  # odd while a switch runs
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._read, args=(n,), daemon=True) for n in range(readers)
        ] + [
            threading.Thread(target=self._write, args=(n, writers), daemon=True)
            for n in range(writers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> Tally:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.tally.seconds = time.monotonic() - self._started
        return self.tally

    @contextmanager
    def switching(self) -> Iterator[None]:
        """Mark a switch: writes that overlap it are not 'clean'."""
        self._epoch += 1
        try:
            yield
        finally:
            self._epoch += 1

    def _embed(self, client: httpx.Client, text: str) -> tuple[list[float], str]:
        answer = client.post(f"{self.url}/v1/embeddings", json={"input": [text]})
        answer.raise_for_status()
        return answer.json()["data"][0]["embedding"], answer.headers["x-guard-fingerprint"]

    def _read(self, reader: int) -> None:
        rng = random.Random(reader)
        texts = list(self.base.values())
        due = time.monotonic()
        db = self.store.connect()
        with httpx.Client(timeout=30) as client, closing(db):
            while not self._stop.is_set():
                due += self.read_gap
                query = rng.choice(texts)[:80]
                try:
                    vector, _ = self._embed(client, query)
                    started = time.perf_counter()
                    db.search(vector, 10)
                    elapsed = time.perf_counter() - started
                    with self._lock:
                        self.tally.reads += 1
                        self.tally.read_seconds.append(elapsed)
                except Exception:  # counted: a reader must never see one
                    with self._lock:
                        self.tally.read_errors += 1
                self._stop.wait(max(self.pause, due - time.monotonic()))

    def _write(self, writer: int, writers: int) -> None:
        rng = random.Random(1000 + writer)
        mine = [i for i in self.base if i % writers == writer]
        next_id, seq = FIRST_NEW_ID + writer, 0
        due = time.monotonic()
        db = self.store.connect()
        with httpx.Client(timeout=60) as client, closing(db):
            while not self._stop.is_set():
                due += self.write_gap
                seq += 1
                before = self._epoch
                op = rng.choice(("insert", "edit", "edit", "delete")) if mine else "insert"
                if op == "insert":
                    record_id, next_id = next_id, next_id + writers
                    mine.append(record_id)
                else:
                    record_id = rng.choice(mine)
                text = None
                if op != "delete":
                    text = f"{rng.choice(list(self.base.values()))[:200]} [w{writer}.{seq}]"
                try:
                    fingerprint = ""
                    started = time.perf_counter()
                    if text is None:
                        mine.remove(record_id)
                        db.delete(record_id)
                    else:
                        vector, fingerprint = self._embed(client, text)
                        started = time.perf_counter()
                        db.upsert(record_id, text, vector)
                    waited = time.perf_counter() - started
                except Exception:  # counted: a writer must never see one
                    with self._lock:
                        self.tally.refused += 1
                    continue
                after = self._epoch
                with self._lock:
                    self.tally.acknowledged += 1
                    self.tally.fingerprints.add(fingerprint) if fingerprint else None
                    if before != after or after % 2:
                        self.tally.writer_waits.append(waited)
                    self.writes[record_id] = Write(
                        text, before == after and after % 2 == 0, fingerprint
                    )
                self._stop.wait(max(self.pause, due - time.monotonic()))


@dataclass
class Outcome:
    tally: Tally
    lost: list[int]  # ids whose acknowledged last write, made clear of any switch, is not live
    lost_racing: list[int]  # ... whose last write overlapped a switch (Qdrant's window)
    wrong_space: int  # live rows whose vector is not the serving engine's
    wrong_space_clean: int  # ... whose last write overlapped no switch
    carried: dict[str, Any]  # what each switch carried over

    def lines(self) -> list[str]:
        t = self.tally
        ms = sorted(s * 1000 for s in t.read_seconds) or [0.0]
        return [
            f"reads {t.reads}, reader errors {t.read_errors}",
            f"read latency p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms,"
            f" max {ms[-1]:.1f} ms",
            f"longest writer wait during a switch {max(t.writer_waits, default=0) * 1000:.0f} ms"
            f" ({len(t.writer_waits)} writes overlapped a switch)",
            f"writes acknowledged {t.acknowledged} ({t.acknowledged / max(t.seconds, 1e-9):.1f}/s"
            f" over {t.seconds:.0f} s), refused {t.refused}, lost {len(self.lost)}"
            f" (and {len(self.lost_racing)} more whose last write overlapped a switch)",
            f"live rows in the wrong engine's space {self.wrong_space}"
            f" (of them written clear of any switch: {self.wrong_space_clean})",
            f"carried over: {self.carried}",
        ]


def fill(dsn: str, table: str, texts: list[str], baseline: str) -> dict[int, str]:
    """The pgvector table as an application made it: the baseline's vectors of ``texts``."""
    return fill_store(PgTable(dsn, table), texts, baseline)


def fill_store(store: AppStore, texts: list[str], baseline: str) -> dict[int, str]:
    """The store as an application made it: the baseline's vectors of ``texts``."""
    base = dict(enumerate(texts))
    with open_engine(baseline) as engine:
        vectors = engine.embed(texts)
    store.create(RecordBatch(tuple(base), tuple(texts), vectors))
    return base


def store_uri(dsn: str, table: str) -> str:
    """The guard's URI of ``table`` in the database of ``dsn`` (a postgresql:// URI)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}table={table}"


@contextmanager
def following(job_id: str, env: dict[str, str], cpus: set[int] | None = None) -> Iterator[str]:
    """`guard serve --follow JOB` on a free port (on ``cpus`` only, if given); yields its
    URL. It reads only the state database, so it runs as a process of its own whatever
    the store."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from guard.cli import main; main()", "serve", "--follow",
         job_id, "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()
    found = re.search(r" on (http://[\d.]+:\d+)", line)
    if found is None:
        process.kill()
        raise RuntimeError(f"guard serve --follow did not start: {line}{process.stderr.read()}")
    # Drained, so that its warnings never fill the pipe and stop it.
    threading.Thread(target=process.stderr.read, daemon=True).start()
    try:
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def kill_a_worker_midway(job_id: str, env: dict[str, str], batches: int) -> None:
    """`guard reindex run` in a process of its own, SIGKILLed once ``batches`` are done."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from guard.cli import main; main()", "reindex", "run", job_id,
         "--lease-seconds", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if api.status(job_id).batches.get("done", 0) >= batches:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()


def stop_a_worker_midway(job_id: str, batches: int) -> None:
    """A worker in a thread of this process, told to stop once ``batches`` are done: in
    Qdrant's local mode only this process may open the folder, so no worker process can
    be killed. It gives its unfinished batch back instead of leaving its lease to
    expire."""
    stop = threading.Event()
    failed: list[BaseException] = []

    def work() -> None:
        try:
            run_worker(job_id, lease_seconds=2, stop=stop)
        except BaseException as exc:  # re-raised below, in the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    deadline = time.monotonic() + 300
    while worker.is_alive() and time.monotonic() < deadline:
        if api.status(job_id).batches.get("done", 0) >= batches:
            break
        time.sleep(0.05)
    stop.set()
    worker.join()
    if failed:
        raise failed[0]


def migrate(
    store: AppStore,
    base: dict[int, str],
    *,
    baseline: str,
    candidate: str,
    batch_size: int,
    readers: int,
    writers: int,
    settle_seconds: float,
    state_env: dict[str, str],
    write_rate: float | None = None,
    read_rate: float | None = None,
    app_cpus: set[int] | None = None,
) -> Outcome:
    """The whole runbook under load; the live store checked against every acknowledged
    write at the end."""
    plan = api.plan(store.uri, candidate, batch_size=batch_size, baseline=baseline)
    carried: dict[str, Any] = {}
    with following(plan.job_id, state_env, app_cpus) as url:
        app = Application(
            store, url, base, readers=readers, writers=writers, write_rate=write_rate,
            read_rate=read_rate,
        )  # fmt: skip
        app.start()
        try:
            if store.in_process:
                stop_a_worker_midway(plan.job_id, batches=max(1, plan.batches // 3))
            else:
                kill_a_worker_midway(plan.job_id, state_env, batches=max(1, plan.batches // 3))
                time.sleep(2.5)  # the killed worker's leases expire
            api.run(plan.job_id)
            carried["catch_up"] = api.catch_up(plan.job_id).as_dict()
            for step in ("cutover", "rollback", "cutover"):
                time.sleep(settle_seconds)
                with app.switching():
                    switched = getattr(api, step)(plan.job_id)
                carried[step] = switched.carried.as_dict() if switched.carried else None
                if carried[step] is not None:
                    carried[step]["held"] = switched.held  # re-embedded while writers waited
                if step == "rollback" and store.kind == "qdrant":
                    # Writes that landed in the target between the rollback's last
                    # comparison and the alias move stay there, embedded by the baseline
                    # (README): the runbook's catch-up after a rollback takes them out.
                    carried["catch_up_after_rollback"] = api.catch_up(plan.job_id).as_dict()
            time.sleep(settle_seconds)
        finally:
            tally = app.stop()
    for counts in carried.values():
        if counts:
            counts.pop("job_id", None)
    with closing(store.connect()) as db:
        held = db.held()
    lost, wrong, wrong_clean = judge_held(held, base, app.writes, candidate)
    racing = [i for i in lost if i in app.writes and not app.writes[i].clean]
    clear = [i for i in lost if i not in racing]
    return Outcome(tally, clear, racing, wrong, wrong_clean, carried)


def judge(
    dsn: str, table: str, base: dict[int, str], writes: dict[int, Write], engine_uri: str
) -> tuple[list[int], int, int]:
    """``judge_held`` on the pgvector table ``table``."""
    with closing(SqlConnection(dsn, table)) as db:
        held = db.held()
    return judge_held(held, base, writes, engine_uri)


def judge_held(
    held: Held, base: dict[int, str], writes: dict[int, Write], engine_uri: str
) -> tuple[list[int], int, int]:
    """(ids whose acknowledged last write is not what the store holds, rows whose vector
    is not ``engine_uri``'s embedding of their text, and of those, the ones written clear
    of any switch)."""
    expected: dict[int, str | None] = {**base, **{i: w.text for i, w in writes.items()}}
    lost = [i for i, text in expected.items() if (held.get(i) or (None,))[0] != text]
    lost += [i for i in held if i not in expected]
    ids = [i for i in held if held[i][0]]
    with open_engine(engine_uri) as engine:
        fresh = engine.embed([str(held[i][0]) for i in ids])
    stored = np.stack([held[i][1] for i in ids])
    cosines = np.einsum("ij,ij->i", stored, fresh) / (
        np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1)
    )
    wrong = [i for i, c in zip(ids, cosines, strict=True) if c < SPACE_COSINE]
    return lost, len(wrong), sum(1 for i in wrong if i not in writes or writes[i].clean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        choices=("pgvector", "qdrant"),
        default="pgvector",
        help="qdrant: the server at QDRANT_URL, else local mode in a temporary folder",
    )
    parser.add_argument("--records", type=int, default=1400)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between steps")
    parser.add_argument(
        "--write-rate", type=float, default=25.0, help="the application's writes per second"
    )
    parser.add_argument(
        "--read-rate", type=float, default=10.0, help="the application's reads per second"
    )
    parser.add_argument(
        "--shared-cpus",
        action="store_true",
        help="run the application's embedder and the migration on the same CPUs",
    )
    args = parser.parse_args()

    from guard.corpus import demo_corpus
    from guard.logs import configure
    from guard.models import build_demo_models
    from guard.paths import models_dir
    from guard.pgserver import embedded_dsn

    configure(verbose=1 if os.environ.get("GUARD_BENCH_VERBOSE") else 0)
    f16 = build_demo_models(models_dir())["F16"]
    baseline, candidate = f"llamacpp:{f16}?pooling=cls", f"llamacpp:{f16}"
    folder = Path(tempfile.mkdtemp(prefix="guard-live-"))
    dsn = embedded_dsn(folder / "pg")
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("DROP DATABASE IF EXISTS guard_state")
        db.execute("CREATE DATABASE guard_state")
    state = make_conninfo(dsn, dbname="guard_state")
    os.environ["GUARD_STATE_DSN"] = state
    store: AppStore = PgTable(dsn, "docs")
    if args.store == "qdrant":
        # /dev/shm where there is one: local mode syncs every point to SQLite on its own.
        memory = "/dev/shm" if Path("/dev/shm").is_dir() else None
        location = os.environ.get("QDRANT_URL") or tempfile.mkdtemp(prefix="guard-q-", dir=memory)
        store = QdrantAliased(location, f"docs_{uuid.uuid4().hex[:6]}")
    texts = [text[:300] for text in demo_corpus()[: args.records]]
    base = fill_store(store, texts, baseline)
    cpus = sorted(os.sched_getaffinity(0))
    app_cpus = None
    if not args.shared_cpus and len(cpus) >= 2:
        app_cpus = set(cpus[: len(cpus) // 2])
        os.sched_setaffinity(0, set(cpus) - app_cpus)  # the migration, and what it starts
    outcome = migrate(
        store, base, baseline=baseline, candidate=candidate, batch_size=args.batch_size,
        readers=args.readers, writers=args.writers, settle_seconds=args.settle,
        state_env={"GUARD_STATE_DSN": state}, write_rate=args.write_rate,
        read_rate=args.read_rate, app_cpus=app_cpus,
    )  # fmt: skip
    split = (
        f"application's embedder on CPUs {sorted(app_cpus)}, migration on the other"
        f" {len(cpus) - len(app_cpus)}"
        if app_cpus
        else f"application and migration sharing {len(cpus)} CPUs"
    )
    kind = store.kind
    if isinstance(store, QdrantAliased):
        kind += f" {'local mode' if store.in_process else 'server'}, alias {store.alias}"
    print(
        f"live migration of {len(base)} records ({kind}), {args.readers} readers,"
        f" {args.writers} writers; {split}"
    )
    for line in outcome.lines():
        print(line)
    if isinstance(store, QdrantAliased) and store.folder is None:
        store.drop()


if __name__ == "__main__":
    main()
