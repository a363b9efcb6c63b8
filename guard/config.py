"""guard.toml: thresholds for `guard check`, watches for `guard monitor`.

Validated with pydantic at the edge; every problem becomes one ConfigError line that
names the file and the offending key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from guard.core.policy import Thresholds
from guard.errors import ConfigError


class WatchConfig(BaseModel):
    """One `[[watch]]` table: a store checked against its production engine on a schedule."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    store: str
    engine: str
    schedule: str = "every 1h"
    thresholds: dict[str, Any] = Field(default_factory=dict)
    alert_webhook: str | None = None

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict[str, Any]) -> dict[str, Any]:
        thresholds_from(value)
        return value


class GuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thresholds: dict[str, Any] = Field(default_factory=dict)
    watch: list[WatchConfig] = Field(default_factory=list)

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict[str, Any]) -> dict[str, Any]:
        thresholds_from(value)
        return value


def thresholds_from(values: dict[str, Any], base: Thresholds | None = None) -> Thresholds:
    """Thresholds with ``values`` overriding ``base`` (default: the documented defaults)."""
    return Thresholds.from_mapping({**(base or Thresholds()).as_dict(), **values})


def load_config(path: Path | None) -> GuardConfig:
    if path is None:
        return GuardConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return GuardConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
