"""Parsing of store and engine URIs; ``redact`` is guard.secrets' (re-exported here)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from guard.errors import ConfigError
from guard.secrets import redact

__all__ = ["ParsedURI", "as_bool", "as_int", "parse", "parse_filter", "redact", "refuse_unknown"]


@dataclass(frozen=True)
class ParsedURI:
    """A URI split into the parts adapters and engines care about."""

    raw: str
    scheme: str
    netloc: str
    path: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def redacted(self) -> str:
        return redact(self.raw)

    def without_params(self, *names: str) -> str:
        """The URI with the guard's own query parameters removed (for drivers)."""
        parts = urlsplit(self.raw)
        kept = [(k, v) for k, v in parse_qsl(parts.query) if k not in names]
        return urlunsplit(parts._replace(query=urlencode(kept)))

    def with_param(self, name: str, value: str) -> str:
        """The URI with query parameter ``name`` set to ``value``, every other part kept
        as given (credentials and options too): how a store names another collection."""
        parts = urlsplit(self.raw)
        params = [(k, value if k == name else v) for k, v in parse_qsl(parts.query, True)]
        return urlunsplit(parts._replace(query=urlencode(params, safe="/:@")))

    def with_path(self, path: str) -> str:
        """The URI with another path, every other part kept as given."""
        return urlunsplit(urlsplit(self.raw)._replace(path=path))


def parse(uri: str) -> ParsedURI:
    if ":" not in uri:
        raise ConfigError(f"not a URI (expected scheme:...): {redact(uri)!r}")
    parts = urlsplit(uri)
    if not parts.scheme:
        raise ConfigError(f"not a URI (expected scheme:...): {redact(uri)!r}")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return ParsedURI(uri, parts.scheme.lower(), parts.netloc, parts.path, params)


def as_bool(value: str | None, *, name: str, default: bool | None = None) -> bool | None:
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"option {name} must be true or false, not {value!r}")


def as_int(
    value: str | None, *, name: str, default: int | None = None, minimum: int = 1
) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"option {name} must be an integer, not {value!r}") from None
    if number < minimum:
        raise ConfigError(f"option {name} must be at least {minimum}, not {number}")
    return number


def refuse_unknown(parsed: ParsedURI, known: Iterable[str], extra: Iterable[str] = ()) -> None:
    """Refuse query parameters nobody reads, so a typo such as ``text_feild=`` is not
    silently ignored; ``extra`` are accepted too but not listed (libpq's keywords)."""
    names = set(known)
    unknown = sorted(set(parsed.params) - names - set(extra))
    if unknown:
        raise ConfigError(
            f"unknown store option(s) {', '.join(unknown)} in {parsed.redacted}"
            f" (known: {', '.join(sorted(names))})"
        )


def parse_filter(value: str) -> tuple[str, str]:
    """``filter=FIELD:VALUE`` as (field, value): an equality on one field."""
    name, colon, wanted = value.partition(":")
    if not colon or not name:
        raise ConfigError(f"filter={value!r}: write it as filter=FIELD:VALUE")
    return name, wanted
