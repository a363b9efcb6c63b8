"""Picking an implementation by URI scheme, importing its module only when asked."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

from guard.errors import ConfigError
from guard.uri import ParsedURI, parse, redact

Entry = TypeVar("Entry")


def lookup(registry: Mapping[str, Entry], uri: str, kind: str) -> tuple[ParsedURI, Entry]:
    """The parsed URI and ``registry``'s entry for its scheme; a ``ConfigError`` naming the
    known schemes for any other."""
    parsed = parse(uri)
    entry = registry.get(parsed.scheme)
    if entry is None:
        known = ", ".join(sorted(registry))
        raise ConfigError(
            f"unknown {kind} scheme {parsed.scheme!r} in {redact(uri)} (known: {known})"
        )
    return parsed, entry


def build(target: str, parsed: ParsedURI, kind: str) -> Any:
    """``target`` ("module:Class") built from the parsed URI.

    A module whose optional dependency is missing fails for its own URIs only.
    """
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{kind} {parsed.scheme!r} needs an optional package that is not installed: {exc.name}"
        ) from exc
    return getattr(module, class_name)(parsed)


def instantiate(registry: Mapping[str, str], uri: str, kind: str) -> Any:
    """``registry`` maps scheme -> "module:Class"; the class is built from the parsed URI."""
    parsed, target = lookup(registry, uri, kind)
    return build(target, parsed, kind)
