"""From measurements and findings to one verdict with an exit code.

The order of the rules is the contract of design.md; findings count by their ``role``
(guard.core.findings), never by their cause:
1. a ``broken_candidate`` finding: ``reject_candidate`` (4): the candidate itself is broken;
2. an ``other_space`` finding: ``reindex`` (1): no setting helps;
3. a finding whose setting explains every mismatch: ``fix_config`` (3);
4. the bound's lower share above the allowed share, overlap@k below the minimum (when
   measured) or a ``blocks_approval`` finding: ``reindex`` (1), with the
   ``supports_reindex`` evidence among the reasons;
5. a bound that has not decided when the sample is spent: ``undecided`` (5), with what
   was seen and the sample that would decide; never a pass (a ``supports_reindex``
   finding makes it a ``reindex``: part of the store is known to need one);
6. else (the upper share within the allowed share): ``approve`` (0) (a
   ``supports_reindex`` finding alone does not block: its group is within the allowed
   share).
``error`` (2) belongs to the shell. The policy never approves when the bound exceeds
the allowed share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from guard.core.findings import Finding, Role
from guard.core.stats import Bound
from guard.errors import ConfigError

VerdictName = Literal["approve", "reindex", "error", "fix_config", "reject_candidate", "undecided"]
EXIT_CODES: Mapping[VerdictName, int] = {
    "approve": 0,
    "reindex": 1,
    "error": 2,
    "fix_config": 3,
    "reject_candidate": 4,
    "undecided": 5,
}


@dataclass(frozen=True)
class Thresholds:
    """What counts as safe. Defaults suit a switch that must not change search results.

    min_cosine      a record matches when its stored and candidate vectors agree this well
    allowed_share   the largest share of records below min_cosine that still approves
    confidence      of the bound on that share (split over the sampling rounds)
    min_overlap     mean share of the stored top-k the candidate's top-k must find
    overlap_k       k of that top-k
    initial_sample  records in the first round; each further round doubles the sample
    max_sample      records in the last round
    min_recall_ratio  with queries: least recall@k of the switch over recall@k as stored
                    (lower confidence bound) that still approves
    """

    min_cosine: float = 0.99
    allowed_share: float = 0.01
    confidence: float = 0.99
    min_overlap: float = 0.9
    overlap_k: int = 10
    initial_sample: int = 100
    max_sample: int = 2000
    min_recall_ratio: float = 0.98

    def __post_init__(self) -> None:
        checks = {
            "min_cosine": -1.0 <= self.min_cosine <= 1.0,
            "allowed_share": 0.0 <= self.allowed_share < 1.0,
            "confidence": 0.0 < self.confidence < 1.0,
            "min_overlap": 0.0 <= self.min_overlap <= 1.0,
            "overlap_k": self.overlap_k >= 1,
            "initial_sample": self.initial_sample >= 1,
            "max_sample": self.max_sample >= self.initial_sample,
            "min_recall_ratio": 0.0 <= self.min_recall_ratio <= 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(f"threshold out of range: {values}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Thresholds:
        """From a config table (``[watch.thresholds]``); unknown keys are an error."""
        defaults = cls()
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown thresholds: {', '.join(unknown)}")
        for name, value in values.items():
            wanted = (int,) if isinstance(getattr(defaults, name), int) else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted):
                raise ConfigError(f"threshold {name} must be a number, got {value!r}")
        return cls(**values)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    name: VerdictName
    exit_code: int
    reasons: tuple[str, ...]

    @classmethod
    def of(cls, name: VerdictName, *reasons: str) -> Verdict:
        return cls(name, EXIT_CODES[name], reasons)


def decide(
    bound: Bound | None,
    findings: Sequence[Finding],
    thresholds: Thresholds,
    overlap: float | None = None,
) -> Verdict:
    """The verdict for one check; ``bound`` is None when no comparison was possible.

    :raises ValueError: the bound was computed for other thresholds than these.
    """
    if bound is not None and (
        bound.threshold,
        bound.allowed_share,
        bound.confidence,
    ) != (thresholds.min_cosine, thresholds.allowed_share, thresholds.confidence):
        raise ValueError("the bound was computed with other thresholds than the policy's")

    broken = _reasons(findings, "broken_candidate")
    if broken:
        return Verdict.of("reject_candidate", *broken)

    hopeless = _reasons(findings, "other_space")
    if hopeless:
        return Verdict.of("reindex", *hopeless)

    fixes = [f for f in findings if f.fixes_by_setting]
    if fixes:
        return Verdict.of("fix_config", *(f"{f.cause}: {f.suggestion}" for f in fixes))

    if bound is None:
        return Verdict.of("reindex", "no comparison was possible")
    decision = bound.decision
    blockers = []
    if decision == "fail":
        blockers.append(
            f"{bound_sentence(bound)}, more than the allowed {_percent(thresholds.allowed_share)}"
        )
    if overlap is not None and overlap < thresholds.min_overlap:
        blockers.append(
            f"overlap@{thresholds.overlap_k} is {overlap:.3f}, below {thresholds.min_overlap:g}"
        )
    blockers += _reasons(findings, "blocks_approval")
    if blockers:
        return Verdict.of("reindex", *blockers, *_reasons(findings, "supports_reindex"))
    if decision == "continue":
        supporting = _reasons(findings, "supports_reindex")
        if supporting:
            return Verdict.of("reindex", *supporting, undecided_sentence(bound))
        return Verdict.of("undecided", undecided_sentence(bound))
    reasons = [bound_sentence(bound)]
    if overlap is not None:
        reasons.append(f"overlap@{thresholds.overlap_k} is {overlap:.3f}")
    return Verdict.of("approve", *reasons)


def _reasons(findings: Sequence[Finding], role: Role) -> list[str]:
    return [f.reason for f in findings if f.role == role]


@dataclass(frozen=True)
class RecallRatio:
    """Recall@k of a switch without re-indexing against recall@k as stored, on the same
    queries; ``lower`` is the ratio's lower confidence bound (None: nothing as stored)."""

    k: int
    queries: int
    switch: float
    as_stored: float
    lower: float | None
    confidence: float
    synthetic: bool


def recall_veto(verdict: str, ratio: RecallRatio, thresholds: Thresholds) -> Finding | None:
    """A ``recall_loss`` finding when an approval would lose more recall than
    ``min_recall_ratio`` allows; only an approval can be vetoed."""
    if verdict != "approve" or ratio.lower is None:
        return None
    if ratio.lower >= thresholds.min_recall_ratio:
        return None
    source = "synthetic queries from stored texts" if ratio.synthetic else "the given queries"
    return Finding(
        "recall_loss",
        f"on {ratio.queries} {source}, recall@{ratio.k} is {ratio.switch:.3f} after the switch "
        f"against {ratio.as_stored:.3f} as stored: at {_percent(ratio.confidence)} confidence "
        f"the ratio is at least {ratio.lower:.3f}, below min_recall_ratio "
        f"{thresholds.min_recall_ratio:g}",
        "re-index with the candidate, or keep the current engine",
    )


def vetoed(finding: Finding) -> Verdict:
    """The verdict once a recall veto holds: a re-index."""
    return Verdict.of("reindex", finding.reason)


def bound_sentence(bound: Bound) -> str:
    """The bound as a person reads it, from the side that decides: the upper share for an
    approval (rounded up, never down), the lower share for a failure (rounded down)."""
    if bound.exact:
        return (
            f"all {bound.n} records with text were measured: "
            f"{_percent_up(bound.share_below_threshold_upper)} of stored vectors fall below "
            f"cosine {bound.threshold:g} against the candidate"
        )
    if bound.decision == "fail":
        return (
            f"{bound.failures} of {bound.n} sampled records fall below cosine "
            f"{bound.threshold:g}: at {_percent(bound.confidence)} confidence at least "
            f"{_percent_down(bound.share_below_threshold_lower)} of stored vectors do"
        )
    return (
        f"at {_percent(bound.confidence)} confidence at most "
        f"{_percent_up(bound.share_below_threshold_upper)} of stored vectors fall below "
        f"cosine {bound.threshold:g} against the candidate"
    )


def undecided_sentence(bound: Bound) -> str:
    """What a bound that has not decided saw, and the sample that would decide."""
    needed = bound.sample_to_decide()
    more = (
        f"; a sample of about {needed} records would decide if the share stays as seen"
        if needed is not None and needed > bound.n
        else ""
    )
    return (
        f"after {bound.n} records the bound has not decided: {bound.failures} fall below "
        f"cosine {bound.threshold:g}, so at {_percent(bound.confidence)} confidence between "
        f"{_percent_down(bound.share_below_threshold_lower)} and "
        f"{_percent_up(bound.share_below_threshold_upper)} of stored vectors do, against "
        f"the allowed {_percent(bound.allowed_share)}{more}"
    )


def _percent(share: float) -> str:
    return f"{share * 100.0:g}%"


def _percent_down(share: float) -> str:
    """Two significant digits, rounded down: a lower bound must not grow in print."""
    value = share * 100.0
    if value <= 0.0:
        return "0%"
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    rounded = math.floor(value / step + 1e-9) * step
    text = f"{rounded:.{max(0, 1 - math.floor(math.log10(rounded)))}f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "%"


def _percent_up(share: float) -> str:
    """Two significant digits, rounded up: an upper bound must not shrink in print."""
    value = share * 100.0
    if value <= 0.0:
        return "0%"
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    rounded = math.ceil(value / step - 1e-9) * step
    text = f"{rounded:.{max(0, 1 - math.floor(math.log10(rounded)))}f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "%"
