"""The guard's exceptions: one tree, mapped to exit codes in one place (guard.cli).

    GuardError                  anything the guard can explain in one line
     ├── ConfigError            bad flags, URIs, options or config files
     ├── StoreError             a vector store is unreachable, missing, empty or malformed
     ├── EngineError            an embedding engine failed or answered nonsense
     │    └── TextTooLongError  a text over the token limit, with truncate=false
     └── ReindexError           a re-index job cannot proceed

Messages never contain secrets: every message (and URI) goes through
``guard.secrets.redact`` here, whoever builds it, and the CLI prints only ``str(error)``.
"""

from __future__ import annotations

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
