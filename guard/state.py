"""The state database: re-index jobs, their batches and leases, and the monitor's history.

PostgreSQL, so that any number of workers on any number of machines can lease batches
with ``FOR UPDATE SKIP LOCKED``. ``GUARD_STATE_DSN`` names it; without it the guard starts
an embedded PostgreSQL in ``GUARD_HOME/state``. The schema comes from the numbered SQL
files shipped as ``guard.migrations``, applied at connect time under an advisory lock.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from guard.errors import ReindexError, StateConnectionError
from guard.logs import get_logger
from guard.paths import guard_home
from guard.pgerrors import endpoint, lost_connection
from guard.pgserver import embedded_dsn
from guard.uri import redact

log = get_logger(__name__)

# One fixed key so that concurrent start-ups (several workers at once) apply each file once.
_MIGRATION_LOCK = 0x6775617264  # "guard"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_NO_TRANSACTION = "-- guard: no-transaction"
_MIGRATED: set[str] = set()
# Seconds to wait for a server that does not answer at all (a dropped route, a host
# gone): libpq waits forever by default. A DSN's own connect_timeout wins.
CONNECT_TIMEOUT_S = 10

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def transactional(self) -> bool:
        return not self.sql.lstrip().startswith(_NO_TRANSACTION)


def state_dsn() -> str:
    """``GUARD_STATE_DSN``, else the embedded PostgreSQL in the guard's data folder."""
    return os.environ.get("GUARD_STATE_DSN") or embedded_dsn(guard_home() / "state")


def migrations() -> list[Migration]:
    """The shipped migration files in version order."""
    found = []
    for entry in resources.files("guard.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(match[1], match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise ReindexError(f"two migration files share a version number: {versions}")
    return found


def apply_migrations(conn: Conn) -> list[str]:
    """Apply the files not yet recorded, in order; return the versions applied.

    Each file runs in one transaction together with its row in
    ``guard_schema_migrations``, so a failed file leaves no trace and is retried next time.
    """
    applied_now: list[str] = []
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        done = _applied_versions(conn)
        for migration in migrations():
            if migration.version in done:
                continue
            record = sql.SQL("INSERT INTO guard_schema_migrations (version, name) VALUES (%s, %s)")
            if migration.transactional:
                with conn.transaction():
                    conn.execute(sql.SQL(migration.sql))
                    conn.execute(record, (migration.version, migration.name))
            else:
                conn.execute(sql.SQL(migration.sql))
                conn.execute(record, (migration.version, migration.name))
            log.info("migration applied", version=migration.version, name=migration.name)
            applied_now.append(migration.version)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


def _applied_versions(conn: Conn) -> set[str]:
    exists = conn.execute("SELECT to_regclass('guard_schema_migrations')").fetchone()
    if not exists or exists[0] is None:
        return set()
    rows = conn.execute("SELECT version FROM guard_schema_migrations").fetchall()
    return {str(row[0]) for row in rows}


def connect(dsn: str | None = None) -> Conn:
    """An autocommit connection to the state database, migrated once per process.

    A server that refuses, drops or never answers the connection (within
    ``CONNECT_TIMEOUT_S``) is a ``StateConnectionError``, which a worker waits out."""
    dsn = dsn or state_dsn()
    options: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in _params(dsn):
        options["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        conn = psycopg.connect(dsn, **options)
    except psycopg.Error as exc:
        reason = _one_line(exc)
        message = f"cannot connect to the state database {redact(dsn)}: {reason}"
        if lost_connection(exc):
            raise StateConnectionError(message, server=endpoint(dsn), reason=reason) from exc
        raise ReindexError(message) from exc
    if dsn not in _MIGRATED:
        try:
            apply_migrations(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise ReindexError(
                    f"cannot migrate the state database {redact(dsn)}: {redact(str(exc))}"
                ) from exc
            raise
        _MIGRATED.add(dsn)
    return conn


def _params(dsn: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(dsn)
    except psycopg.Error:
        return {}  # psycopg.connect says what is wrong with it


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return redact(lines[0] if lines else type(error).__name__)
