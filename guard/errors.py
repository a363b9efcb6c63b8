"""The guard's exceptions: one tree, mapped to exit codes in one place (guard.cli).

    GuardError                  anything the guard can explain in one line
     ├── ConfigError            bad flags, URIs, options or config files
     ├── StoreError             a vector store is unreachable, missing, empty or malformed
     │    └── StoreConnectionError      its server did not answer: refused, cut, shut down
     │         └── StoreUnreachable     ... and `reindex run` stopped waiting for it (exit 6)
     ├── EngineError            an embedding engine failed or answered nonsense
     │    └── TextTooLongError  a text over the token limit, with truncate=false
     └── ReindexError           a re-index job cannot proceed
          └── StateConnectionError      the state database did not answer
               └── StateUnreachable     ... and `reindex run` stopped waiting for it (exit 7)

A connection error may pass (a server restarting): `guard reindex run` waits for it up to
``--max-outage`` and goes on. Everywhere else it is an error like any other (exit 2, as
``guard check``'s contract says); the two ``Unreachable`` errors are the run giving up,
or a server it never reached, with exit codes of their own so a pipeline can tell "try
again later" from a broken job.

Messages never contain secrets: every message (and URI) goes through
``guard.secrets.redact`` here, whoever builds it, and the CLI prints only ``str(error)``.
"""

from __future__ import annotations

from typing import Any

from guard.secrets import redact


class GuardError(Exception):
    """Base of every error the guard reports to a user."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class ConfigError(GuardError):
    """Usage, URI, option or configuration problem."""


class StoreError(GuardError):
    """A vector store cannot be read or written as asked."""

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(f"{message} [{uri}]" if uri else message)
        self.uri = redact(uri) if uri else uri


class StoreConnectionError(StoreError):
    """The store's server did not answer (refused, reset, shut down): maybe for a moment.
    ``server`` is its host:port (never a password); ``reason`` the driver's one line."""

    def __init__(
        self, message: str, *, uri: str | None = None, server: str = "?", reason: str = ""
    ) -> None:
        super().__init__(message, uri=uri)
        self.server = redact(server)
        self.reason = redact(reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt(self)


class StoreUnreachable(StoreConnectionError):
    """A re-index worker gave up on the store: down past ``--max-outage``, or not
    reachable when the run began."""

    exit_code = 6


class EngineError(GuardError):
    """An embedding engine failed or returned unusable output."""

    def __init__(self, message: str, *, engine: str | None = None) -> None:
        super().__init__(f"{message} [{engine}]" if engine else message)
        self.engine = redact(engine) if engine else engine


class TextTooLongError(EngineError):
    """A text is longer than the engine's token limit and ``truncate=false`` forbids
    cutting it: the text's fault, not the engine's, so a re-index skips it with a reason
    instead of retrying."""


class ReindexError(GuardError):
    """A re-index job cannot be planned, run, verified or switched."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(f"{message} [job {job_id}]" if job_id else message)
        self.job_id = job_id


class StateConnectionError(ReindexError):
    """The state database did not answer (refused, reset, shut down): maybe for a moment.
    ``server`` is its host:port (never a password); ``reason`` the driver's one line."""

    def __init__(
        self, message: str, *, server: str = "?", reason: str = "", job_id: str | None = None
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.server = redact(server)
        self.reason = redact(reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt(self)


class StateUnreachable(StateConnectionError):
    """A re-index worker gave up on the state database: down past ``--max-outage``, or
    not reachable when the run began."""

    exit_code = 7


def _rebuilt(error: GuardError) -> tuple[Any, ...]:
    """Pickle as the message and the attributes (a Ray actor's error reaches the driver
    so): the message already holds the URI or job id, so they are not appended again."""
    return (type(error), (str(error),), dict(vars(error)))
