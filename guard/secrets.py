"""The one redaction path. Whatever may carry a secret goes through here before it is
shown or kept: ``redact`` masks secrets in any text (messages, log values, report
fields), ``strip`` removes them from a URI before it is stored, so that the state
database never holds a password and the secret comes from the environment at run time
(``PGPASSWORD`` or ``~/.pgpass`` for PostgreSQL, ``api_key_env=`` for keys).

Imports nothing of the guard's, so that guard.errors can redact every message it builds.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters whose values are secrets wherever they appear.
SECRET_PARAMS = frozenset({"password", "api_key", "apikey", "key", "token", "secret"})

# scheme://[user]:password@ -- an empty user too (``http://:KEY@host``).
_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@/\s]*@")
_SECRET_QUERY_VALUE = re.compile(r"(?i)([?&](?:" + "|".join(sorted(SECRET_PARAMS)) + r")=)[^&\s]*")
# libpq keyword form inside free text: ``password=x`` or ``password = 'a b\'c'``.
_KEYWORD_PASSWORD = re.compile(r"(?i)(^|\s)(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s']\S*)")
_KEYWORD_DSN = re.compile(r"^\s*[a-z_]+\s*=")


def redact(text: str) -> str:
    """``text`` with every password and secret value masked: URL user-info, secret query
    values and libpq keyword DSNs (a whole DSN is parsed and rebuilt by psycopg)."""
    if "://" not in text and _KEYWORD_DSN.match(text):
        dsn = _redact_dsn(text)
        if dsn is not None:
            return dsn
    text = _USERINFO_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _KEYWORD_PASSWORD.sub(rf"\1\2{MASK}", text)
    return _SECRET_QUERY_VALUE.sub(rf"\1{MASK}", text)


def _redact_dsn(text: str) -> str | None:
    """A whole keyword DSN with its password masked; None if libpq cannot parse it."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(text)
    except ProgrammingError:
        return None
    if "password" not in params:
        return text
    params["password"] = MASK
    return make_conninfo("", **params)


def strip(uri: str) -> str:
    """``uri`` without the password in its user-info and without secret query values:
    the form kept in the state database. Unchanged when it holds neither (an empty
    password, as in ``postgres:@``, is none)."""
    parts = original = urlsplit(uri)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if at and password:
        parts = parts._replace(netloc=f"{user}@{hostport}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if not (v and k.lower() in SECRET_PARAMS)]
    if len(kept) != len(query):
        parts = parts._replace(query=urlencode(kept, safe="/:@"))
    return uri if parts == original else urlunsplit(parts)
