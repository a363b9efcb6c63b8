"""What every engine shares: parameter checks, batching, row normalisation, versions.

Kept out of the Protocol module so that engines can share behaviour without the
registry importing any of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import numpy as np

from guard.engines import OPTION_NAMES, EngineOptions
from guard.errors import ConfigError, EngineError, TextTooLongError
from guard.records import Vectors
from guard.uri import ParsedURI, parse


def check_params(parsed: ParsedURI, extra: Sequence[str] = ()) -> None:
    """Reject unknown query parameters, so a typo such as ``max_token=`` is not ignored."""
    known = set(OPTION_NAMES) | set(extra)
    unknown = sorted(set(parsed.params) - known)
    if unknown:
        raise ConfigError(
            f"unknown engine option(s) {', '.join(unknown)} in {parsed.redacted}"
            f" (known: {', '.join(sorted(known))})"
        )
    if parsed.params.get("bridge"):  # refuse a file that is not a bridge before any work
        from guard.engines.bridgefile import load

        load(parsed.params["bridge"])


def reject_options(parsed: ParsedURI, options: EngineOptions, *names: str, why: str) -> None:
    """Fail early on options the engine cannot honour, instead of silently ignoring them."""
    defaults = EngineOptions()
    given = [name for name in names if getattr(options, name) != getattr(defaults, name)]
    if given:
        raise ConfigError(
            f"option(s) {', '.join(given)} not supported here: {why} [{parsed.redacted}]"
        )


def refuse_long(counts: Sequence[int], limit: int | None, *, engine: str) -> None:
    """``truncate=false``: a text over the token limit is an error, never a silent cut."""
    longest = max(counts, default=0)
    if limit and longest > limit:
        raise TextTooLongError(
            f"a text of {longest} tokens is over the limit of {limit} (truncate=false)",
            engine=engine,
        )


def local_path(parsed: ParsedURI) -> Path:
    """The filesystem path in ``scheme:PATH`` (``scheme:///abs`` and ``~`` work too)."""
    return Path(unquote(parsed.netloc + parsed.path)).expanduser()


def with_params(parsed: ParsedURI, changes: dict[str, Any]) -> ParsedURI:
    """The URI with some query parameters set (None removes one); used by ``with_options``."""
    unknown = sorted(set(changes) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"with_options: unknown option(s) {', '.join(unknown)}")
    params = dict(parsed.params)
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        elif isinstance(value, bool):
            params[name] = "true" if value else "false"
        else:
            params[name] = str(value)
    parts = urlsplit(parsed.raw)
    return parse(urlunsplit(parts._replace(query=urlencode(params))))


def batches(texts: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(texts), size):
        yield texts[start : start + size]


def finish(rows: Any, *, expected: int, options: EngineOptions, engine: str) -> Vectors:
    """Turn backend output into the Protocol's array: checked count and shape, float32,
    C-contiguous, mapped through ``bridge`` when set, then scaled to unit length when
    ``normalize`` is true (zero rows stay zero)."""
    try:
        array = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EngineError(
            f"engine returned vectors that are not numbers: {exc}", engine=engine
        ) from exc
    if expected == 0 and array.size == 0 and not options.bridge:
        return np.zeros((0, array.shape[1] if array.ndim == 2 else 0), dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != expected:
        raise EngineError(
            f"engine returned {array.shape[0] if array.ndim else 0} vectors of shape "
            f"{array.shape[1:]} for {expected} texts",
            engine=engine,
        )
    if options.bridge:
        from guard.engines.bridgefile import load

        array = load(options.bridge).apply(array, engine=engine)
    if options.normalize:
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        array = (array / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)
    return np.ascontiguousarray(array, dtype=np.float32)


def version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
