"""vector-migration-guard: check an embedding-engine switch against the stored vectors.

The Python API (guard.api), beside the ``guard`` command line that calls it::

    import guard

    report = guard.check(store="pgserver:./pg?table=docs", candidate="llamacpp:./m.gguf")
    if report.verdict == "reindex":
        job = guard.plan(store="pgserver:./pg?table=docs", candidate="llamacpp:./m.gguf")
        guard.run(job.job_id)
        if guard.verify(job.job_id).ok:
            guard.cutover(job.job_id)

Every error is a ``guard.GuardError`` carrying the command line's ``exit_code``.
"""

from guard.api import (
    catch_up,
    check,
    cleanup,
    compare,
    cutover,
    pause,
    plan,
    resume,
    rollback,
    run,
    status,
    verify,
)
from guard.errors import (
    ConfigError,
    EngineError,
    GuardError,
    ReindexError,
    StateUnreachable,
    StoreError,
    StoreUnreachable,
    TextTooLongError,
)
from guard.version import __version__

__all__ = [
    "ConfigError",
    "EngineError",
    "GuardError",
    "ReindexError",
    "StateUnreachable",
    "StoreError",
    "StoreUnreachable",
    "TextTooLongError",
    "__version__",
    "catch_up",
    "check",
    "cleanup",
    "compare",
    "cutover",
    "pause",
    "plan",
    "resume",
    "rollback",
    "run",
    "status",
    "verify",
]
