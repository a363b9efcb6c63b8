"""Why the candidate's vectors differ from the stored ones, as findings with a fix.

Each rule is a small function ``(Evidence) -> Finding | None`` listed in ``RULES``;
``diagnose`` runs them all. Adding a cause is adding one function and its test, and
the cause with its role in guard.core.findings.
Rules stay silent unless the data show their pattern clearly: a perfect engine gets no
finding, and a finding that names a setting is what turns a verdict into ``fix_config``.

The shell can sharpen a diagnosis by re-measuring the mismatching records with changed
candidate settings (``settings_to_try`` says which are worth it) and passing the
results back as ``Alternative`` values (guard.core.evidence).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from guard.core.cosines import Comparison, Floats, Ints
from guard.core.evidence import Alternative, Evidence
from guard.core.findings import Cause, Finding, Setting

# Below this median cosine the two sides do not describe the same space at all.
DIFFERENT_SPACE_MEDIAN = 0.5
# A norm ratio further than this from 1 is a different length, not rounding.
NORM_TOLERANCE = 0.02
# Quantisation noise: a high median, a tight spread and nothing systematic.
QUANTIZATION_MEDIAN = (0.96, 0.9995)
QUANTIZATION_SPREAD = 0.03  # median - p5
# Truncation limits models and engines commonly use; a cut is rounded to one of these.
COMMON_MAX_TOKENS = (128, 256, 384, 512, 1024, 2048, 4096, 8192)
# Truncation needs this many matching records shorter than the first failure, and the
# failures must sit among the longest records with at most this chance under no pattern.
_MIN_SHORT_RECORDS = 10
_TRUNCATION_P = 1e-3
# An alternative re-measured on this many mismatching records (or all of them) that
# brings every one above T explains the mismatch: if it failed on a tenth of them,
# 30 clean re-measurements would happen by chance less than 5% of the time.
MIN_REMEASURED = 30
# An alternative is first re-measured on this many mismatching records; when it fixes
# none of them it is dropped. A setting that fixed at least half of the mismatches (what
# a finding needs) would leave 8 random ones all unfixed with chance <= 2^-8; the probe
# takes the shortest of them (``remeasure_rows``), which a fix reaches at least as surely.
PROBE_RECORDS = 8
# A mixed store: two groups, each at least this share of the sample (and 3 records), the
# mismatching one's median below T by at least MIXED_GAP and by ten times the matching
# group's distance from 1: a second mode, not the tail of one noisy mode straddling T.
MIXED_MIN_SHARE = 0.01
MIXED_GAP = 0.005
# Settings whose change commonly explains a whole-sample mismatch, for the shell to try.
PROBES: tuple[Setting, ...] = (
    {"prefix": "query: "},
    {"prefix": "passage: "},
    {"prefix": "search_query: "},
    {"prefix": "search_document: "},
    {"pooling": "mean"},
    {"pooling": "cls"},
    {"pooling": "last"},
)


Rule = Callable[[Evidence], Finding | None]


def dimension_mismatch(e: Evidence) -> Finding | None:
    if e.stored_dims == e.candidate_dims:
        return None
    return Finding(
        "dimension_mismatch",
        f"the store holds {e.stored_dims}-dimensional vectors; "
        f"the candidate makes {e.candidate_dims}-dimensional ones",
        f"re-index into a new collection of {e.candidate_dims} dimensions, or choose a "
        f"candidate model that makes {e.stored_dims}-dimensional vectors",
    )


def different_space(e: Evidence) -> Finding | None:
    c = e.comparison
    if c is None or not c.cosine.median < DIFFERENT_SPACE_MEDIAN:
        return None
    if any(_explains(a, e) for a in e.alternatives) or _mixed(e) is not None:
        return None  # a setting maps it back, or a group still matches: not another space
    return Finding(
        "different_space",
        f"cosines are low across the board (median {c.cosine.median:.3f}, "
        f"max {float(c.cosines.max()):.3f}): the candidate's vectors live in another space",
        "re-index: the candidate is a different model (or lacks a projection layer), "
        "and no setting maps one space onto the other",
    )


def truncation_mismatch(e: Evidence) -> Finding | None:
    c = e.comparison
    pattern = _truncation(e)
    measured = _best_alternative(e, "max_tokens")
    if pattern is None or _cuts_shorter(e, pattern):
        if c is not None and measured is not None and _explains(measured, e):
            return _from_alternative(e, c, "truncation_mismatch", measured)  # it worked
        if pattern is None:
            return None
    current = e.candidate_settings.get("max_tokens")
    evidence = (
        f"records up to {pattern.largest_match} tokens match (min cosine "
        f"{pattern.short_min:.6f}); {pattern.failures} of the {pattern.longer} records with "
        f"{pattern.first_failure} or more tokens do not (cosine {pattern.failing_min:.3f}-"
        f"{pattern.failing_max:.3f})"
    )
    if _cuts_shorter(e, pattern):
        return Finding(
            "truncation_mismatch",
            f"{evidence}; the candidate cuts its input at {current} tokens",
            f"raise max_tokens on the candidate above {current}, to the limit the stored "
            "vectors were made with",
        )
    setting = {"max_tokens": pattern.cut}
    explains = pattern.rounded
    if measured is not None and measured.setting == setting:
        explains = _explains(measured, e)
        evidence += f"; measured with {measured.label}: " + _fixed_phrase(measured, e)
    if pattern.rounded:
        suggestion = (
            f"set max_tokens={pattern.cut} on the candidate, the limit the stored "
            "vectors were made with"
        )
    else:
        suggestion = (
            "set max_tokens on the candidate to the limit the stored vectors were made with: "
            f"at most {pattern.first_failure - 1} tokens, near {pattern.largest_match}"
        )
    return Finding("truncation_mismatch", evidence, suggestion, setting, explains)


def normalization_mismatch(e: Evidence) -> Finding | None:
    c = e.comparison
    if c is None or c.distance == "cosine":
        return None  # cosine ranking ignores length
    deviating = _norm_deviating_share(c)
    if deviating < 0.5 or not c.cosine.median >= e.threshold:
        return None  # lengths agree, or the directions disagree too: not the story
    distance = {"dot": "dot product", "l2": "euclidean distance", "l1": "manhattan distance"}
    evidence = (
        f"directions agree (median cosine {c.cosine.median:.4f}) but lengths differ: median "
        f"|candidate|/|stored| = {c.norm_ratio.median:.3f}, {deviating:.0%} of records off by "
        f"more than {NORM_TOLERANCE:.0%}; the store ranks by {distance[c.distance]}, where "
        "length counts"
    )
    no_failures = c.failures(e.threshold) == 0
    if _unit(c.stored_norms):
        return Finding(
            "normalization_mismatch",
            evidence + "; the stored vectors have unit length",
            "set normalize=true on the candidate",
            {"normalize": True},
            no_failures,
        )
    if _unit(c.candidate_norms):
        measured = _best_alternative(e, "normalize")
        explains = (
            no_failures
            and measured is not None
            and measured.setting == {"normalize": False}
            and measured.norm_ratios is not None
            and bool(np.all(np.abs(measured.norm_ratios - 1.0) <= NORM_TOLERANCE))
        )
        return Finding(
            "normalization_mismatch",
            evidence + "; the candidate's vectors have unit length, the stored ones do not",
            "set normalize=false on the candidate",
            {"normalize": False},
            explains,
        )
    return Finding(
        "normalization_mismatch",
        evidence + "; neither side has unit length",
        "re-index, or normalise both the stored and the candidate's vectors",
    )


def prefix_mismatch(e: Evidence) -> Finding | None:
    return _alternative_rule(e, "prefix", "prefix_mismatch")


def pooling_mismatch(e: Evidence) -> Finding | None:
    return _alternative_rule(e, "pooling", "pooling_mismatch")


def mixed_store(e: Evidence) -> Finding | None:
    """Most records match and a distinct group does not, or the reverse: the store was
    written by more than one engine (or setting), and no one setting fixes it."""
    groups = _mixed(e)
    if groups is None or e.comparison is None:
        return None
    c, below = e.comparison, groups
    n, k = c.n, int(below.sum())
    failing, matching = c.cosines[below], c.cosines[~below]
    evidence = (
        f"{n - k} of {n} sampled records ({(n - k) / n:.0%}) match the candidate (median "
        f"cosine {float(np.median(matching)):.4f}); a distinct group of {k} ({k / n:.0%}) "
        f"does not (median cosine {float(np.median(failing)):.3f})"
    )
    places = (_id_range(e, below), _time_range(e, below))
    evidence += "".join(f"; {where}" for where in places if where)
    if 2 * k > n:
        suggestion = (
            "most of the store was written by another engine than the candidate: re-index "
            "it, or use the engine that wrote the majority and re-index the matching group"
        )
    else:
        suggestion = (
            "part of the store was written by another engine or setting: re-index that "
            "group (or the whole store) with one engine, and find what wrote those records"
        )
    return Finding("mixed_store", evidence, suggestion)


def _mixed(e: Evidence) -> npt.NDArray[np.bool_] | None:
    """The mask of the mismatching group when the sample splits into two distinct ones."""
    c = e.comparison
    if c is None:
        return None
    below = c.below(e.threshold)
    smallest = max(3, math.ceil(MIXED_MIN_SHARE * c.n))
    k = int(below.sum())
    if min(k, c.n - k) < smallest:
        return None
    matching = float(np.median(c.cosines[~below]))
    gap = max(MIXED_GAP, 10.0 * (1.0 - matching))
    if float(np.median(c.cosines[below])) > e.threshold - gap:
        return None  # the tail of one noisy mode (quantisation), not a second engine
    if _truncation(e) is not None:
        return None  # the long records fail: one engine that cuts them, not two engines
    if any(_fixed(a, e)[1] and bool(np.all(a.cosines >= e.threshold)) for a in e.alternatives):
        return None  # one setting fixes the group and keeps the controls: one engine
    return below


def _id_range(e: Evidence, below: npt.NDArray[np.bool_]) -> str:
    """Where the mismatching ids sit among the matching ones (integer ids only)."""
    if len(e.ids) != below.size or not all(isinstance(i, int) for i in e.ids):
        return ""
    ids = np.asarray(e.ids, dtype=np.int64)
    bad, good = ids[below], ids[~below]
    where = f"the mismatching records have ids {bad.min()}-{bad.max()}"
    if bad.min() > good.max():
        return f"{where}, all above the matching ones ({good.min()}-{good.max()}): the newest"
    if bad.max() < good.min():
        return f"{where}, all below the matching ones ({good.min()}-{good.max()}): the oldest"
    return f"{where}, scattered among the matching ones ({good.min()}-{good.max()})"


def _time_range(e: Evidence, below: npt.NDArray[np.bool_]) -> str:
    t = e.times
    if t is None or t.seconds.size != below.size:
        return ""
    bad, good = t.seconds[below], t.seconds[~below]
    bad, good = bad[np.isfinite(bad)], good[np.isfinite(good)]
    if bad.size == 0:
        return ""
    text = f"their {t.field} runs from {_moment(bad.min())} to {_moment(bad.max())}"
    if good.size:
        text += f" (the matching ones: {_moment(good.min())} to {_moment(good.max())})"
    return text


def _moment(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def quantization_noise(e: Evidence) -> Finding | None:
    c = e.comparison
    if c is None:
        return None
    low, high = QUANTIZATION_MEDIAN
    s = c.cosine
    if not (low <= s.median < high and s.median - s.p5 <= QUANTIZATION_SPREAD):
        return None
    if _truncation(e) is not None or normalization_mismatch(e) is not None:
        return None
    if any(_explains(a, e) for a in e.alternatives):
        return None
    suggestion = (
        "nothing to set: the bound decides whether this precision is close enough"
        if s.median >= e.threshold
        else "use a higher-precision model file (e.g. Q8_0 or F16), or re-index with this one"
    )
    return Finding(
        "quantization_noise",
        f"cosines cluster tightly below 1 (median {s.median:.4f}, p5 {s.p5:.4f}, min "
        f"{s.min:.4f}) with no length or norm pattern, as lower-precision weights give",
        suggestion,
    )


RULES: tuple[Rule, ...] = (
    dimension_mismatch,
    different_space,
    truncation_mismatch,
    normalization_mismatch,
    prefix_mismatch,
    pooling_mismatch,
    mixed_store,
    quantization_noise,
)


def diagnose(e: Evidence, rules: tuple[Rule, ...] = RULES) -> tuple[Finding, ...]:
    """Self-check findings first, then every rule that fires, in ``rules`` order."""
    return e.selfcheck + tuple(f for rule in rules if (f := rule(e)) is not None)


def settings_to_try(e: Evidence) -> tuple[Setting, ...]:
    """Candidate settings worth re-measuring on ``e.mismatching()`` rows, not yet measured.

    A truncation pattern's cut, to confirm it, or, when the candidate itself cuts
    shorter, the next common limits above its own; otherwise, while records mismatch for
    no length reason, the common prefix and pooling probes that differ from the
    candidate's current settings (an empty prefix too, when the candidate uses one).
    """
    c = e.comparison
    if c is None or c.failures(e.threshold) == 0:
        return ()
    measured = [a.setting for a in e.alternatives]
    pattern = _truncation(e)
    wanted: list[Setting]
    if pattern is not None and _cuts_shorter(e, pattern):
        current = int(e.candidate_settings["max_tokens"])
        limits = [v for v in COMMON_MAX_TOKENS if v > current]
        below = [v for v in limits if v < pattern.longest][:3]
        above = [v for v in limits if v >= pattern.longest][:1]  # no truncation at all
        wanted = [{"max_tokens": v} for v in below + above]
    elif pattern is not None:
        wanted = [{"max_tokens": pattern.cut}] if pattern.rounded else []
    else:
        wanted = [p for p in PROBES if not _is_current(p, e.candidate_settings)]
        if e.candidate_settings.get("prefix"):
            wanted.insert(0, {"prefix": ""})
    return tuple(s for s in wanted if s not in measured)


@dataclass(frozen=True)
class _Truncation:
    cut: int
    rounded: bool  # cut is a common limit consistent with the data
    largest_match: int
    first_failure: int
    failures: int
    longer: int  # records with first_failure or more tokens
    longest: int
    short_min: float
    failing_min: float
    failing_max: float


def _truncation(e: Evidence) -> _Truncation | None:
    """Records below some length all match and the failures sit among the longest ones.

    The chance that k failures land among the m longest of n records when length plays
    no part is C(m, k) / C(n, k); the pattern needs k >= 2 and that chance below 1e-3.
    """
    c = e.comparison
    if c is None or c.token_counts is None:
        return None
    tokens = c.token_counts
    below = c.below(e.threshold)
    k = int(below.sum())
    if k < 2 or k == c.n:
        return None  # one failing record is no pattern
    first_failure = int(tokens[below].min())
    short = tokens < first_failure
    longer = c.n - int(short.sum())
    if int(short.sum()) < _MIN_SHORT_RECORDS:
        return None
    if _log_comb(longer, k) - _log_comb(c.n, k) >= math.log(_TRUNCATION_P):
        return None
    cut, rounded = _cut(c.cosines, tokens, short, first_failure, e.threshold)
    failing = c.cosines[below]
    return _Truncation(
        cut=cut,
        rounded=rounded,
        largest_match=int(tokens[short].max()),
        first_failure=first_failure,
        failures=k,
        longer=longer,
        longest=int(tokens.max()),
        short_min=float(c.cosines[short].min()),
        failing_min=float(failing.min()),
        failing_max=float(failing.max()),
    )


def _cuts_shorter(e: Evidence, pattern: _Truncation) -> bool:
    """The candidate's own limit is where the failures start: the stored side kept more."""
    current = e.candidate_settings.get("max_tokens")
    return isinstance(current, int) and current < pattern.first_failure


def _cut(
    cosines: Floats, tokens: Ints, short: npt.NDArray[np.bool_], first_failure: int, t: float
) -> tuple[int, bool]:
    """The truncation limit to suggest, rounded to a common value where the data allow.

    Records just past the limit lose a few tokens and may still match, so the last
    matching length can overshoot the limit. Where fidelity visibly falls from some
    length on (most longer records sit well below the spread of the shorter half),
    the limit lies before that length; otherwise before the first failing one. A common
    value within 10% below the last good length and before that boundary is taken;
    without one, the last good length is suggested, unrounded.
    """
    reference = cosines[short & (tokens <= np.median(tokens[short]))]
    median = float(np.median(reference))
    spread = median - float(np.percentile(reference, 5))
    degraded = cosines < max(t, median - 10.0 * spread)  # every failure included
    first_degraded = int(tokens[degraded].min())
    beyond = tokens >= first_degraded
    if np.any(tokens < first_degraded) and np.mean(degraded[beyond]) >= 0.5:
        boundary = first_degraded
    else:
        boundary = first_failure
    last_good = int(tokens[tokens < boundary].max())
    options = [v for v in COMMON_MAX_TOKENS if 0.9 * last_good <= v < boundary]
    if options:
        return min(options, key=lambda v: abs(v - last_good)), True
    return last_good, False


def _log_comb(n: int, k: int) -> float:
    if k > n:
        return -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _norm_deviating_share(c: Comparison) -> float:
    ratios = c.norm_ratios[np.isfinite(c.norm_ratios)]
    if ratios.size == 0:
        return 0.0
    return float(np.mean(np.abs(ratios - 1.0) > NORM_TOLERANCE))


def _unit(norms: Floats) -> bool:
    finite = norms[np.isfinite(norms)]
    return bool(finite.size) and bool(np.all(np.abs(finite - 1.0) <= 1e-3))


def remeasure_rows(e: Evidence) -> Ints:
    """The mismatching rows an alternative re-measures: the first ``MIN_REMEASURED`` in
    sample order (a uniform draw, which that bound needs), their ``PROBE_RECORDS``
    fewest-token ones first, since those form the probe.

    A probe costs its tokens (Q4_0, 2 cores: 8 of the demo corpus's shortest texts
    0.04 s, 8 at random 0.34 s), and short texts lose nothing as evidence: the right
    setting reproduces the stored vectors up to the candidate's own noise, which is
    smallest on short texts (Q4_0 against F16: cosine falls with length, correlation
    -0.52), and a token limit fixes the shortest texts it fixes at all.
    """
    rows = e.mismatching()[:MIN_REMEASURED]
    c = e.comparison
    if c is None or c.token_counts is None:
        return rows
    probe = np.argsort(c.token_counts[rows], kind="stable")[:PROBE_RECORDS]
    rest = np.ones(rows.size, dtype=np.bool_)
    rest[probe] = False
    return np.concatenate([rows[probe], rows[rest]])


def worth_remeasuring(a: Alternative, e: Evidence) -> bool:
    """True when ``a``, measured on the probe (the first ``PROBE_RECORDS`` rows of
    ``remeasure_rows``), fixed at least one of them: only then is it re-measured on the
    rest."""
    return _fixed(a, e)[0] > 0


def explains_every_mismatch(a: Alternative, e: Evidence) -> bool:
    """True when ``a`` alone brings every mismatch above T: the shell stops trying more."""
    return _explains(a, e)


def _explains(a: Alternative, e: Evidence) -> bool:
    """Every re-measured row matches, and they include every mismatching row or at
    least ``MIN_REMEASURED`` of them."""
    _, remeasured = _fixed(a, e)
    enough = remeasured >= min(e.mismatching().size, MIN_REMEASURED)
    return remeasured > 0 and enough and bool(np.all(a.cosines >= e.threshold))


def _fixed(a: Alternative, e: Evidence) -> tuple[int, int]:
    """Of the mismatching rows the alternative re-measured, how many now match, of how many."""
    on_mismatching = np.isin(a.indices, e.mismatching())
    fixed = int(np.count_nonzero(a.cosines[on_mismatching] >= e.threshold))
    return fixed, int(np.count_nonzero(on_mismatching))


def _fixed_phrase(a: Alternative, e: Evidence) -> str:
    fixed, remeasured = _fixed(a, e)
    return f"{fixed} of {remeasured} re-measured mismatching records reach cosine {e.threshold:g}"


def _best_alternative(e: Evidence, key: str) -> Alternative | None:
    """The measured alternative changing only ``key`` that fixes the most records."""
    options = [a for a in e.alternatives if set(a.setting) == {key}]
    if not options:
        return None
    return max(
        options, key=lambda a: (_explains(a, e), _fixed(a, e)[0], float(np.median(a.cosines)))
    )


def _alternative_rule(e: Evidence, key: str, cause: Cause) -> Finding | None:
    """A finding when changing ``key`` fixes at least half of the re-measured mismatches."""
    best = _best_alternative(e, key)
    if best is None or e.comparison is None:
        return None
    fixed, remeasured = _fixed(best, e)
    if remeasured == 0 or fixed * 2 < remeasured:
        return None
    return _from_alternative(e, e.comparison, cause, best)


def _from_alternative(e: Evidence, c: Comparison, cause: Cause, a: Alternative) -> Finding:
    """A finding from a measured alternative that re-measured some mismatching rows."""
    on_mismatching = np.isin(a.indices, e.mismatching())
    before = float(np.median(c.cosines[a.indices[on_mismatching]]))
    after = float(np.median(a.cosines[on_mismatching]))
    return Finding(
        cause,
        f"with {a.label} on the candidate, {_fixed_phrase(a, e)} "
        f"(median cosine {before:.3f} -> {after:.3f})",
        f"set {a.label} on the candidate",
        dict(a.setting),
        _explains(a, e),
    )


def _is_current(setting: Setting, current: Setting) -> bool:
    return all(current.get(key) == value for key, value in setting.items())
