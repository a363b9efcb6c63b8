"""Where a re-index job's two sides live: the job's store, and after a cutover the
names that hold the source's and the target's data (the served name holds the target).

Shared by the switch (which moves the names) and the verification (which reads both
sides wherever they are now).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from guard.errors import ReindexError
from guard.reindex.jobs import Job
from guard.stores import ReindexStore, open_reindex


@contextmanager
def job_store(job: Job) -> Iterator[ReindexStore]:
    """The job's store; its refusals name the job."""
    store = open_reindex(job.source_uri)
    try:
        yield store
    except ReindexError as exc:
        if exc.job_id:
            raise
        raise ReindexError(str(exc), job_id=job.short) from exc
    finally:
        store.close()


def locations(job: Job) -> tuple[str, str]:
    """(source URI, target URI) where their data is now: after a cutover the source's
    name (alias or table) serves the target, and the old data has another name."""
    if job.state != "cut_over" or not job.cutover:
        return job.source_uri, job.target_uri
    with job_store(job) as store:
        return store.locations(job.cutover, job.target_uri)
