"""guard.core.policy: thresholds, the order of the verdict rules, and the bound sentence."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guard.core.findings import Cause, Finding
from guard.core.policy import (
    EXIT_CODES,
    RecallRatio,
    Thresholds,
    Verdict,
    bound_sentence,
    decide,
    recall_veto,
    vetoed,
)
from guard.core.stats import Bound, bound
from guard.errors import ConfigError

DEFAULTS = Thresholds()


def passing(n: int = 1000) -> Bound:
    return bound(0, n, threshold=0.99, allowed_share=0.01, confidence=0.99)


def failing() -> Bound:
    return bound(40, 1000, threshold=0.99, allowed_share=0.01, confidence=0.99)


def finding(cause: Cause, setting: dict[str, Any] | None = None, explains: bool = False) -> Finding:
    return Finding(cause, f"{cause} seen", f"fix {cause}", setting, explains)


def test_default_thresholds() -> None:
    assert DEFAULTS.as_dict() == {
        "min_cosine": 0.99,
        "allowed_share": 0.01,
        "confidence": 0.99,
        "min_overlap": 0.9,
        "overlap_k": 10,
        "initial_sample": 100,
        "max_sample": 2000,
        "min_recall_ratio": 0.98,
    }


def test_thresholds_from_a_config_table() -> None:
    assert Thresholds.from_mapping({"min_cosine": 0.98, "max_sample": 500}) == Thresholds(
        min_cosine=0.98, max_sample=500
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_cosin": 0.9}, "unknown thresholds: min_cosin"),
        ({"min_cosine": "high"}, "must be a number"),
        ({"overlap_k": 2.5}, "must be a number"),
        ({"confidence": True}, "must be a number"),
        ({"confidence": 1.0}, "out of range: confidence=1.0"),
        ({"initial_sample": 300, "max_sample": 200}, "out of range: max_sample=200"),
    ],
)
def test_bad_thresholds_are_config_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Thresholds.from_mapping(values)


def test_exit_codes_are_the_contract() -> None:
    assert dict(EXIT_CODES) == {
        "approve": 0,
        "reindex": 1,
        "error": 2,
        "fix_config": 3,
        "reject_candidate": 4,
        "undecided": 5,
    }


def test_approve_states_the_bound_and_the_overlap() -> None:
    verdict = decide(passing(), [], DEFAULTS, overlap=0.97)

    assert verdict == Verdict(
        "approve",
        0,
        (
            "at 99% confidence at most 0.46% of stored vectors fall below cosine 0.99 "
            "against the candidate",
            "overlap@10 is 0.970",
        ),
    )


def test_a_bound_above_the_allowed_share_needs_a_reindex() -> None:
    verdict = decide(failing(), [], DEFAULTS)

    assert verdict.name == "reindex"
    assert verdict.exit_code == 1
    assert verdict.reasons[0].endswith("more than the allowed 1%")


def test_low_overlap_blocks_approval() -> None:
    verdict = decide(passing(), [], DEFAULTS, overlap=0.85)

    assert (verdict.name, verdict.reasons) == ("reindex", ("overlap@10 is 0.850, below 0.9",))


def test_norm_mismatch_blocks_approval_even_with_a_good_bound() -> None:
    verdict = decide(passing(), [finding("normalization_mismatch")], DEFAULTS)

    assert (verdict.name, verdict.reasons) == (
        "reindex",
        ("normalization_mismatch: normalization_mismatch seen",),
    )


def test_self_check_findings_reject_before_anything_else() -> None:
    findings = [
        finding("truncation_mismatch", {"max_tokens": 256}, True),
        finding("different_space"),
        finding("collisions"),
    ]

    verdict = decide(passing(), findings, DEFAULTS)

    assert (verdict.name, verdict.exit_code, verdict.reasons) == (
        "reject_candidate",
        4,
        ("collisions: collisions seen",),
    )


def test_a_different_space_is_not_a_config_problem() -> None:
    findings = [finding("prefix_mismatch", {"prefix": "q"}, True), finding("different_space")]

    assert decide(failing(), findings, DEFAULTS).name == "reindex"


def test_dimension_mismatch_needs_no_bound() -> None:
    verdict = decide(None, [finding("dimension_mismatch")], DEFAULTS)

    assert (verdict.name, verdict.reasons) == (
        "reindex",
        ("dimension_mismatch: dimension_mismatch seen",),
    )


def test_a_setting_that_explains_everything_is_fix_config() -> None:
    findings = [
        finding("truncation_mismatch", {"max_tokens": 256}, True),
        finding("quantization_noise"),
    ]

    verdict = decide(failing(), findings, DEFAULTS)

    assert (verdict.name, verdict.exit_code, verdict.reasons) == (
        "fix_config",
        3,
        ("truncation_mismatch: fix truncation_mismatch",),
    )


def test_a_setting_that_explains_part_is_not_enough() -> None:
    findings = [finding("prefix_mismatch", {"prefix": "q"}, False)]

    assert decide(failing(), findings, DEFAULTS).name == "reindex"


def test_without_a_bound_nothing_is_approved() -> None:
    assert decide(None, [], DEFAULTS) == Verdict.of("reindex", "no comparison was possible")


def test_a_bound_for_other_thresholds_is_refused() -> None:
    other = bound(0, 1000, threshold=0.95, allowed_share=0.01)

    with pytest.raises(ValueError, match="other thresholds"):
        decide(other, [], DEFAULTS)


def test_the_bound_sentence_rounds_the_upper_share_up() -> None:
    """0.4595% prints as 0.46%, and 4.5229% as 4.6%: a printed bound never understates."""
    assert bound_sentence(passing()) == (
        "at 99% confidence at most 0.46% of stored vectors fall below cosine 0.99 against "
        "the candidate"
    )
    assert passing().share_below_threshold_upper == pytest.approx(0.004595, abs=1e-6)
    b = bound(1, 200, threshold=0.95, allowed_share=0.01, confidence=0.999)
    assert b.share_below_threshold_upper == pytest.approx(0.045229, abs=1e-6)
    assert bound_sentence(b) == (
        "at 99.9% confidence at most 4.6% of stored vectors fall below cosine 0.95 against "
        "the candidate"
    )


def test_the_bound_sentence_of_a_census() -> None:
    b = bound(3, 300, threshold=0.99, allowed_share=0.01, population=300)

    assert bound_sentence(b) == (
        "all 300 records with text were measured: 1% of stored vectors fall below cosine "
        "0.99 against the candidate"
    )


non_blocking: list[Cause] = [
    "quantization_noise",
    "truncation_mismatch",
    "prefix_mismatch",
    "pooling_mismatch",
]


@given(
    n=st.integers(1, 3000),
    share=st.floats(0.0, 1.0),
    allowed=st.floats(0.0, 0.2),
    confidence=st.sampled_from([0.9, 0.95, 0.99]),
    overlap=st.none() | st.floats(0.0, 1.0),
    causes=st.lists(st.sampled_from(non_blocking), max_size=3),
)
def test_never_approves_when_the_bound_exceeds_the_allowed_share(
    n: int,
    share: float,
    allowed: float,
    confidence: float,
    overlap: float | None,
    causes: list[Cause],
) -> None:
    thresholds = Thresholds(allowed_share=allowed, confidence=confidence)
    b = bound(round(share * n), n, threshold=0.99, allowed_share=allowed, confidence=confidence)

    verdict = decide(b, [finding(c) for c in causes], thresholds, overlap)

    if verdict.name == "approve":
        assert b.share_below_threshold_upper <= allowed
        assert overlap is None or overlap >= thresholds.min_overlap
    elif verdict.name == "undecided":
        assert b.decision == "continue"
    else:
        assert verdict.name == "reindex"


def test_a_recall_ratio_below_the_minimum_vetoes_only_an_approval() -> None:
    """min_recall_ratio 0.98: a lower bound of 0.95 vetoes approve with its figures; the
    same bound leaves reindex alone; 0.99 passes; no stored recall, no veto."""
    thresholds = Thresholds()
    low = RecallRatio(10, 200, 0.88, 0.9, 0.95, 0.95, synthetic=False)
    finding = recall_veto("approve", low, thresholds)
    assert finding is not None and finding.cause == "recall_loss"
    assert "0.880" in finding.evidence and "0.900" in finding.evidence
    assert "0.950" in finding.evidence and "0.98" in finding.evidence
    assert (vetoed(finding).name, vetoed(finding).exit_code) == ("reindex", 1)
    assert recall_veto("reindex", low, thresholds) is None
    fine = RecallRatio(10, 200, 0.9, 0.9, 0.99, 0.95, synthetic=False)
    assert recall_veto("approve", fine, thresholds) is None
    nothing = RecallRatio(10, 200, 0.0, 0.0, None, 0.95, synthetic=False)
    assert recall_veto("approve", nothing, thresholds) is None


def undecided_bound() -> Bound:
    """12 of 1,000 below T: between the two sides of 1% at 99%."""
    return bound(12, 1000, threshold=0.99, allowed_share=0.01, confidence=0.99)


def test_a_bound_that_has_not_decided_is_undecided_with_the_sample_that_would() -> None:
    b = undecided_bound()
    verdict = decide(b, [], DEFAULTS)

    assert (b.decision, verdict.name, verdict.exit_code) == ("continue", "undecided", 5)
    [reason] = verdict.reasons
    assert reason.startswith("after 1000 records the bound has not decided: 12 fall below")
    assert f"a sample of about {b.sample_to_decide()} records would decide" in reason
    assert b.sample_to_decide() is not None and b.sample_to_decide() > 1000


def test_an_undecided_bound_with_a_group_that_needs_a_reindex_is_a_reindex() -> None:
    verdict = decide(undecided_bound(), [finding("mixed_store")], DEFAULTS)
    assert (verdict.name, verdict.reasons[0]) == ("reindex", "mixed_store: mixed_store seen")


def test_a_failure_is_stated_from_the_lower_bound() -> None:
    b = failing()
    sentence = bound_sentence(b)
    assert 0.026 <= b.share_below_threshold_lower < 0.027  # rounded down in print
    assert sentence == (
        "40 of 1000 sampled records fall below cosine 0.99: at 99% confidence at least "
        "2.6% of stored vectors do"
    )
