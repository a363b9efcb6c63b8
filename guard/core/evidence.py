"""What the diagnosis rules look at: the comparison, the candidate's self-checks, the
records re-measured with other settings, and the records' ids and timestamps."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from guard.core.cosines import Comparison, Floats, Ints, rowwise_cosine
from guard.core.findings import Finding, Setting, SettingValue
from guard.records import RecordId


@dataclass(frozen=True, eq=False)
class Alternative:
    """The mismatching records re-measured with one changed candidate setting.

    ``indices`` are rows of the Comparison; ``cosines`` (and optionally
    ``norm_ratios``) are the stored vectors of those rows against the candidate's new
    vectors. Re-measure every mismatching row or at least ``MIN_REMEASURED`` of them;
    matching rows may be added as controls, and must then stay above T too.
    """

    setting: Setting
    indices: Ints
    cosines: Floats
    norm_ratios: Floats | None = None

    @classmethod
    def measure(
        cls,
        setting: Setting,
        indices: npt.ArrayLike,
        stored: npt.ArrayLike,
        candidate: npt.ArrayLike,
    ) -> Alternative:
        """Build one from the stored rows and the candidate's re-embedded rows."""
        rows = np.asarray(indices, dtype=np.int64)
        cosines, _ = rowwise_cosine(stored, candidate)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.linalg.norm(np.asarray(candidate, np.float64), axis=1) / np.linalg.norm(
                np.asarray(stored, np.float64), axis=1
            )
        if rows.shape != cosines.shape:
            raise ValueError(f"{rows.size} indices for {cosines.size} re-measured rows")
        return cls(dict(setting), rows, cosines, ratios)

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={_value(value)}" for key, value in self.setting.items())


@dataclass(frozen=True, eq=False)
class RecordTimes:
    """One timestamp-like field of the compared records, as epoch seconds (NaN: none)."""

    field: str
    seconds: Floats

    @classmethod
    def from_payloads(cls, payloads: Sequence[Mapping[str, Any]]) -> RecordTimes | None:
        """The first field named like a timestamp (``created_at``, ``metadata.date``...)
        that at least half of the records hold as a datetime, an ISO string or epoch
        seconds/milliseconds; one level of nesting is looked into."""
        flat = [_flatten(payload) for payload in payloads]
        names = dict.fromkeys(key for payload in flat for key in payload if _TIME_NAME.search(key))
        for name in names:
            seconds = np.array([_seconds(p.get(name)) for p in flat], dtype=np.float64)
            if payloads and np.count_nonzero(np.isfinite(seconds)) * 2 >= len(payloads):
                return cls(name, seconds)
        return None


_TIME_NAME = re.compile(
    r"(?i)(^|[._])(created|updated|modified|inserted|ingested|indexed|written|embedded)"
    r"(_?(at|on|time|ts|date))?$|(^|[._])(timestamp|ts|date|datetime|time)$|_(at|ts)$"
)


def _flatten(payload: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{sub}": inner for sub, inner in value.items()})
        else:
            flat[key] = value
    return flat


def _seconds(value: Any) -> float:
    """Epoch seconds of a datetime, date, ISO string or plausible epoch number; NaN else."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    if isinstance(value, str):
        try:
            return _seconds(datetime.fromisoformat(value))
        except ValueError:
            return math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 1e8 < value < 1e11:
            return float(value)
        if 1e11 <= value < 1e14:
            return float(value) / 1000.0
    return math.nan


@dataclass(frozen=True, eq=False)
class Evidence:
    """Everything the rules look at.

    ``comparison`` is None when the dimensions differ. The store's distance and the
    token counts travel inside the Comparison. ``candidate_settings`` are the
    candidate's current settings from its fingerprint (e.g. ``{"max_tokens": 512}``),
    as far as known.
    """

    comparison: Comparison | None
    threshold: float
    stored_dims: int
    candidate_dims: int
    selfcheck: tuple[Finding, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    candidate_settings: Setting = field(default_factory=dict)
    ids: tuple[RecordId, ...] = ()
    times: RecordTimes | None = None

    def mismatching(self) -> Ints:
        """Rows below the threshold: the records alternatives should re-measure."""
        if self.comparison is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.comparison.below(self.threshold)).astype(np.int64)


def _value(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)
