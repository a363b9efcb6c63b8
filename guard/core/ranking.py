"""Ranking the candidates of ``guard compare`` and the exit code of the whole run.

Pure: the shell measures each candidate and hands over a ``Standing`` per candidate.
Best first means: switchable without re-indexing first (``approve``), then a setting
away from it (``fix_config``), then not yet decided (``undecided``: a larger sample
may approve it), then ``reindex``, then broken (``reject_candidate``),
then candidates that loaded but could not be judged, then those that did not load;
within each class the faster first (texts per second), and the order given on ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Position of each verdict in the ranking; None: loaded, but the check failed midway.
_CLASS_ORDER: dict[str | None, int] = {
    "approve": 0,
    "fix_config": 1,
    "undecided": 2,
    "reindex": 3,
    "reject_candidate": 4,
    None: 5,
}
_NOT_LOADED = 6

# Exit codes of `guard compare` (design.md): 0 some candidate switches without a
# re-index, 1 none does but some loaded, 4 none loaded. 2 (errors) belongs to the shell.
SWITCHABLE = 0
NONE_SWITCHABLE = 1
NONE_LOADED = 4


@dataclass(frozen=True)
class Standing:
    """What the ranking reads of one candidate."""

    loaded: bool
    verdict: str | None
    texts_per_second: float | None


def rank(standings: Sequence[Standing]) -> list[int]:
    """Indices of ``standings``, best first."""

    def key(index: int) -> tuple[int, float, int]:
        standing = standings[index]
        group = _CLASS_ORDER.get(standing.verdict, 5) if standing.loaded else _NOT_LOADED
        speed = standing.texts_per_second or 0.0
        return (group, -speed, index)

    return sorted(range(len(standings)), key=key)


def switchable(standing: Standing) -> bool:
    """Can the candidate be switched to, as given, without re-indexing? Only an
    approval says so: ``fix_config`` needs another setting first."""
    return standing.loaded and standing.verdict == "approve"


def exit_code(standings: Sequence[Standing]) -> int:
    """The run's exit code: see the module constants."""
    if any(switchable(s) for s in standings):
        return SWITCHABLE
    if any(s.loaded for s in standings):
        return NONE_SWITCHABLE
    return NONE_LOADED
