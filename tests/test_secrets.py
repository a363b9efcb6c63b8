"""Secrets never leave the process: a database password and an engine API key used through
a whole check, re-index and monitor cycle appear in no output, log line, report file or
state-database column. Real PostgreSQL with password authentication, a real
OpenAI-compatible server that requires a key."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest
from fixtures_models import OpenAIServer
from fixtures_stores import unit_vectors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_reindex_jobs import GUARD

from guard.records import RecordBatch
from guard.stores import open_store

PASSWORD = "pw-Sekr3t-7781-hunter2"  # URL-safe, so it appears in the URI as typed
KEY_ENV = "GUARD_TEST_ENGINE_KEY"
RECORDS = 30


@dataclass(frozen=True)
class SecretDatabase:
    role: str
    socket_dir: str
    schema: str
    state_db: str

    def store_uri(self, table: str) -> str:
        """A store URI with the password inline, as an operator might paste it."""
        query = urlencode({"host": self.socket_dir, "table": table, "schema": self.schema})
        return f"postgresql://{self.role}:{PASSWORD}@/postgres?{query}"

    def state_dsn(self, dbname: str | None = None) -> str:
        """A libpq keyword DSN with the password in it."""
        return make_conninfo(
            host=self.socket_dir, dbname=dbname or self.state_db, user=self.role, password=PASSWORD
        )


@pytest.fixture
def secret_db(pg_dsn: str) -> Iterator[SecretDatabase]:
    """A login role that must give its password (scram-sha-256 on the unix socket: the
    embedded server listens on no TCP port), a schema and a state database it owns."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    schema, state_db = f"s_{role}", f"state_{role}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
        conn.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(state_db), sql.Identifier(role)
            )
        )
        original = hba.read_text(encoding="utf-8")
        # First match wins: this role, and only it, must authenticate.
        hba.write_text(f"local all {role} scram-sha-256\n{original}", encoding="utf-8")
        conn.execute("SELECT pg_reload_conf()")
        socket_dir = str(conninfo_to_dict(pg_dsn)["host"])
        try:
            yield SecretDatabase(role, socket_dir, schema, state_db)
        finally:
            hba.write_text(original, encoding="utf-8")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(state_db)))
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _fill(uri: str, texts: list[str]) -> None:
    store = open_store(uri)
    try:
        store.create(dims=16, distance="cosine")
        ids = tuple(range(RECORDS))
        store.upsert(
            RecordBatch(ids, tuple(texts[:RECORDS]), unit_vectors(RECORDS, 16, seed=3), ())
        )
    finally:
        store.close()


def _last_line(outputs: list[tuple[str, str]]) -> str:
    """The last line on the last command's stderr: where the CLI prints its error."""
    return outputs[-1][1].splitlines()[-1]


def _state_text(dsn: str) -> str:
    """Every text, JSON and character column of every table in the state database."""
    found: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
            " AND data_type IN ('text', 'jsonb', 'json', 'character varying')"
        ).fetchall()
        for table, column in columns:
            query = sql.SQL("SELECT {}::text FROM {}").format(
                sql.Identifier(column), sql.Identifier(table)
            )
            found += [str(row[0]) for row in conn.execute(query).fetchall()]
    assert any("guard_reindex_jobs" in table for table, _ in columns)
    return "\n".join(found)


def test_no_secret_reaches_any_output_log_report_or_state_column(
    secret_db: SecretDatabase,
    openai_server: OpenAIServer,
    corpus: list[str],
    tmp_path: Path,
) -> None:
    """check, reindex plan/run/status/verify/cutover and monitor --once, all verbose with
    JSON logs, on a store URI with an inline password, a keyword state DSN with one and an
    engine key from the environment; a job planned from the URI with the password runs
    and cuts over with the password from PGPASSWORD. Errors that carry a keyword DSN or
    an engine URL with user-info are one line without the secret."""
    store = secret_db.store_uri(f"t_{uuid.uuid4().hex[:8]}")
    _fill(store, corpus)
    candidate = f"openai+{openai_server.url}?model={openai_server.model}&api_key_env={KEY_ENV}"
    base_env = {**os.environ, KEY_ENV: openai_server.api_key}
    base_env.pop("PGPASSWORD", None)
    base_env["GUARD_STATE_DSN"] = secret_db.state_dsn()
    env = {**base_env, "PGPASSWORD": PASSWORD}  # the run-time secret of a planned job
    outputs: list[tuple[str, str]] = []  # (where, text)

    def guard(*args: str, code: int = 0, environ: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [GUARD, "-v", "-v", "--log-format", "json", *args],
            capture_output=True,
            text=True,
            env=environ or env,
            cwd=tmp_path,
            timeout=600,
        )
        command = " ".join(args[:3])
        outputs.extend(((f"{command} stdout", done.stdout), (f"{command} stderr", done.stderr)))
        assert done.returncode == code, done.stdout + done.stderr
        return done.stdout

    report = tmp_path / "report.json"
    guard(
        "check", "--store", store, "--candidate", candidate,
        "--format", "json", "--output", str(report), code=1,
    )  # fmt: skip
    plan = guard(
        "reindex", "plan", "--store", store, "--candidate", candidate, "--batch-size", "10",
        "--format", "json", environ=base_env,
    )  # fmt: skip
    job = json.loads(plan)["job_id"]
    guard("reindex", "run", job, "--format", "json")
    status = json.loads(guard("reindex", "status", job, "--format", "json"))
    assert status["complete"] is True
    guard("reindex", "status", job)
    verified = json.loads(guard("reindex", "verify", job, "--format", "json"))
    assert verified["reasons"] == []
    guard("reindex", "cutover", job)

    config = tmp_path / "guard.toml"
    config.write_text(
        f"[[watch]]\nname = 'secret'\nstore = '{store}'\nengine = '{candidate}'\n"
        "schedule = 'every 1h'\nsample = 20\n",
        encoding="utf-8",
    )
    guard("monitor", "--config", str(config), "--once", "--format", "json")
    guard("monitor", "--config", str(config), "--once")
    guard("monitor", "history", "--config", str(config))

    # Errors: a state DSN naming a missing database, an engine URL with the key as its
    # user-info on a port where nothing listens.
    missing = {**env, "GUARD_STATE_DSN": secret_db.state_dsn("no_such_db")}
    guard("reindex", "status", job, code=2, environ=missing)
    assert _last_line(outputs).startswith("error: cannot connect to the state database")
    userinfo = f"openai+http://:{openai_server.api_key}@127.0.0.1:9/v1?model=m&retries=0"
    guard("check", "--store", store, "--candidate", userinfo, code=2)
    assert _last_line(outputs).startswith("error: ")

    texts = [
        *outputs,
        *((path.name, path.read_text(encoding="utf-8")) for path in tmp_path.glob("*.json")),
        ("state database", _state_text(secret_db.state_dsn())),
    ]
    assert "report.json" in dict(texts)
    leaks = [where for where, text in texts if PASSWORD in text or openai_server.api_key in text]
    assert leaks == []
    assert [where for where, text in texts if "Traceback" in text] == []
