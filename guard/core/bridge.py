"""Bridges: a linear map from the candidate's space onto the stored one, fitted and proved.

When a candidate "lives in another space" the cause is often linear: a GGUF conversion
that drops the model's dense projection layer, a rotated space. Then stored ~ candidate
@ matrix + bias, and a matrix saves the re-index. Maps are fitted on one part of the
sample and judged only on records they were not fitted on (``split``), with the same
Clopper-Pearson bound as every verdict; the simplest map that passes wins.

Kinds, simplest first:
- ``orthogonal``: a scaled (semi-)orthogonal matrix, no bias (Procrustes): rotations
  and isometric projections, d_out * d_in constrained parameters;
- ``affine``: least squares with a bias and a ridge penalty chosen on a validation part
  of the fitting rows (never on the held-out rows): any linear projection.
A low-rank map adds nothing here: ridge already tames the directions the fitting rows
barely span, and a rank search would spend the same fitting rows on one more choice.

Stores that rank by cosine ignore length, and often hold unit vectors (Qdrant normalises
cosine collections): there each stored row may be rescaled freely, and the fit
alternates between the map and those per-row scales (``rescale_rows``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from guard.core.cosines import Floats, Ints, Summary, rowwise_cosine
from guard.core.stats import (
    APPROVE_FIRST,
    Bound,
    Look,
    approval_budgets,
    shares,
    smallest_passing,
)

MapKind = Literal["orthogonal", "affine"]
KINDS: tuple[MapKind, ...] = ("orthogonal", "affine")
# Ridge penalties tried, as multiples of the mean eigenvalue of the centred Gram matrix.
RIDGE_GRID: tuple[float, ...] = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# Share of the fitting rows held back to choose the ridge penalty.
RIDGE_VALIDATION_SHARE = 0.2
# Rounds of alternating between the map and the stored rows' free scales, at most, and
# the relative change of the scales at which they count as settled. The alternation
# converges linearly: 3 rounds left 18 of 1,000 held-out rows of a rotated store below
# 0.99, 10 rounds none (min 0.9998), 30 rounds min 1.0000.
RESCALE_ITERATIONS = 50
RESCALE_SETTLED = 1e-6
# The bridge's first fit: rows per parameter of one output coordinate (see plan_bridge),
# and the held-out rows of its first look, which only stops a hopeless bridge.
FIT_ROWS_PER_PARAMETER = 1.5
FIRST_HELD_OUT = 100
# Up to this many fitting rows the affine alternation runs on n x n matrices (two of
# them, 8 * 2 * n^2 bytes: 256 MB at 4,000), beyond it on the rows themselves.
GRAM_ROWS = 4000

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class LinearMap:
    """``candidate @ matrix + bias`` lands in the stored space."""

    kind: MapKind
    matrix: Matrix  # (input_dims, output_dims)
    bias: Floats  # (output_dims,)
    parameters: dict[str, float] = field(default_factory=dict)

    @property
    def input_dims(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def output_dims(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, vectors: npt.ArrayLike) -> Matrix:
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dims:
            raise ValueError(f"the map takes {self.input_dims} dimensions, got {x.shape}")
        out: Matrix = x @ self.matrix + self.bias
        return out


def split(n: int, fit: int) -> tuple[Ints, Ints]:
    """Rows ``[0, fit)`` fit the maps, rows ``[fit, n)`` judge them: disjoint by construction.

    The shell's sample is uniform and in random order, so both parts are uniform samples
    and every prefix of the held-out part is one too.
    """
    if not 0 < fit < n:
        raise ValueError(f"cannot fit on {fit} of {n} rows and hold any out")
    return np.arange(fit, dtype=np.int64), np.arange(fit, n, dtype=np.int64)


def fit_orthogonal(x: npt.ArrayLike, y: npt.ArrayLike, *, rescale_rows: bool = False) -> LinearMap:
    """Scaled orthogonal Procrustes: ``s * Q`` with Q's columns (or rows) orthonormal."""
    xs, ys = _pair(x, y)
    target, scales = ys, np.ones(ys.shape[0])
    if rescale_rows:  # start from the scales a pure rotation settles at (one round fewer)
        lengths = np.linalg.norm(ys, axis=1)
        scales = _scales(np.linalg.norm(xs, axis=1) * lengths, lengths**2)
        target = ys * scales[:, None]
    for _ in range(RESCALE_ITERATIONS if rescale_rows else 1):
        rotation, singular_sum = _polar(xs.T @ target)
        scale = singular_sum / max(float(np.sum(xs * xs)), 1e-300)
        matrix = scale * rotation
        if rescale_rows:
            target, scales, settled = _rescaled(ys, xs @ matrix, scales)
            if settled:
                break
    return LinearMap("orthogonal", matrix, np.zeros(ys.shape[1]), {"scale": scale})


def fit_affine(
    x: npt.ArrayLike, y: npt.ArrayLike, *, ridge: float, rescale_rows: bool = False
) -> LinearMap:
    """Ridge least squares with a bias; ``ridge`` is relative to the data's mean eigenvalue."""
    xs, ys = _pair(x, y)
    return _fit_affine(_Centred.of(xs), ys, ridge=ridge, rescale_rows=rescale_rows)


@dataclass(frozen=True, eq=False)
class _Centred:
    """Candidate rows, centred, and the eigen-decomposition of their Gram matrix: one
    decomposition serves every ridge penalty tried on the same rows."""

    mean: Floats
    rows: Matrix
    values: Floats
    vectors: Matrix

    @classmethod
    def of(cls, xs: Matrix) -> _Centred:
        mean = xs.mean(axis=0)
        rows = xs - mean
        values, vectors = np.linalg.eigh(rows.T @ rows)
        return cls(mean, rows, values, vectors)

    def inverted(self, ridge: float) -> Floats:
        """The eigenvalues of ``pinv(gram + penalty * I)``, with pinv's cutoff (1e-15 of
        the largest), which copes with ridge 0 on rows that do not span the space."""
        shifted = self.values + ridge * float(self.values.sum()) / self.values.size
        size = np.abs(shifted)
        keep = size > 1e-15 * float(size.max())
        result: Floats = np.where(keep, 1.0 / np.where(keep, shifted, 1.0), 0.0)
        return result

    def inverse(self, ridge: float) -> Matrix:
        """``pinv(gram + penalty * I)``."""
        result: Matrix = (self.vectors * self.inverted(ridge)) @ self.vectors.T
        return result


def _fit_affine(x: _Centred, ys: Matrix, *, ridge: float, rescale_rows: bool) -> LinearMap:
    inverse = x.inverse(ridge)
    target, scales = ys, np.ones(ys.shape[0])
    alternate = rescale_rows and ys.shape[0] > GRAM_ROWS
    if rescale_rows and not alternate:
        target = ys * _settled_scales(x.rows, inverse, ys)[:, None]
    for _ in range(RESCALE_ITERATIONS if alternate else 1):
        mean_y = target.mean(axis=0)
        matrix = inverse @ (x.rows.T @ (target - mean_y))
        bias = mean_y - x.mean @ matrix
        if alternate:
            mapped = (x.rows + x.mean) @ matrix + bias
            target, scales, settled = _rescaled(ys, mapped, scales)
            if settled:
                break
    return LinearMap("affine", matrix, bias, {"ridge": ridge})


def _settled_scales(centred: Matrix, inverse: Matrix, ys: Matrix) -> Floats:
    """The stored rows' scales that the alternation of ``fit_affine`` fits its map to last.

    The fitted rows are ``hat @ target`` (``hat = centred @ inverse @ centred.T + 1/n``)
    and ``target = scales * ys``, so row i's dot product with its fitted row is
    ``(hat * ys @ ys.T)[i] @ scales``: every round costs n * n, not a solve over the
    vectors' dimensions (40 times faster on 550 rows of 384 -> 768)."""
    n = centred.shape[0]
    coupling = centred @ inverse @ centred.T + 1.0 / n
    products = ys @ ys.T
    squares = np.diag(products).copy()
    coupling *= products
    del products
    scales = np.ones(n)
    for round_ in range(RESCALE_ITERATIONS):
        after = _scales(coupling @ scales, squares)
        if _moved(after, scales) < RESCALE_SETTLED or round_ == RESCALE_ITERATIONS - 1:
            return scales
        scales = after
    return scales


def _fit_with_chosen_ridge(
    xs: Matrix, ys: Matrix, *, threshold: float, rescale_rows: bool
) -> LinearMap:
    """The affine map, fitted on all of these rows, at the penalty ``_best_ridge`` picks.

    The decomposition of all rows is made once, and the map fitted to settle the rows'
    free lengths is the answer itself when the smallest penalty wins (the usual case for
    a linear change)."""
    whole = _Centred.of(xs)
    settled = None
    if rescale_rows:  # settle the stored rows' free lengths once, then one solve per ridge
        settled = _fit_affine(whole, ys, ridge=min(RIDGE_GRID), rescale_rows=True)
        scaled, _, _ = _rescaled(ys, settled.apply(xs), np.ones(ys.shape[0]))
    else:
        scaled = ys
    ridge = _best_ridge(xs, scaled, threshold=threshold)
    if settled is not None and ridge == min(RIDGE_GRID):
        return settled
    return _fit_affine(whole, ys, ridge=ridge, rescale_rows=rescale_rows)


def _best_ridge(xs: Matrix, ys: Matrix, *, threshold: float) -> float:
    """The penalty whose map, fitted on the first part of these rows, leaves the fewest of
    the last ``RIDGE_VALIDATION_SHARE`` below ``threshold`` (then the best p1 cosine).

    Only fitting rows take part (the rows' free lengths are settled on all of them); the
    held-out rows that judge the map never do. Each penalty's map predicts the validation
    rows straight from the eigenbasis of the fitting rows (``(x - mean) @ V @ diag(1 /
    (values + penalty)) @ V.T @ X.T @ Y``): one small product, not a fit and an apply."""
    n = xs.shape[0]
    held = max(1, round(n * RIDGE_VALIDATION_SHARE))
    fit_rows, val_rows = split(n, n - held)
    fitting = _Centred.of(xs[fit_rows])
    mean_y = ys[fit_rows].mean(axis=0)
    projected = fitting.vectors.T @ (fitting.rows.T @ (ys[fit_rows] - mean_y))
    validation = (xs[val_rows] - fitting.mean) @ fitting.vectors
    scores = []
    for ridge in RIDGE_GRID:
        predicted = (validation * fitting.inverted(ridge)) @ projected + mean_y
        cosines, _ = rowwise_cosine(ys[val_rows], predicted)
        cosines = np.nan_to_num(cosines, nan=-1.0)
        scores.append(
            (int(np.count_nonzero(cosines < threshold)), -float(np.percentile(cosines, 1)))
        )
    return RIDGE_GRID[min(range(len(RIDGE_GRID)), key=lambda i: scores[i])]


def fit(
    kind: MapKind, x: npt.ArrayLike, y: npt.ArrayLike, *, threshold: float, rescale_rows: bool
) -> LinearMap:
    """One map of ``kind`` from candidate rows ``x`` to stored rows ``y``."""
    if kind == "orthogonal":
        return fit_orthogonal(x, y, rescale_rows=rescale_rows)
    xs, ys = _pair(x, y)
    return _fit_with_chosen_ridge(xs, ys, threshold=threshold, rescale_rows=rescale_rows)


@dataclass(frozen=True)
class BridgeLook:
    """One planned look: maps fitted on the sample's rows ``[0, fit)``, judged on the
    next ``held_out`` rows, with each map kind's share of the approval budget (0: this
    look can only stop the bridge) and of the budget for a failure."""

    fit: int
    held_out: int
    approve_alpha: float
    reject_alpha: float

    @property
    def rows(self) -> int:
        """The sample's rows this look needs embedded."""
        return self.fit + self.held_out


@dataclass(frozen=True)
class BridgePlan:
    """The bridge's looks, in order, planned before anything is embedded for it.

    ``looks`` is empty when none could ever approve (``reason`` says why): then nothing
    is fitted."""

    looks: tuple[BridgeLook, ...]
    kinds: tuple[MapKind, ...]
    confidence: float
    allowed_share: float
    population: int | None
    available: int
    fit: int  # the first fit: FIT_ROWS_PER_PARAMETER rows per parameter
    reason: str = ""

    @property
    def can_approve(self) -> bool:
        return any(look.approve_alpha > 0.0 for look in self.looks)

    @property
    def spent(self) -> float:
        """The approval budget of every look and kind together: at most 1 - confidence."""
        return sum(look.approve_alpha for look in self.looks) * len(self.kinds)

    def bound(self, look: int, held_failures: int, fit_failures: int, *, threshold: float) -> Bound:
        """The bound on the store's share below ``threshold`` once bridged by the map of
        look ``look`` (1-based), from ``held_failures`` among its held-out rows and
        ``fit_failures`` among the rows it was fitted on.

        With the store's size N known, the fitting rows' own cosines are measured, not
        sampled: their failures count as they are, and the held-out rows, drawn without
        repeats from the other N - fit records, bound those exactly (hypergeometric; a
        census when they are all of them). Without N, the held-out rows alone bound the
        share (binomial)."""
        if not 1 <= look <= len(self.looks):
            raise ValueError(f"look {look} of a bridge plan of {len(self.looks)}")
        planned = self.looks[look - 1]
        if not 0 <= fit_failures <= planned.fit:
            raise ValueError(f"{fit_failures} failures among {planned.fit} fitting rows")
        upper_alpha = planned.approve_alpha or planned.reject_alpha
        rest = None if self.population is None else self.population - planned.fit
        n = planned.held_out
        low, _, method = shares(held_failures, n, 1.0 - planned.reject_alpha, rest)
        _, high, _ = shares(held_failures, n, 1.0 - upper_alpha, rest)
        lower, upper = low, high
        if rest is not None and self.population is not None:
            lower = (fit_failures + round(low * rest)) / self.population
            upper = (fit_failures + round(high * rest)) / self.population
        census = method == "census"  # every record measured, the fitting ones included
        return Bound(
            confidence=self.confidence,
            n=planned.rows if census else planned.held_out,
            failures=fit_failures + held_failures if census else held_failures,
            threshold=threshold,
            allowed_share=self.allowed_share,
            share_below_threshold_lower=lower,
            share_below_threshold_upper=upper,
            rounds=look,
            planned_rounds=len(self.looks),
            exact=census,
            method=method,
            approve_alpha=planned.approve_alpha,
            reject_alpha=planned.reject_alpha,
            looks=tuple(Look(p.rows, p.approve_alpha, p.reject_alpha) for p in self.looks),
            population=self.population,
        )


def parameters(input_dims: int) -> int:
    """Parameters of one output coordinate of the most general map (affine: d_in + 1).
    The orthogonal map is cheaper to fit, not to identify: it too needs rows spanning
    the candidate's space, so both kinds are fitted on the same rows."""
    return input_dims + 1


def plan_bridge(
    available: int,
    input_dims: int,
    *,
    allowed_share: float,
    confidence: float,
    population: int | None = None,
    kinds: tuple[MapKind, ...] = KINDS,
) -> BridgePlan:
    """The bridge's looks over a sample of ``available`` rows (uniform, random order).

    1. Fit on ``FIT_ROWS_PER_PARAMETER`` rows per parameter: enough for a linear relation
       to be recovered exactly (a dropped Dense layer: held-out median 1.000), while a
       different model stays far off.
    2. A first look on ``FIRST_HELD_OUT`` held-out rows, which cannot approve: it only
       stops a hopeless bridge (its lower bound already above ``allowed_share``).
    3. The same maps on held-out rows grown to the fewest that approve with
       ``APPROVE_FIRST`` of the budget and no failure.
    4. The fit grown to every row judged so far, judged on all the rows left, when they
       can still approve with the rest of the budget.

    The approval budget 1 - confidence is spent over the looks that can approve
    (``APPROVE_FIRST`` to the first, the rest to the second), each look's share split
    evenly over the map kinds: a union bound over every (look, kind), valid whichever
    looks are taken. When even the first fit and the fewest held-out rows that could
    approve exceed the sample, the plan has no looks and says why.
    """
    if available < 0 or input_dims < 1:
        raise ValueError("need a sample and the candidate's dimensions")
    alpha = 1.0 - confidence
    fit0 = math.ceil(FIT_ROWS_PER_PARAMETER * parameters(input_dims))

    def plan(looks: tuple[BridgeLook, ...], reason: str = "") -> BridgePlan:
        return BridgePlan(
            looks, kinds, confidence, allowed_share, population, available, fit0, reason
        )

    per_kind = APPROVE_FIRST * alpha / len(kinds)
    first = _fewest_held(fit0, available, per_kind, allowed_share, population)
    if first is None:
        least = _fewest_held(fit0, None, per_kind, allowed_share, population)
        held = f"{least} held out" if least is not None else "enough held out"
        return plan(
            (),
            f"a sample of {available} records is too small for a bridge: {fit0} to fit "
            f"({FIT_ROWS_PER_PARAMETER:g} per parameter of a {input_dims}-input map) and "
            f"{held} to approve",
        )
    sizes = [(fit0, FIRST_HELD_OUT)] if first > FIRST_HELD_OUT else []
    approving = [(fit0, first)]
    fit1 = fit0 + first
    later = _fewest_held(fit1, available, (1.0 - APPROVE_FIRST) * alpha / len(kinds),
                         allowed_share, population)  # fmt: skip
    if later is not None:
        approving.append((fit1, available - fit1))
    budgets = approval_budgets(len(approving), alpha)
    total = len(sizes) + len(approving)
    reject = alpha / total / len(kinds)
    looks = tuple(BridgeLook(f, h, 0.0, reject) for f, h in sizes) + tuple(
        BridgeLook(f, h, budget / len(kinds), reject)
        for (f, h), budget in zip(approving, budgets, strict=True)
    )
    return plan(looks)


def _fewest_held(
    fit: int, available: int | None, alpha: float, allowed_share: float, population: int | None
) -> int | None:
    """The fewest held-out rows after ``fit`` fitting rows whose bound approves at
    ``alpha`` with no failure anywhere (as ``BridgePlan.bound`` reckons it), within
    ``available`` rows (None: only the store limits them); None when none do."""
    rest = None if population is None else population - fit
    room = None if available is None else available - fit
    if rest is not None:
        room = rest if room is None else min(room, rest)
    if room is not None and room < 1:
        return None

    def approves(held: int) -> bool:
        _, upper, _ = shares(0, held, 1.0 - alpha, rest)
        if rest is None or population is None:
            return upper <= allowed_share
        return round(upper * rest) / population <= allowed_share

    if room is None:
        high = 1
        while not approves(high):
            high *= 2
    elif approves(room):
        high = room
    else:
        return None
    return smallest_passing(approves, 1, high)


@dataclass(frozen=True, eq=False)
class Trial:
    """One map judged on held-out rows: their cosines after the map, and the bound."""

    bridge: LinearMap
    fitted_on: int
    held_out: Ints  # rows of the sample, none of them among the fitting rows
    cosines: Floats
    bound: Bound

    @property
    def validated_on(self) -> int:
        return int(self.held_out.size)

    @property
    def summary(self) -> Summary:
        return Summary.of(self.cosines)

    @property
    def held_out_failures(self) -> int:
        """Held-out records below the threshold the bound was made for."""
        return int(np.count_nonzero(self.cosines < self.bound.threshold))


def judge(
    bridge: LinearMap,
    *,
    plan: BridgePlan,
    look: int,
    candidate: npt.ArrayLike,
    stored: npt.ArrayLike,
    threshold: float,
) -> Trial:
    """The bound of look ``look`` for ``bridge``, fitted on that look's fitting rows.

    ``candidate`` and ``stored`` are the sample's first rows, at least the look's
    ``rows``: the first ``fit`` are the ones the map was fitted on (their failures count
    as measured), the next ``held_out`` judge it."""
    planned = plan.looks[look - 1]
    xs, ys = np.asarray(candidate), np.asarray(stored)
    if min(len(xs), len(ys)) < planned.rows:
        raise ValueError(f"look {look} needs {planned.rows} rows, got {len(xs)} and {len(ys)}")
    rows = slice(0, planned.rows)
    cosines, _ = rowwise_cosine(ys[rows], bridge.apply(xs[rows]))
    cosines = np.nan_to_num(cosines, nan=-1.0)
    fitted, held = cosines[: planned.fit], cosines[planned.fit :]
    result = plan.bound(
        look,
        int(np.count_nonzero(held < threshold)),
        int(np.count_nonzero(fitted < threshold)),
        threshold=threshold,
    )
    return Trial(
        bridge,
        planned.fit,
        np.arange(planned.fit, planned.rows, dtype=np.int64),
        held,
        result,
    )


def _polar(m: Matrix) -> tuple[Matrix, float]:
    """The orthogonal factor of ``m`` (``U @ V.T`` of its SVD) and the sum of its singular
    values, from the eigen-decomposition of the smaller Gram matrix: 2.5 times faster
    than the SVD on 384 x 768 and equal to 1e-14 (1e-9 for a square matrix of condition
    100). Directions with singular values under 1e-6 of the largest carry no fitted
    signal and are left out."""
    wide = m.shape[0] <= m.shape[1]
    values, vectors = np.linalg.eigh(m @ m.T if wide else m.T @ m)
    keep = values > 1e-12 * max(float(values.max()), 1e-300)
    singular = np.sqrt(values[keep])
    basis = vectors[:, keep]
    inverse_root = (basis / singular) @ basis.T
    rotation: Matrix = inverse_root @ m if wide else m @ inverse_root
    return rotation, float(singular.sum())


def _pair(x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[Matrix, Matrix]:
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.ndim != 2 or ys.ndim != 2 or xs.shape[0] != ys.shape[0] or xs.shape[0] < 2:
        raise ValueError(f"need two or more paired rows, got {xs.shape} and {ys.shape}")
    return xs, ys


def _rescaled(stored: Matrix, mapped: Matrix, before: Floats) -> tuple[Matrix, Floats, bool]:
    """Each stored row scaled to best match its mapped row (direction kept, length free),
    the scales, and whether they moved less than ``RESCALE_SETTLED`` since ``before``."""
    scales = _scales(np.sum(stored * mapped, axis=1), np.sum(stored * stored, axis=1))
    scaled: Matrix = stored * scales[:, None]
    return scaled, scales, _moved(scales, before) < RESCALE_SETTLED


def _scales(dots: Floats, squares: Floats) -> Floats:
    """Per-row scales from the rows' dot products with their fitted rows and their squared
    lengths, with mean absolute value 1 (map and rows shrink together)."""
    scales = np.where(squares > 0, dots / np.where(squares > 0, squares, 1.0), 1.0)
    result: Floats = scales / max(float(np.mean(np.abs(scales))), 1e-300)
    return result


def _moved(scales: Floats, before: Floats) -> float:
    return float(np.max(np.abs(scales - before)) / max(float(np.max(np.abs(scales))), 1e-300))
