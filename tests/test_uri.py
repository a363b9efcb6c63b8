"""URI parsing and secret redaction."""

import pytest

from guard.engines import EngineOptions, open_engine
from guard.errors import ConfigError
from guard.stores import open_store
from guard.uri import parse, redact


def test_redact_removes_userinfo_password_and_secret_query_values() -> None:
    uri = "postgresql://app:s3cr3t@db.example:5432/prod?table=t&password=p4ss&api_key=k3y"
    assert redact(uri) == "postgresql://app:***@db.example:5432/prod?table=t&password=***&api_key=***"


def test_without_params_strips_only_the_named_guard_params() -> None:
    parsed = parse("postgresql://app@h:5432/db?table=docs&sslmode=require&schema=public")
    assert parsed.without_params("table", "schema") == "postgresql://app@h:5432/db?sslmode=require"


def test_engine_options_parse_every_setting() -> None:
    options = EngineOptions.from_params(
        {"max_tokens": "256", "prefix": "query: ", "normalize": "true", "pooling": "cls"}
    )
    assert (options.max_tokens, options.prefix, options.normalize, options.pooling) == (
        256,
        "query: ",
        True,
        "cls",
    )


@pytest.mark.parametrize(
    "params",
    [{"max_tokens": "many"}, {"normalize": "maybe"}, {"pooling": "max"}, {"batch_size": "0"}],
)
def test_bad_engine_options_are_config_errors(params: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        EngineOptions.from_params(params)


def test_unknown_schemes_name_the_known_ones_without_secrets() -> None:
    with pytest.raises(ConfigError) as store_error:
        open_store("mongodb://u:hunter2@h/db")
    assert "hunter2" not in str(store_error.value)
    assert "qdrant+local" in str(store_error.value)
    with pytest.raises(ConfigError) as engine_error:
        open_engine("cohere://x?api_key=hunter2")
    assert "hunter2" not in str(engine_error.value)
    assert "llamacpp" in str(engine_error.value)
