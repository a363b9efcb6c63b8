"""How long a re-index worker waits for a server that went away, and how often it knocks.

A restarted PostgreSQL or a state database gone for half a minute should cost a worker
that time, not the run. ``Patience`` is the pure policy (no clock, no I/O): after each
failed try it says how long to pause before the next, growing from a fraction of a
second to a few seconds, until the server has been gone for ``max_outage`` seconds.
The waiting itself is guard.reindex.waiting's.
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.errors import ConfigError

DEFAULT_MAX_OUTAGE_S = 120.0


@dataclass(frozen=True)
class Patience:
    """Pauses of ``first``, ``first * factor``, ... capped at ``ceiling`` seconds, the
    last try falling on the bound itself."""

    max_outage: float = DEFAULT_MAX_OUTAGE_S
    first: float = 0.25
    factor: float = 2.0
    ceiling: float = 2.0  # a restarted server is back within seconds: knock often

    def __post_init__(self) -> None:
        if not self.max_outage >= 0:  # NaN too
            raise ConfigError(f"--max-outage must be 0 or more seconds, not {self.max_outage}")

    def pause(self, tries: int, waited: float) -> float | None:
        """Seconds to pause after ``tries`` failed tries (1: the first failure) of an
        outage ``waited`` seconds old; None: the bound is spent, give up."""
        if waited >= self.max_outage:
            return None
        step = min(self.ceiling, self.first * self.factor ** max(tries - 1, 0))
        return min(step, self.max_outage - waited)
