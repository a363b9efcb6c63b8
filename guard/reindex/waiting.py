"""How a re-index worker waits: for a server that went away (within ``--max-outage``),
and until it is told to stop.

``Servers`` wraps each step a worker's stage takes on the store or the state database:
a lost connection (guard.pgerrors) pauses the stage as ``Patience`` says and tries the
step again on a fresh connection, a store scan starting again after the last id read.
All of a worker's threads share one ``Outage`` per side, so the bound counts the
server's downtime, and the outage and the recovery are logged once each. A server that
never answered in this run is not waited for: a wrong address is not an outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from guard.errors import (
    GuardError,
    StateConnectionError,
    StateUnreachable,
    StoreConnectionError,
    StoreUnreachable,
)
from guard.logs import get_logger
from guard.pgerrors import lost_connection
from guard.reindex.patience import Patience

if TYPE_CHECKING:
    from guard.records import RecordBatch, RecordId
    from guard.reindex.ledger import Ledger
    from guard.stores import VectorStore

log = get_logger(__name__)

T = TypeVar("T")
Side = Literal["store", "state"]
_NAMES: dict[Side, str] = {"store": "store", "state": "state database"}

CALLER_POLL_S = 0.1  # how soon a worker sees its caller's stop event set


class Halt(threading.Event):
    """A worker's stop: set by the worker itself (a signal, a failed stage) or by its
    caller's event, which the worker only reads. Finishing a job must not set an event
    its caller owns: the guard service passes one event to every job it runs."""

    def __init__(self, caller: threading.Event | None = None) -> None:
        super().__init__()
        self._caller = caller

    def is_set(self) -> bool:
        return super().is_set() or (self._caller is not None and self._caller.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        if self._caller is None:
            return super().wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = CALLER_POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            super().wait(min(left, CALLER_POLL_S))
        return True


class Stopping(Exception):
    """Raised inside a stage waiting for a server when the worker is told to stop."""


class Outage:
    """One side's outage as all of a worker's threads see it: ``failed`` starts the
    clock at the first failure any of them meets, ``recovered`` stops it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self.reached = False  # answered at least once in this run

    def failed(self) -> tuple[float, bool]:
        """(seconds since the outage began, whether it began with this call)."""
        now = self._clock()
        with self._lock:
            began = self._since is None
            if self._since is None:
                self._since = now
            return now - self._since, began

    def recovered(self) -> float | None:
        """The outage's length when this call ended it; None when there was none."""
        now = self._clock()
        with self._lock:
            self.reached = True
            since, self._since = self._since, None
        return None if since is None else now - since


class Servers:
    """The store and the state database as one worker's stages reach them."""

    def __init__(self, patience: Patience, stop: threading.Event, job: str, state: str) -> None:
        self.patience = patience
        self.stop = stop
        self.job = job  # the job's short id, for messages
        self.state_server = state  # host:port of the state database
        self.outages: dict[Side, Outage] = {"store": Outage(), "state": Outage()}
        self.outages["state"].reached = True  # the worker read its job from it

    def on_state(
        self,
        ledger: Ledger | None,
        call: Callable[..., T],
        *args: Any,
        halt: threading.Event | None = None,
    ) -> T:
        """``call(*args)`` on the state database (through ``ledger``, reconnected after a
        lost connection), tried again while the database is away. ``halt`` (default:
        the worker's stop) ends the wait with ``Stopping``. The call must reach the
        database (not return early on empty input): its success ends the outage."""
        tries = 0
        while True:
            try:
                result = call(*args)
            except Exception as exc:
                if isinstance(exc, StateConnectionError) and not isinstance(exc, StateUnreachable):
                    server, reason = exc.server, exc.reason
                elif lost_connection(exc):
                    server, reason = self.state_server, _one_line(exc)
                else:
                    raise
                if ledger is not None:
                    ledger.drop()  # the next call reconnects
                tries += 1
                self._wait_out("state", server, reason, tries, halt or self.stop)
                continue
            self._recovered("state")
            return result

    def on_store(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on a store, tried again while its server is away (a store
        connects afresh on the call after a lost connection). As with ``on_state``, a
        call must reach the server: its success ends the outage."""
        tries = 0
        while True:
            try:
                result = call(*args)
            except StoreConnectionError as exc:
                if isinstance(exc, StoreUnreachable):
                    raise
                tries += 1
                self._wait_out("store", exc.server, exc.reason, tries, self.stop)
                continue
            self._recovered("store")
            return result

    def pages(
        self, source: VectorStore, after: RecordId | None, size: int
    ) -> Iterator[RecordBatch]:
        """``source.scan`` from ``after``; when the store goes away, the scan starts
        again after the last id read, once the store is back."""
        pages = source.scan(batch_size=size, after=after, with_payload=True)
        tries = 0
        while True:
            try:
                page = next(pages, None)
            except StoreConnectionError as exc:
                if isinstance(exc, StoreUnreachable):
                    raise
                tries += 1
                self._wait_out("store", exc.server, exc.reason, tries, self.stop)
                pages = source.scan(batch_size=size, after=after, with_payload=True)
                continue
            tries = 0
            self._recovered("store")
            if page is None:
                return
            if len(page):
                after = page.ids[-1]
            yield page

    def _wait_out(
        self, side: Side, server: str, reason: str, tries: int, halt: threading.Event
    ) -> None:
        """Pause before the next try, or give up: past the bound, or on a server that
        never answered in this run. The first failure on a server that did answer is
        retried at once: a connection the server dropped in a restart long over is
        replaced without an outage being declared."""
        outage, what = self.outages[side], _NAMES[side]
        if tries == 1 and outage.reached:
            return
        if not outage.reached:
            raise self._unreachable(
                side,
                f"cannot reach the {what} at {server}: {reason} (not waited for: not "
                "reached since the run began)",
                server,
                reason,
            )
        waited, began = outage.failed()
        if began:
            log.warning(
                f"the {what} went away; waiting for it", job=self.job, server=server,
                error=reason, max_outage=self.patience.max_outage,
            )  # fmt: skip
        pause = self.patience.pause(tries - 1, waited)
        if pause is None:
            raise self._unreachable(
                side,
                f"the {what} at {server} stayed unreachable for {waited:.0f} s (--max-outage "
                f"{self.patience.max_outage:g}): {reason}; unfinished batches go back to the "
                "ledger: run again when it is back",
                server,
                reason,
            )
        if halt.wait(pause):
            raise Stopping

    def _unreachable(self, side: Side, message: str, server: str, reason: str) -> GuardError:
        if side == "store":
            return StoreUnreachable(message, server=server, reason=reason)
        return StateUnreachable(message, server=server, reason=reason, job_id=self.job)

    def _recovered(self, side: Side) -> None:
        waited = self.outages[side].recovered()
        if waited is not None:
            log.warning(
                f"the {_NAMES[side]} is back; going on", job=self.job, waited_s=round(waited, 1)
            )


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
