"""guard.toml: thresholds for `guard check`, watches for `guard monitor`.

Validated with pydantic at the edge; every problem becomes one ConfigError line that
names the file and the offending key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from guard.core.policy import Thresholds
from guard.errors import ConfigError
from guard.schedule import parse_schedule


def _known_thresholds(value: dict[str, Any]) -> dict[str, Any]:
    thresholds_from(value)
    return value


# A `[thresholds]` table: checked against Thresholds when the file is read.
ThresholdTable = Annotated[dict[str, Any], AfterValidator(_known_thresholds)]


class WatchConfig(BaseModel):
    """One `[[watch]]` table: a store checked against its production engine on a schedule."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    store: str
    engine: str
    schedule: str = "every 1h"
    thresholds: ThresholdTable = Field(default_factory=dict)
    alert_webhook: str | None = None
    # Records re-embedded per run; a monitor run must stay cheap (see docs/runbook.md).
    sample: int = Field(default=200, ge=1)

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value


class MonitorConfig(BaseModel):
    """The `[monitor]` table: how the `guard monitor` service runs its watches."""

    model_config = ConfigDict(extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(default=9108, ge=0, le=65535)  # /metrics and /healthz; 0: any free port
    # The state database; default GUARD_STATE_DSN, else the embedded one in GUARD_HOME.
    state_dsn: str | None = None
    misfire_grace_seconds: int = Field(default=300, ge=1)
    # Most new and older records the population check compares.
    population_sample: int = Field(default=500, ge=20)
    alert_attempts: int = Field(default=4, ge=1)
    alert_backoff_seconds: float = Field(default=1.0, ge=0)
    # How often the service starts the re-index jobs that are due (inside their window,
    # not paused, batches left); 0 leaves re-index jobs to `guard reindex run`.
    reindex_every_seconds: float = Field(default=300, ge=0)


class CacheConfig(BaseModel):
    """The `[cache]` table: the embedding cache shared by check, monitor and re-index."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_bytes: int = Field(default=1 << 30, ge=0)
    # Default: GUARD_HOME/cache/embeddings.sqlite.
    path: Path | None = None


class GuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thresholds: ThresholdTable = Field(default_factory=dict)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    watch: list[WatchConfig] = Field(default_factory=list)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @field_validator("watch")
    @classmethod
    def _unique_names(cls, value: list[WatchConfig]) -> list[WatchConfig]:
        names = [watch.name for watch in value]
        if len(set(names)) != len(names):
            raise ValueError(f"watch names must be unique: {names}")
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
