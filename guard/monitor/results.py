"""The values one watch run produces: what run.py measures, history.py records,
alerts.py and metrics.py report. Kept apart so that those modules import only this one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Literal

from guard.core.population import PopulationDrift

WatchStatus = Literal["ok", "drift", "error"]


@dataclass(frozen=True)
class Watermark:
    """Where the next run's "written since" starts: the largest integer id seen, or (with
    other ids) the ids seen. Saved only with the run that saw them (``History.record``),
    so a run that fails or dies before it is recorded leaves them new for the next."""

    max_int_id: int | None
    seen_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampleCheck:
    """The per-record comparison of one run (metrics are None when dimensions differ)."""

    n: int
    failures: int
    cosine_p1: float | None
    cosine_median: float | None
    bound_upper: float | None
    bound_lower: float | None
    overlap: float | None
    drifted: bool
    mixed_store: str | None = None  # the evidence, when part of the store fails as a group


@dataclass(frozen=True)
class WatchRun:
    """One run of one watch, as recorded, alerted on and served as metrics."""

    watch: str
    store: str  # redacted
    engine: str  # redacted
    status: WatchStatus
    started_at: datetime
    finished_at: datetime
    seed: int
    sample: SampleCheck | None
    new_records: int | None  # None on the first run, or when the run failed before
    population: PopulationDrift | None
    reasons: tuple[str, ...]
    error: str | None = None
    watermark: Watermark | None = None  # saved with the run; None when it failed
    # The embedding cache's share of the sample: enabled, hits, misses (None: failed).
    cache: dict[str, object] | None = field(default=None, hash=False)

    def as_dict(self) -> dict[str, object]:
        # The fields in order (sample and population as dicts), except that the status
        # comes second and the watermark, saved with the run, is left out.
        fields: dict[str, object] = {"watch": self.watch, "status": self.status} | asdict(self)
        del fields["watermark"]
        return fields | {
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "reasons": list(self.reasons),
        }
