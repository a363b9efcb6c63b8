"""Is the candidate itself sound? Checks on its own vectors, independent of the store.

A candidate that fails any of these is rejected whatever the comparison says: vectors
that are NaN, zero, shared by different texts, or different on every call cannot be
searched reliably. The shell produces the arrays (including the re-runs); these
functions only look at them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from guard.core.cosines import rowwise_cosine
from guard.core.findings import Finding
from guard.records import as_vectors

# Distinct texts whose vectors agree beyond this cosine are counted as one vector.
COLLISION_COSINE = 0.99999
# Re-running or re-batching the same texts may move a vector by this much (1 - cosine).
# llama.cpp's quantised kernels take other paths for one sequence than for several, and
# move vectors by up to 2e-4 (measured on all-MiniLM-L6-v2: Q8_0 1.2e-4, Q4_0 1.3e-4,
# Q4_K_M 1.9e-4); that is far inside any useful threshold. Padding or attention leaking
# between inputs moves them by orders of magnitude more.
CONSISTENCY_TOLERANCE = 1e-3
# A vector shorter than this has no direction.
_ZERO_NORM = 1e-12


def nan_output(*arrays: npt.ArrayLike) -> Finding | None:
    """Rows holding NaN or infinity, over every array the candidate produced."""
    rows = [as_vectors(a) for a in arrays]
    total = sum(len(r) for r in rows)
    bad = sum(int(np.count_nonzero(~np.isfinite(r).all(axis=1))) for r in rows)
    if bad == 0:
        return None
    return Finding(
        "nan_output",
        f"{bad} of {total} candidate vectors contain NaN or infinity",
        "the engine is broken for these inputs: check the model file, the engine version "
        "and its GPU backend",
    )


def zero_vectors(*arrays: npt.ArrayLike) -> Finding | None:
    """Finite rows of (near) zero length, over every array the candidate produced."""
    rows = [as_vectors(a).astype(np.float64) for a in arrays]
    total = sum(len(r) for r in rows)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN rows are nan_output's
        bad = sum(int(np.count_nonzero(np.linalg.norm(r, axis=1) < _ZERO_NORM)) for r in rows)
    if bad == 0:
        return None
    return Finding(
        "zero_vectors",
        f"{bad} of {total} candidate vectors are all zeros",
        "check the engine: zero vectors come from failed pooling or inputs emptied by the "
        "tokenizer, and they match nothing",
    )


def collisions(
    vectors: npt.ArrayLike,
    texts: Sequence[str],
    stored: npt.ArrayLike | None = None,
) -> Finding | None:
    """Distinct texts that get the same vector.

    Pairs whose stored vectors coincide as well (e.g. long texts sharing a prefix
    beyond the truncation limit of both engines) are the data's doing, not the
    candidate's, and are left out when ``stored`` is given.
    """
    x = as_vectors(vectors).astype(np.float64)
    if len(texts) != len(x):
        raise ValueError(f"{len(texts)} texts for {len(x)} vectors")
    pairs = _close_pairs(x)
    pairs = [(i, j) for i, j in pairs if texts[i] != texts[j]]
    if stored is not None and pairs:
        s = as_vectors(stored)
        first, second = zip(*pairs, strict=True)
        same, _ = rowwise_cosine(s[list(first)], s[list(second)])
        pairs = [p for p, cos in zip(pairs, same, strict=True) if cos <= COLLISION_COSINE]
    if not pairs:
        return None
    involved = len({i for pair in pairs for i in pair})
    return Finding(
        "collisions",
        f"{involved} of {len(x)} records share their vector with a record of another text "
        f"(cosine > {COLLISION_COSINE}, {len(pairs)} pairs)",
        "the candidate ignores its input, or part of it: check its pooling and tokenizer, "
        "and that the server embeds the text it is sent",
    )


def nondeterministic(first: npt.ArrayLike, second: npt.ArrayLike) -> Finding | None:
    """The same texts embedded twice, the same way, must give the same vectors."""
    moved, total, lowest = _drift(first, second)
    if moved == 0:
        return None
    return Finding(
        "nondeterministic",
        f"{moved} of {total} texts embedded twice got different vectors "
        f"(lowest cosine {lowest:.6f})",
        "make the engine deterministic (no sampling or dropout, fixed seed and thread "
        "count): vectors that change between calls cannot be searched reliably",
    )


def batch_inconsistent(one_by_one: npt.ArrayLike, batched: npt.ArrayLike) -> Finding | None:
    """Texts embedded one at a time must get the vectors they get inside a batch."""
    moved, total, lowest = _drift(one_by_one, batched)
    if moved == 0:
        return None
    return Finding(
        "batch_inconsistent",
        f"{moved} of {total} texts got different vectors alone than in a batch "
        f"(lowest cosine {lowest:.6f})",
        "fix the engine's batching (padding or attention leaking between inputs), or "
        "use batch_size=1",
    )


def agree(a: npt.ArrayLike, b: npt.ArrayLike) -> bool:
    """The same texts' vectors from two runs agree within CONSISTENCY_TOLERANCE, every
    row finite and of non-zero length on both sides (a row that is not says nothing)."""
    moved, compared, _ = _drift(a, b)
    return moved == 0 and compared == len(as_vectors(a))


def selfcheck(
    vectors: npt.ArrayLike,
    texts: Sequence[str],
    *,
    stored: npt.ArrayLike | None = None,
    rerun: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    batching: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
) -> tuple[Finding, ...]:
    """Every self-check that fires.

    ``vectors`` are the candidate's vectors for ``texts``; ``stored`` the store's for
    the same records (optional, to excuse collisions the store shares); ``rerun`` the
    same texts embedded twice; ``batching`` the same texts one at a time and in a batch.
    """
    extra = [a for pair in (rerun, batching) if pair is not None for a in pair]
    found = [
        nan_output(vectors, *extra),
        zero_vectors(vectors, *extra),
        collisions(vectors, texts, stored),
        nondeterministic(*rerun) if rerun is not None else None,
        batch_inconsistent(*batching) if batching is not None else None,
    ]
    return tuple(f for f in found if f is not None)


def _close_pairs(x: npt.NDArray[np.float64]) -> list[tuple[int, int]]:
    """Index pairs (i < j) of rows whose cosine exceeds COLLISION_COSINE."""
    norms = np.linalg.norm(np.where(np.isfinite(x), x, 0.0), axis=1)
    usable = np.flatnonzero(np.isfinite(x).all(axis=1) & (norms >= _ZERO_NORM))
    unit = x[usable] / norms[usable, None]
    close = np.triu(unit @ unit.T > COLLISION_COSINE, k=1)
    return [(int(usable[i]), int(usable[j])) for i, j in np.argwhere(close)]


def _drift(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[int, int, float]:
    """Rows that moved beyond tolerance, rows compared, and the lowest cosine.

    Rows that are not finite or zero on either side are left to the other checks.
    """
    first, second = as_vectors(a), as_vectors(b)
    if first.shape != second.shape:
        raise ValueError(f"cannot compare runs of shapes {first.shape} and {second.shape}")
    cosines, defined = rowwise_cosine(first, second)
    cosines = cosines[defined]
    if cosines.size == 0:
        return 0, 0, 1.0
    moved = int(np.count_nonzero(cosines < 1.0 - CONSISTENCY_TOLERANCE))
    return moved, int(cosines.size), float(cosines.min())
