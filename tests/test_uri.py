"""URI parsing and secret redaction."""

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from guard.engines import EngineOptions, open_engine
from guard.errors import ConfigError, EngineError, StoreError
from guard.secrets import strip
from guard.stores import open_store
from guard.uri import parse, redact


def test_redact_removes_userinfo_password_and_secret_query_values() -> None:
    uri = "postgresql://app:s3cr3t@db.example:5432/prod?table=t&password=p4ss&api_key=k3y"
    assert (
        redact(uri) == "postgresql://app:***@db.example:5432/prod?table=t&password=***&api_key=***"
    )


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            "cannot connect to host=db password=s3cr3t: refused",
            "cannot connect to host=db password=*** refused",  # the colon may be the password's
        ),
        ("POST http://:sk-s3cr3t@h:9/v1/embeddings", "POST http://:***@h:9/v1/embeddings"),
        ("openai+https://user:sk-s3cr3t@h/v1?model=m", "openai+https://user:***@h/v1?model=m"),
    ],
)
def test_redact_masks_dsns_in_messages_and_empty_user_infos(text: str, redacted: str) -> None:
    """A keyword DSN inside a message and user-info with an empty user name lose their
    secret; everything else stays as written."""
    assert redact(text) == redacted


@pytest.mark.parametrize("password", ["s3cr3t", "a b'c\\d", ""])
def test_redact_rebuilds_a_keyword_dsn_with_the_password_masked(password: str) -> None:
    dsn = make_conninfo(host="/tmp/s", user="app", password=password, dbname="x")
    masked = conninfo_to_dict(redact(dsn))
    assert masked == {"host": "/tmp/s", "user": "app", "password": "***", "dbname": "x"}


def test_errors_redact_their_message_and_uri_whoever_builds_them() -> None:
    error = StoreError("cannot connect to host=db password=s3cr3t", uri="postgresql://a:s3cr3t@h/d")
    assert (str(error), error.uri) == (
        "cannot connect to host=db password=*** [postgresql://a:***@h/d]",
        "postgresql://a:***@h/d",
    )
    assert "s3cr3t" not in str(EngineError("failed", engine="openai+http://:s3cr3t@h/v1"))


@pytest.mark.parametrize(
    ("uri", "stored"),
    [
        (
            "postgresql://app:s3cr3t@/db?host=%2Ftmp%2Fs&table=t",
            "postgresql://app@/db?host=%2Ftmp%2Fs&table=t",
        ),
        ("postgresql://app@h/db?password=s3cr3t&table=t", "postgresql://app@h/db?table=t"),
        (
            "postgresql://postgres:@/db?host=%2Ftmp&table=t",
            "postgresql://postgres:@/db?host=%2Ftmp&table=t",
        ),
        ("qdrant+local:/data/q?collection=c", "qdrant+local:/data/q?collection=c"),
        ("pgserver:rel/dir?table=t&schema=s", "pgserver:rel/dir?table=t&schema=s"),
    ],
)
def test_strip_removes_secrets_and_leaves_the_rest_as_written(uri: str, stored: str) -> None:
    """The form a job keeps in the state database: no password, nothing else changed."""
    assert strip(uri) == stored


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
