"""Which PostgreSQL errors mean the server went away rather than the statement failing,
and a server's name fit to print (``host:port``, never a password).

Shared by the pgvector store and the state database, so that a worker tells "wait and
try again" from "this statement is wrong" the same way on both.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

# SQLSTATEs of a server going away: class 08 (connection exception), the admin and crash
# shutdowns and "the database system is starting up / shutting down" (57P01-57P03).
_LOST_STATES = ("57P01", "57P02", "57P03")


def lost_connection(error: BaseException) -> bool:
    """True when ``error`` says the connection failed or broke, not the statement:
    refused, reset, timed out, or the server shutting down or starting up."""
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = error.sqlstate
    return state is None or state.startswith("08") or state in _LOST_STATES


def endpoint(dsn: str) -> str:
    """``host:port`` of a libpq URI or keyword DSN (a socket folder for a local
    server), never its password; ``"?"`` for a DSN libpq cannot read."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "?"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    return f"{host}:{params.get('port') or 5432}"
