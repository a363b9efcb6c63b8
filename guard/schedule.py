"""A watch's `schedule`: `every 15m` (s, m, h, d) or a five-field cron line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

_EVERY = re.compile(r"^every\s+(\d+)\s*(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Schedule:
    """Either an interval in seconds or a cron line (exactly one is set)."""

    text: str
    interval_seconds: int | None = None
    cron: str | None = None

    def trigger(self, timezone: tzinfo) -> BaseTrigger:
        if self.interval_seconds is not None:
            return IntervalTrigger(seconds=self.interval_seconds, timezone=timezone)
        return CronTrigger.from_crontab(str(self.cron), timezone=timezone)


def parse_schedule(text: str) -> Schedule:
    """:raises ValueError: neither `every N<unit>` nor a valid five-field cron line."""
    cleaned = " ".join(text.split())
    every = _EVERY.match(cleaned.lower())
    if every:
        seconds = int(every[1]) * _UNIT_SECONDS[every[2]]
        if seconds <= 0:
            raise ValueError(f"schedule interval must be positive: {text!r}")
        return Schedule(cleaned, interval_seconds=seconds)
    if len(cleaned.split(" ")) != 5:
        raise ValueError(
            f"schedule must be 'every N' with s, m, h or d, or a five-field cron line: {text!r}"
        )
    CronTrigger.from_crontab(cleaned)  # raises ValueError on a bad field
    return Schedule(cleaned, cron=cleaned)
