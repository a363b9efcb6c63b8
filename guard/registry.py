"""Picking an implementation by URI scheme, importing its module only when asked."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from guard.errors import ConfigError
from guard.uri import parse, redact


def instantiate(registry: Mapping[str, str], uri: str, kind: str) -> Any:
    """``registry`` maps scheme -> "module:Class"; the class is built from the parsed URI.

    A module whose optional dependency is missing fails for its own URIs only.
    """
    parsed = parse(uri)
    target = registry.get(parsed.scheme)
    if target is None:
        known = ", ".join(sorted(registry))
        raise ConfigError(
            f"unknown {kind} scheme {parsed.scheme!r} in {redact(uri)} (known: {known})"
        )
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{kind} {parsed.scheme!r} needs an optional package that is not installed: {exc.name}"
        ) from exc
    return getattr(module, class_name)(parsed)
