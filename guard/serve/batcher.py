"""One thread owns the engine and embeds many requests' texts in one call.

llama.cpp is not thread-safe, and one call on 16 texts costs far less than 16 calls on
one: requests wait in a bounded queue, and the engine thread takes every request
waiting (up to ``max_batch`` texts), embeds their texts together and hands each request
its own rows. Nothing waits on purpose: at idle a request is a batch of one; under load
the queue fills while the engine works, and the next batch takes all of it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from guard import faults
from guard.engines import EmbeddingEngine
from guard.records import Vectors

log = structlog.get_logger(__name__)


class Overloaded(Exception):
    """The queue of waiting requests is full: the client should retry later."""


@dataclass(frozen=True)
class Embedded:
    """A request's rows and the tokens of each of its texts (for ``usage``)."""

    rows: Vectors
    tokens: list[int]


Done = Callable[[Embedded | Exception], None]


@dataclass(frozen=True)
class _Job:
    texts: Sequence[str]
    done: Done


@dataclass(frozen=True)
class BatchStats:
    """What one engine call did, for the metrics."""

    texts: int
    requests: int
    seconds: float


class Batcher:
    """The engine thread and its queue; ``embed`` is what request handlers await."""

    def __init__(
        self,
        engine: EmbeddingEngine,
        *,
        max_batch: int,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] = lambda _stats: None,
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._held: _Job | None = None  # taken from the queue but over the batch's size
        self._thread = threading.Thread(target=self._run, name="guard-serve-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def depth(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        """Let the thread finish what is queued, then end it."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def submit(self, texts: Sequence[str], done: Done) -> None:
        """Queue one request; ``done`` is called on the engine thread with its result."""
        try:
            self._queue.put_nowait(_Job(texts, done))
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are already waiting") from None

    async def embed(self, texts: Sequence[str]) -> Embedded:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Embedded] = loop.create_future()

        def done(result: Embedded | Exception) -> None:
            loop.call_soon_threadsafe(_settle, future, result)

        self.submit(texts, done)
        return await future

    def _run(self) -> None:
        while True:
            first = self._held or self._queue.get()
            self._held = None
            if first is None:
                return
            faults.step("serve_batch")  # tests hold the thread here while requests queue up
            jobs, count, stopping = [first], len(first.texts), False
            while count < self._max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                if count + len(job.texts) > self._max_batch:
                    self._held = job
                    break
                jobs.append(job)
                count += len(job.texts)
            self._embed(jobs)
            if stopping:
                return

    def _embed(self, jobs: list[_Job]) -> None:
        """One engine call for all ``jobs``; if it fails, each job alone, so that one
        request's bad text (over the token limit) fails that request only."""
        texts = [text for job in jobs for text in job.texts]
        started = time.perf_counter()
        try:
            rows = self._engine.embed(texts)
            tokens = self._engine.count_tokens(texts)
        except Exception as exc:  # the engine's error goes to the requests, never up
            if len(jobs) > 1:
                for job in jobs:
                    self._embed([job])
                return
            log.warning("serve_engine_failed", error=str(exc), texts=len(texts))
            jobs[0].done(exc)
            return
        self._on_batch(BatchStats(len(texts), len(jobs), time.perf_counter() - started))
        start = 0
        for job in jobs:
            end = start + len(job.texts)
            job.done(Embedded(np.ascontiguousarray(rows[start:end]), list(tokens[start:end])))
            start = end


def _settle(future: asyncio.Future[Embedded], result: Embedded | Exception) -> None:
    if future.done():  # the client went away and the handler was cancelled
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
