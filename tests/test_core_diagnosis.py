"""guard.core.diagnosis and guard.core.selfcheck on synthetic engines with known defects.

Each scenario builds stored vectors, then a candidate with one defect, and runs the
whole pure pipeline (compare, self-checks, diagnosis, bound, policy) to pin the exact
verdict and the exact list of causes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from guard.core.cosines import Comparison, DimensionMismatch, compare
from guard.core.diagnosis import (
    MIN_REMEASURED,
    PROBE_RECORDS,
    RULES,
    diagnose,
    explains_every_mismatch,
    mixed_store,
    remeasure_rows,
    settings_to_try,
    worth_remeasuring,
)
from guard.core.evidence import Alternative, Evidence, RecordTimes
from guard.core.findings import Finding, SettingValue
from guard.core.policy import Thresholds, decide
from guard.core.selfcheck import (
    agree,
    batch_inconsistent,
    collisions,
    nan_output,
    nondeterministic,
    selfcheck,
    zero_vectors,
)
from guard.core.stats import bound
from guard.records import Distance

N, D, T = 1000, 64, 0.99
Array = npt.NDArray[np.float64]


def unit_rows(n: int = N, d: int = D, seed: int = 0) -> Array:
    rows = np.random.default_rng(seed).normal(size=(n, d))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def toward(stored: Array, cosines: npt.ArrayLike, seed: int = 1) -> Array:
    """Unit vectors at exactly the given cosine to each stored row."""
    noise = np.random.default_rng(seed).normal(size=stored.shape)
    noise -= np.sum(noise * stored, axis=1, keepdims=True) * stored
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    c = np.broadcast_to(np.asarray(cosines, dtype=np.float64), (len(stored),))[:, None]
    return c * stored + np.sqrt(1 - c**2) * noise


def token_counts(n: int = N, seed: int = 2) -> npt.NDArray[np.int64]:
    """Chunk lengths as corpora have them: mostly short, about 2% beyond 256 tokens."""
    rng = np.random.default_rng(seed)
    return np.minimum(rng.lognormal(4.3, 0.6, n).astype(np.int64) + 3, 2000)


def truncated(stored: Array, tokens: npt.NDArray[np.int64], cut: int = 256) -> Array:
    """Same engine up to ``cut`` tokens (cosine >= 0.999996), different beyond it."""
    rng = np.random.default_rng(3)
    cosines = np.where(
        tokens <= cut, 1 - rng.uniform(0, 4e-6, len(tokens)), rng.uniform(0.65, 0.985, len(tokens))
    )
    return toward(stored, cosines)


@dataclass
class Outcome:
    verdict: str
    causes: tuple[str, ...]
    findings: tuple[Finding, ...]


def check(
    stored: Array,
    candidate: Array,
    tokens: npt.ArrayLike | None = None,
    distance: Distance = "cosine",
    *,
    texts: Sequence[str] | None = None,
    rerun: tuple[Array, Array] | None = None,
    batching: tuple[Array, Array] | None = None,
    alternatives: tuple[Alternative, ...] = (),
    candidate_settings: Mapping[str, SettingValue] | None = None,
) -> Outcome:
    """The pure part of ``guard check``, as the shell wires it after the last round."""
    thresholds = Thresholds()
    texts = texts if texts is not None else [f"text {i}" for i in range(len(candidate))]
    comparison: Comparison | None
    try:
        comparison = compare(stored, candidate, tokens, distance)
    except DimensionMismatch:
        comparison = None
    checks = selfcheck(candidate, texts, stored=stored, rerun=rerun, batching=batching)
    evidence = Evidence(
        comparison,
        T,
        stored.shape[1],
        candidate.shape[1],
        checks,
        alternatives,
        dict(candidate_settings or {}),
    )
    findings = diagnose(evidence)
    b = (
        bound(comparison.failures(T), comparison.n, threshold=T, allowed_share=0.01)
        if comparison is not None
        else None
    )
    verdict = decide(b, findings, thresholds)
    return Outcome(verdict.name, tuple(f.cause for f in findings), findings)


def evidence_for(stored: Array, candidate: Array, tokens: npt.ArrayLike | None) -> Evidence:
    return Evidence(compare(stored, candidate, tokens, "cosine"), T, D, D)


# Whole-pipeline scenarios: exact verdict and causes.


def test_identical_engine_is_approved_with_no_finding() -> None:
    stored = unit_rows()

    outcome = check(stored, stored.copy(), token_counts())

    assert (outcome.verdict, outcome.causes) == ("approve", ())


def test_coarse_quantisation_noise_needs_a_reindex() -> None:
    stored = unit_rows()
    noisy = stored + np.random.default_rng(5).normal(0, 0.025, stored.shape)

    outcome = check(stored, noisy, token_counts())

    assert (outcome.verdict, outcome.causes) == ("reindex", ("quantization_noise",))
    assert outcome.findings[0].suggestion.startswith("use a higher-precision model file")


def test_fine_quantisation_noise_is_approved_with_a_note() -> None:
    stored = unit_rows()
    noisy = stored + np.random.default_rng(5).normal(0, 0.005, stored.shape)

    outcome = check(stored, noisy, token_counts())

    assert (outcome.verdict, outcome.causes) == ("approve", ("quantization_noise",))


def test_random_rotation_is_a_different_space() -> None:
    stored = unit_rows()
    rotation, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(D, D)))

    outcome = check(stored, stored @ rotation, token_counts())

    assert (outcome.verdict, outcome.causes) == ("reindex", ("different_space",))


def foreign_rows(stored: Array, rows: npt.NDArray[np.int64], seed: int = 7) -> Array:
    """The candidate's vectors when ``rows`` of the store were written by another model:
    identical elsewhere, unrelated (another space) on those rows."""
    candidate = stored.copy()
    candidate[rows] = unit_rows(len(rows), D, seed)
    return candidate


@pytest.mark.parametrize(
    ("placement", "where"),
    [
        ("newest", "all above the matching ones (0-699): the newest"),
        ("oldest", "all below the matching ones (300-999): the oldest"),
        ("scattered", "scattered among the matching ones"),
    ],
)
def test_a_group_written_by_another_engine_is_a_mixed_store(placement: str, where: str) -> None:
    stored = unit_rows()
    rows = {
        "newest": np.arange(700, 1000),
        "oldest": np.arange(0, 300),
        "scattered": np.random.default_rng(8).choice(N, 300, replace=False),
    }[placement]
    comparison = compare(stored, foreign_rows(stored, rows), token_counts(), "cosine")
    evidence = Evidence(comparison, T, D, D, ids=tuple(range(N)))

    findings = diagnose(evidence)
    b = bound(comparison.failures(T), N, threshold=T, allowed_share=0.01)
    verdict = decide(b, findings, Thresholds())

    assert [f.cause for f in findings] == ["mixed_store"]
    assert "700 of 1000 sampled records (70%) match" in findings[0].evidence
    assert "a distinct group of 300 (30%) does not" in findings[0].evidence
    assert where in findings[0].evidence
    assert verdict.name == "reindex"
    assert any(reason.startswith("mixed_store: ") for reason in verdict.reasons)


def test_a_store_mostly_from_another_engine_is_mixed_not_a_different_space() -> None:
    """The reverse: 70% foreign, 30% still matching the candidate."""
    stored = unit_rows()
    outcome = check(stored, foreign_rows(stored, np.arange(300, N)), token_counts())

    assert (outcome.verdict, outcome.causes) == ("reindex", ("mixed_store",))
    assert outcome.findings[0].suggestion.startswith("most of the store was written by another")


def test_a_mixed_group_within_the_allowed_share_still_approves() -> None:
    """40 foreign records in 2,000 (2%) at an allowed share of 5%: named, not blocking."""
    stored = unit_rows(2000)
    candidate = stored.copy()
    candidate[1960:] = unit_rows(40, D, 9)
    comparison = compare(stored, candidate, None, "cosine")
    findings = diagnose(Evidence(comparison, T, D, D, ids=tuple(range(2000))))
    b = bound(40, 2000, threshold=T, allowed_share=0.05)

    verdict = decide(b, findings, Thresholds(allowed_share=0.05))

    assert ([f.cause for f in findings], verdict.name) == (["mixed_store"], "approve")


def test_one_noisy_mode_straddling_the_threshold_is_not_a_mixed_store() -> None:
    """Quantisation: cosines spread around 0.992, a third of them below 0.99."""
    stored = unit_rows()
    cosines = 0.995 - np.abs(np.random.default_rng(10).normal(0, 0.006, N))

    outcome = check(stored, toward(stored, cosines), None)

    assert "mixed_store" not in outcome.causes
    assert outcome.verdict == "reindex"


def test_a_group_written_by_a_lower_precision_model_is_a_mixed_store() -> None:
    """30% from a Q4 file (cosine about 0.975), the rest exactly the candidate's."""
    stored = unit_rows()
    low = np.random.default_rng(11).uniform(0.968, 0.982, N)
    cosines = np.where(np.arange(N) < 700, 0.999995, low)

    outcome = check(stored, toward(stored, cosines), None)

    assert (outcome.verdict, outcome.causes) == ("reindex", ("mixed_store",))


def test_the_mismatching_groups_timestamps_are_named() -> None:
    stored = unit_rows()
    comparison = compare(stored, foreign_rows(stored, np.arange(700, N)), None, "cosine")
    payloads = [
        {"metadata": {"created_at": f"2026-{1 + i // 100:02d}-01T00:00:00+00:00"}} for i in range(N)
    ]
    times = RecordTimes.from_payloads(payloads)

    finding = mixed_store(Evidence(comparison, T, D, D, times=times))

    assert times is not None and times.field == "metadata.created_at"
    assert finding is not None
    assert (
        "their metadata.created_at runs from 2026-08-01T00:00:00+00:00 to "
        "2026-10-01T00:00:00+00:00 (the matching ones: 2026-01-01T00:00:00+00:00 to "
        "2026-07-01T00:00:00+00:00)"
    ) in finding.evidence


def test_timestamps_are_read_from_datetimes_dates_iso_strings_and_epochs() -> None:
    from datetime import UTC, date, datetime

    moment = datetime(2026, 3, 1, tzinfo=UTC)
    payloads = [
        {"updated_at": moment},
        {"updated_at": date(2026, 3, 1)},
        {"updated_at": "2026-03-01T00:00:00"},
        {"updated_at": int(moment.timestamp())},
        {"updated_at": int(moment.timestamp() * 1000)},
        {"updated_at": "yesterday"},
        {"title": "no time"},
    ]

    times = RecordTimes.from_payloads(payloads)

    assert times is not None
    assert times.seconds[:5].tolist() == [moment.timestamp()] * 5
    assert np.isnan(times.seconds[5:]).all()
    assert RecordTimes.from_payloads([{"format": "pdf", "page": 3}]) is None


def test_truncation_at_256_tokens_is_fixed_by_max_tokens() -> None:
    """F16 llama.cpp against sentence-transformers: only the few > 256 tokens differ."""
    stored, tokens = unit_rows(), token_counts()

    outcome = check(stored, truncated(stored, tokens), tokens)

    assert (outcome.verdict, outcome.causes) == ("fix_config", ("truncation_mismatch",))
    finding = outcome.findings[0]
    assert (finding.setting, finding.explains_all) == ({"max_tokens": 256}, True)
    assert finding.suggestion == (
        "set max_tokens=256 on the candidate, the limit the stored vectors were made with"
    )
    longer = int(np.count_nonzero(tokens > 256))
    assert finding.evidence.startswith(
        f"records up to 256 tokens match (min cosine 0.999996); {longer} of the {longer} "
        f"records with {int(tokens[tokens > 256].min())} or more tokens do not"
    )


def test_truncation_by_the_candidate_itself_says_raise_the_limit() -> None:
    """When the candidate cuts shorter than the stored engine did, no value is known."""
    stored, tokens = unit_rows(), token_counts()

    outcome = check(
        stored, truncated(stored, tokens), tokens, candidate_settings={"max_tokens": 256}
    )

    assert (outcome.verdict, outcome.causes) == ("reindex", ("truncation_mismatch",))
    finding = outcome.findings[0]
    assert (finding.setting, finding.explains_all) == (None, False)
    assert finding.suggestion == (
        "raise max_tokens on the candidate above 256, to the limit the stored vectors were "
        "made with"
    )


def test_raising_the_candidates_limit_is_tried_and_can_be_confirmed() -> None:
    """Stored at 512 tokens, candidate at 256: the shell tries 384, 512, 1024."""
    stored = unit_rows()
    tokens = np.arange(N) % 700 + 1
    candidate = truncated(stored, tokens)
    evidence = Evidence(
        compare(stored, candidate, tokens, "cosine"),
        T,
        D,
        D,
        candidate_settings={"max_tokens": 256},
    )
    rows = evidence.mismatching()
    works = Alternative.measure({"max_tokens": 512}, rows, stored[rows], stored[rows])

    tried = settings_to_try(evidence)
    outcome = check(
        stored,
        candidate,
        tokens,
        alternatives=(works,),
        candidate_settings={"max_tokens": 256},
    )

    assert tried == ({"max_tokens": 384}, {"max_tokens": 512}, {"max_tokens": 1024})
    assert (outcome.verdict, outcome.causes) == ("fix_config", ("truncation_mismatch",))
    assert outcome.findings[0].setting == {"max_tokens": 512}


def test_scaled_vectors_under_dot_product_need_normalize() -> None:
    stored = unit_rows()

    outcome = check(stored, stored * 3.0, token_counts(), "dot")

    assert (outcome.verdict, outcome.causes) == ("fix_config", ("normalization_mismatch",))
    assert (outcome.findings[0].setting, outcome.findings[0].explains_all) == (
        {"normalize": True},
        True,
    )


def test_scaled_vectors_under_cosine_distance_are_fine() -> None:
    stored = unit_rows()

    outcome = check(stored, stored * 3.0, token_counts(), "cosine")

    assert (outcome.verdict, outcome.causes) == ("approve", ())


def test_normalised_candidate_against_raw_stored_vectors() -> None:
    """normalize=false is only a fix_config once the shell has measured it."""
    stored = unit_rows() * np.random.default_rng(7).uniform(2, 6, (N, 1))
    candidate = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    rows = np.arange(N)

    unmeasured = check(stored, candidate, token_counts(), "l2")
    measured = check(
        stored,
        candidate,
        token_counts(),
        "l2",
        alternatives=(Alternative.measure({"normalize": False}, rows, stored, stored),),
    )

    assert (unmeasured.verdict, unmeasured.causes) == ("reindex", ("normalization_mismatch",))
    assert unmeasured.findings[0].setting == {"normalize": False}
    assert (measured.verdict, measured.causes) == ("fix_config", ("normalization_mismatch",))


def test_lengths_of_unrelated_vectors_are_not_blamed() -> None:
    stored = unit_rows()
    rotation, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(D, D)))

    outcome = check(stored, stored @ rotation * 4.0, token_counts(), "dot")

    assert (outcome.verdict, outcome.causes) == ("reindex", ("different_space",))


def _prefixed(stored: Array) -> tuple[Array, Alternative]:
    """A candidate missing a task prefix, and the shell's re-measurement with it."""
    candidate = toward(stored, 0.93)
    rows = np.arange(N)
    fixed = toward(stored, 0.99995, seed=9)
    return candidate, Alternative.measure({"prefix": "query: "}, rows, stored, fixed)


def test_prefix_that_brings_every_record_back_is_a_config_fix() -> None:
    stored = unit_rows()
    candidate, alternative = _prefixed(stored)

    outcome = check(stored, candidate, token_counts(), alternatives=(alternative,))

    assert (outcome.verdict, outcome.causes) == ("fix_config", ("prefix_mismatch",))
    finding = outcome.findings[0]
    assert (finding.setting, finding.explains_all) == ({"prefix": "query: "}, True)
    assert finding.suggestion == "set prefix='query: ' on the candidate"
    assert finding.evidence == (
        f"with prefix='query: ' on the candidate, {N} of {N} re-measured mismatching records "
        "reach cosine 0.99 (median cosine 0.930 -> 1.000)"
    )


@pytest.mark.parametrize(("remeasured", "verdict"), [(30, "fix_config"), (29, "reindex")])
def test_a_sample_of_the_mismatching_records_is_enough_to_confirm_a_fix(
    remeasured: int, verdict: str
) -> None:
    """The shell caps re-measurement; 30 clean rows (plus matching controls) confirm."""
    stored = unit_rows()
    candidate = toward(stored, np.where(np.arange(N) < 500, 0.93, 0.99999))
    rows = np.concatenate([np.arange(remeasured), np.arange(500, 508)])
    fixed = Alternative.measure({"prefix": "query: "}, rows, stored[rows], stored[rows])

    outcome = check(stored, candidate, token_counts(), alternatives=(fixed,))

    assert (outcome.verdict, outcome.causes) == (verdict, ("prefix_mismatch",))
    assert outcome.findings[0].evidence.startswith(
        f"with prefix='query: ' on the candidate, {remeasured} of {remeasured} re-measured"
    )


def test_a_fix_that_breaks_matching_controls_is_not_applied() -> None:
    stored = unit_rows()
    candidate = toward(stored, np.where(np.arange(N) < 500, 0.93, 0.99999))
    rows = np.concatenate([np.arange(40), np.arange(500, 508)])
    new = stored[rows].copy()
    new[-8:] = toward(new[-8:], 0.9)
    alternative = Alternative.measure({"pooling": "cls"}, rows, stored[rows], new)

    outcome = check(stored, candidate, token_counts(), alternatives=(alternative,))

    # Half the store matches as is, and the other half only with another pooling: a
    # store written by two configurations, which no one setting fixes.
    assert (outcome.verdict, outcome.causes) == ("reindex", ("pooling_mismatch", "mixed_store"))
    assert outcome.findings[0].explains_all is False


def test_prefix_that_fixes_most_records_is_reported_but_not_applied() -> None:
    stored = unit_rows()
    candidate = toward(stored, 0.93)
    partly = toward(stored, np.where(np.arange(N) % 5 == 0, 0.95, 0.9999))
    alternative = Alternative.measure({"prefix": "query: "}, np.arange(N), stored, partly)

    outcome = check(stored, candidate, token_counts(), alternatives=(alternative,))

    assert (outcome.verdict, outcome.causes) == ("reindex", ("prefix_mismatch",))
    assert outcome.findings[0].explains_all is False


def test_alternative_that_does_not_help_is_no_finding() -> None:
    stored = unit_rows()
    candidate = toward(stored, 0.93)
    same = Alternative.measure({"prefix": "passage: "}, np.arange(N), stored, candidate)

    outcome = check(stored, candidate, token_counts(), alternatives=(same,))

    assert (outcome.verdict, outcome.causes) == ("reindex", ())


def test_pooling_that_explains_a_distant_candidate_beats_different_space() -> None:
    """CLS against mean pooling looks far away until the shell tries pooling=mean."""
    stored = unit_rows()
    candidate = toward(stored, 0.3)
    fixed = Alternative.measure({"pooling": "mean"}, np.arange(N), stored, stored)

    outcome = check(stored, candidate, token_counts(), alternatives=(fixed,))

    assert (outcome.verdict, outcome.causes) == ("fix_config", ("pooling_mismatch",))


def test_different_dimensions() -> None:
    outcome = check(unit_rows(), unit_rows(d=2 * D), token_counts())

    assert (outcome.verdict, outcome.causes) == ("reindex", ("dimension_mismatch",))
    assert outcome.findings[0].evidence == (
        f"the store holds {D}-dimensional vectors; the candidate makes {2 * D}-dimensional ones"
    )


def test_nan_rows_reject_the_candidate() -> None:
    stored = unit_rows()
    candidate = stored.copy()
    candidate[[3, 500, 901]] = np.nan

    outcome = check(stored, candidate, token_counts())

    assert (outcome.verdict, outcome.causes) == ("reject_candidate", ("nan_output",))


def test_zero_rows_reject_the_candidate() -> None:
    stored = unit_rows()
    candidate = stored.copy()
    candidate[[10, 20]] = 0.0

    outcome = check(stored, candidate, token_counts())

    assert (outcome.verdict, outcome.causes) == ("reject_candidate", ("zero_vectors",))


def test_distinct_texts_with_one_vector_reject_the_candidate() -> None:
    stored = unit_rows()
    candidate = stored.copy()
    candidate[7] = candidate[3]

    outcome = check(stored, candidate, token_counts())

    assert (outcome.verdict, outcome.causes) == ("reject_candidate", ("collisions",))
    assert outcome.findings[0].evidence == (
        f"2 of {N} records share their vector with a record of another text "
        "(cosine > 0.99999, 1 pairs)"
    )


def test_collisions_the_store_shares_or_equal_texts_are_excused() -> None:
    """Texts equal, or stored vectors equal too (a shared prefix beyond both limits)."""
    stored = unit_rows()
    stored[7] = stored[3]
    texts = [f"text {i}" for i in range(N)]

    assert check(stored, stored.copy(), token_counts(), texts=texts).causes == ()
    texts[7] = texts[3]
    assert collisions(stored, texts) is None


def test_nondeterministic_engine_is_rejected() -> None:
    stored = unit_rows()
    first = stored[:50]
    second = first + np.random.default_rng(8).normal(0, 0.01, first.shape)

    outcome = check(stored, stored.copy(), token_counts(), rerun=(first, second))

    assert (outcome.verdict, outcome.causes) == ("reject_candidate", ("nondeterministic",))


def test_float_jitter_between_runs_is_tolerated() -> None:
    stored = unit_rows()
    first = stored[:50]
    jitter = first + np.random.default_rng(8).normal(0, 1e-6, first.shape)

    outcome = check(stored, stored.copy(), token_counts(), rerun=(first, jitter))

    assert (outcome.verdict, outcome.causes) == ("approve", ())


def test_batch_dependent_engine_is_rejected() -> None:
    stored = unit_rows()
    alone = stored[:20]
    in_batch = alone.copy()
    in_batch[5] = toward(alone[5:6], 0.98)[0]

    outcome = check(stored, stored.copy(), token_counts(), batching=(alone, in_batch))

    assert (outcome.verdict, outcome.causes) == ("reject_candidate", ("batch_inconsistent",))
    assert outcome.findings[0].evidence == (
        "1 of 20 texts got different vectors alone than in a batch (lowest cosine 0.980000)"
    )


# Individual rules and self-checks.


def test_failures_scattered_over_all_lengths_are_not_truncation() -> None:
    stored, tokens = unit_rows(), token_counts()
    cosines = np.where(np.arange(N) % 40 == 0, 0.9, 0.99999)

    findings = diagnose(evidence_for(stored, toward(stored, cosines), tokens))

    # A distinct group at cosine 0.9 that length does not explain: another engine's.
    assert [f.cause for f in findings] == ["mixed_store"]


def test_truncation_cut_is_rounded_past_mildly_truncated_records() -> None:
    """Records a little past the limit lose few tokens and still match: 256, not 298."""
    stored, tokens = unit_rows(), token_counts()
    rng = np.random.default_rng(4)
    cosines = np.select(
        [tokens <= 256, tokens <= 300],
        [1 - rng.uniform(0, 4e-6, N), rng.uniform(0.993, 0.999, N)],
        rng.uniform(0.65, 0.985, N),
    )

    (finding,) = diagnose(evidence_for(stored, toward(stored, cosines), tokens))

    assert (finding.cause, finding.setting, finding.explains_all) == (
        "truncation_mismatch",
        {"max_tokens": 256},
        True,
    )


def test_truncation_at_an_uncommon_length_is_not_applied() -> None:
    stored = unit_rows()
    tokens = np.arange(N) % 640 + 1
    cosines = np.where(tokens <= 320, 0.999999, 0.8)

    (finding,) = diagnose(evidence_for(stored, toward(stored, cosines), tokens))

    assert (finding.cause, finding.setting, finding.explains_all) == (
        "truncation_mismatch",
        {"max_tokens": 320},
        False,
    )
    assert finding.suggestion == (
        "set max_tokens on the candidate to the limit the stored vectors were made with: "
        "at most 320 tokens, near 320"
    )


def test_truncation_boundary_follows_where_fidelity_falls() -> None:
    """Matching-but-degraded records past 320 do not pull the cut up to 384."""
    stored = unit_rows()
    tokens = np.arange(N) % 640 + 1
    cosines = np.select([tokens <= 320, tokens <= 400], [0.999999, 0.995], 0.8)

    (finding,) = diagnose(evidence_for(stored, toward(stored, cosines), tokens))

    assert (finding.setting, finding.explains_all) == ({"max_tokens": 320}, False)


def test_one_slightly_worse_short_record_does_not_move_the_cut() -> None:
    stored, tokens = unit_rows(), token_counts()
    candidate = truncated(stored, tokens)
    odd = int(np.flatnonzero((tokens > 100) & (tokens < 150))[0])
    candidate[odd] = toward(stored[odd : odd + 1], 0.995)[0]

    (finding,) = diagnose(evidence_for(stored, candidate, tokens))

    assert (finding.setting, finding.explains_all) == ({"max_tokens": 256}, True)


def test_measured_truncation_limit_that_fails_overrides_the_inference() -> None:
    stored, tokens = unit_rows(), token_counts()
    candidate = truncated(stored, tokens)
    rows = np.flatnonzero(tokens > 256)
    still_off = Alternative.measure({"max_tokens": 256}, rows, stored[rows], candidate[rows])

    outcome = check(stored, candidate, tokens, alternatives=(still_off,))

    assert (outcome.verdict, outcome.causes) == ("reindex", ("truncation_mismatch",))
    assert outcome.findings[0].explains_all is False


def test_measured_truncation_limit_counts_without_token_counts() -> None:
    stored, tokens = unit_rows(), token_counts()
    candidate = truncated(stored, tokens)
    rows = np.flatnonzero(tokens > 256)
    fixed = Alternative.measure({"max_tokens": 256}, rows, stored[rows], stored[rows])

    outcome = check(stored, candidate, None, alternatives=(fixed,))

    assert (outcome.verdict, outcome.causes) == ("fix_config", ("truncation_mismatch",))


def test_settings_to_try_confirms_a_truncation_cut() -> None:
    stored, tokens = unit_rows(), token_counts()
    evidence = evidence_for(stored, truncated(stored, tokens), tokens)

    assert settings_to_try(evidence) == ({"max_tokens": 256},)


def test_settings_to_try_probes_prefix_and_pooling_for_unexplained_mismatch() -> None:
    stored = unit_rows()
    comparison = compare(stored, toward(stored, 0.93), token_counts(), "cosine")
    tried = Alternative.measure({"pooling": "cls"}, [0], stored[:1], stored[:1])
    evidence = Evidence(
        comparison, T, D, D, alternatives=(tried,), candidate_settings={"prefix": "query: "}
    )

    assert settings_to_try(evidence) == (
        {"prefix": ""},
        {"prefix": "passage: "},
        {"prefix": "search_query: "},
        {"prefix": "search_document: "},
        {"pooling": "mean"},
        {"pooling": "last"},
    )


def test_an_alternative_that_fixes_no_probed_mismatch_is_not_remeasured_further() -> None:
    """The lean diagnosis: the first PROBE_RECORDS mismatches decide whether a setting
    is worth the rest; one fixed record is enough to go on."""
    stored = unit_rows()
    evidence = evidence_for(stored, toward(stored, 0.93), token_counts())
    probe = evidence.mismatching()[:PROBE_RECORDS]
    worse = Alternative.measure(
        {"pooling": "cls"}, probe, stored[probe], toward(stored[probe], 0.5)
    )
    one = toward(stored[probe], 0.93)
    one[3] = stored[probe[3]]
    helps = Alternative.measure({"pooling": "last"}, probe, stored[probe], one)

    assert probe.size == PROBE_RECORDS
    assert (
        worth_remeasuring(worse, evidence),
        worth_remeasuring(helps, evidence),
    ) == (False, True)


def test_the_probe_is_the_shortest_of_the_uniformly_drawn_mismatches() -> None:
    """The probe costs its tokens: it takes the PROBE_RECORDS fewest-token records of
    the first MIN_REMEASURED mismatches (sample order), then the rest of those follow."""
    stored = unit_rows()
    tokens = token_counts()
    evidence = evidence_for(stored, toward(stored, 0.93), tokens)
    drawn = evidence.mismatching()[:MIN_REMEASURED]

    rows = remeasure_rows(evidence)

    probe, rest = rows[:PROBE_RECORDS], rows[PROBE_RECORDS:]
    assert sorted(rows.tolist()) == sorted(drawn.tolist())
    assert tokens[probe].tolist() == sorted(tokens[drawn].tolist())[:PROBE_RECORDS]
    assert rest.tolist() == [row for row in drawn.tolist() if row not in set(probe.tolist())]


def test_without_token_counts_the_probe_keeps_sample_order() -> None:
    stored = unit_rows()
    evidence = evidence_for(stored, toward(stored, 0.93), None)

    assert remeasure_rows(evidence).tolist() == evidence.mismatching()[:MIN_REMEASURED].tolist()


def test_nothing_to_try_when_everything_matches() -> None:
    stored = unit_rows()

    assert settings_to_try(evidence_for(stored, stored, None)) == ()


def test_a_new_rule_is_one_function() -> None:
    """Rules compose like structlog processors: a tuple of callables."""

    def always(e: Evidence) -> Finding | None:
        return Finding("quantization_noise", "seen", "do")

    stored = unit_rows()
    evidence = evidence_for(stored, stored, None)

    assert diagnose(evidence, (*RULES, always)) == (Finding("quantization_noise", "seen", "do"),)


def test_finding_reports_exactly_cause_evidence_and_suggestion() -> None:
    finding = Finding("prefix_mismatch", "e", "s", {"prefix": "q"}, True)

    assert finding.as_dict() == {"cause": "prefix_mismatch", "evidence": "e", "suggestion": "s"}


def test_alternative_labels_read_like_settings() -> None:
    rows = unit_rows(2)
    settings: list[dict[str, SettingValue]] = [
        {"prefix": "query: "},
        {"normalize": True},
        {"max_tokens": 256, "pooling": "cls"},
    ]

    labels = [Alternative.measure(s, [0, 1], rows, rows).label for s in settings]

    assert labels == ["prefix='query: '", "normalize=true", "max_tokens=256, pooling='cls'"]
    with pytest.raises(ValueError, match="3 indices for 2"):
        Alternative.measure({"pooling": "cls"}, [0, 1, 2], rows, rows)


def test_self_check_evidence_counts_rows_over_every_array() -> None:
    good = unit_rows(10)
    bad = good.copy()
    bad[0] = np.inf
    bad[1] = 0.0

    nan = nan_output(good, bad)
    zero = zero_vectors(good, bad)

    assert nan is not None and nan.evidence == ("1 of 20 candidate vectors contain NaN or infinity")
    assert zero is not None and zero.evidence == "1 of 20 candidate vectors are all zeros"
    assert nan_output(good) is None and zero_vectors(good) is None


def test_self_check_pairs_must_have_one_shape() -> None:
    with pytest.raises(ValueError, match="shapes"):
        nondeterministic(unit_rows(3), unit_rows(4))
    with pytest.raises(ValueError, match="2 texts for 3 vectors"):
        collisions(unit_rows(3), ["a", "b"])


def test_undefined_rows_in_reruns_are_left_to_the_nan_check() -> None:
    first = unit_rows(5)
    second = first.copy()
    second[2] = np.nan

    assert nondeterministic(first, second) is None
    assert batch_inconsistent(first, first) is None


def test_runs_agree_only_when_every_row_is_defined_and_within_tolerance() -> None:
    """What lets the check skip its second batch run: one row moved, or one row that
    says nothing (NaN, zero), and the runs do not agree."""
    first = unit_rows(5)
    assert agree(first, first.copy())
    assert agree(first, first * 3.0)  # length is not direction
    moved = first.copy()
    moved[1] += 0.1 * unit_rows(5)[4]
    assert not agree(first, moved)
    undefined = first.copy()
    undefined[3] = np.nan
    assert not agree(first, undefined)
    undefined[3] = 0.0
    assert not agree(first, undefined)


def test_an_alternative_fixing_every_remeasured_mismatch_explains_it_and_a_partial_one_not() -> (
    None
):
    """The shell stops trying settings after the first that explains every mismatch."""
    stored = unit_rows()
    comparison = compare(stored, toward(stored, 0.93), token_counts(), "cosine")
    evidence = Evidence(comparison, T, D, D)
    rows = evidence.mismatching()[:MIN_REMEASURED]
    fixed = Alternative.measure({"pooling": "cls"}, rows, stored[rows], stored[rows])
    half = stored[rows].copy()
    half[::2] = toward(stored[rows][::2], 0.9)
    partial = Alternative.measure({"pooling": "last"}, rows, stored[rows], half)
    too_few = Alternative.measure({"pooling": "mean"}, rows[:5], stored[rows[:5]], stored[rows[:5]])

    assert (
        explains_every_mismatch(fixed, evidence),
        explains_every_mismatch(partial, evidence),
        explains_every_mismatch(too_few, evidence),
    ) == (True, False, False)
