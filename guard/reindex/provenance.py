"""Pure helpers of the re-index: texts worth embedding, id ranges, job ids, time windows.

Target records carry nothing of the guard's (frameworks such as Haystack show every
payload key and column to the application): a target record is a copy of its source
record, text included, written only by the job's worker with the job's engine, so
catch-up and verify compare its text with the source's. The state database keeps the
engine fingerprint's hash per job and the text hash of each skipped record.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import time

from guard.errors import ConfigError
from guard.records import RecordId
from guard.streams import id_key


def has_text(text: str | None) -> bool:
    return bool(text and text.strip())


def in_range(record_id: RecordId, last_id: RecordId | None) -> bool:
    """Whether an id falls at or before a batch's inclusive upper bound."""
    return last_id is None or id_key(record_id) <= id_key(last_id)


def short_id(job_id: uuid.UUID | str) -> str:
    return uuid.UUID(str(job_id)).hex[:8]


@dataclass(frozen=True)
class Window:
    """Hours of the day when workers may run, in the worker's local time; may wrap
    midnight (22:00-06:00)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window:
        try:
            first, second = text.split("-")
            start, end = time.fromisoformat(first.strip()), time.fromisoformat(second.strip())
        except ValueError:
            raise ConfigError(f"window must be HH:MM-HH:MM, not {text!r}") from None
        if start == end:
            raise ConfigError(f"window {text!r} is empty; leave it out to run at any time")
        return cls(start, end)

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"
