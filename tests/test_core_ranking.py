"""The ranking of `guard compare` and its exit-code policy: pure functions, plain values."""

from __future__ import annotations

from guard.core.ranking import Standing, exit_code, rank

APPROVED_SLOW = Standing(loaded=True, verdict="approve", texts_per_second=50.0)
APPROVED_FAST = Standing(loaded=True, verdict="approve", texts_per_second=80.0)
REINDEX_FASTEST = Standing(loaded=True, verdict="reindex", texts_per_second=9000.0)
FIX_CONFIG = Standing(loaded=True, verdict="fix_config", texts_per_second=10.0)
BROKEN = Standing(loaded=True, verdict="reject_candidate", texts_per_second=500.0)
FAILED_MIDWAY = Standing(loaded=True, verdict=None, texts_per_second=None)
NOT_LOADED = Standing(loaded=False, verdict=None, texts_per_second=None)


def test_switchable_candidates_come_first_then_speed_decides() -> None:
    standings = [
        NOT_LOADED,
        REINDEX_FASTEST,
        APPROVED_SLOW,
        BROKEN,
        FIX_CONFIG,
        FAILED_MIDWAY,
        APPROVED_FAST,
    ]
    assert rank(standings) == [6, 2, 4, 1, 3, 5, 0]


def test_ties_keep_the_order_given() -> None:
    assert rank([NOT_LOADED, APPROVED_SLOW, NOT_LOADED]) == [1, 0, 2]


def test_exit_0_when_one_candidate_switches_without_reindex() -> None:
    assert exit_code([NOT_LOADED, REINDEX_FASTEST, APPROVED_SLOW]) == 0


def test_exit_1_when_some_load_but_none_switches() -> None:
    """A fix_config candidate needs another setting first: it does not count."""
    assert exit_code([NOT_LOADED, REINDEX_FASTEST, FIX_CONFIG, FAILED_MIDWAY]) == 1


def test_exit_4_when_no_candidate_loads() -> None:
    assert exit_code([NOT_LOADED, NOT_LOADED]) == 4


def test_an_undecided_candidate_ranks_above_every_reindex() -> None:
    """A larger sample may approve it: it is never ranked as a re-index."""
    undecided = Standing(loaded=True, verdict="undecided", texts_per_second=1.0)
    assert rank([REINDEX_FASTEST, undecided, FIX_CONFIG]) == [2, 1, 0]
    assert exit_code([REINDEX_FASTEST, undecided]) == 1
