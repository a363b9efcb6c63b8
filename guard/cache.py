"""The embedding cache: vectors already made by an engine, found again by text and
fingerprint, so that a rerun of a check embeds only what it has not seen.

One SQLite file in WAL mode under GUARD_HOME, shared by every guard process: short
transactions and a busy timeout let several writers take turns. A row holds a float32
blob with a checksum over its keys, size and bytes; the file is bounded by
``max_bytes`` and the least recently used rows go first. A file SQLite cannot read, or
one that fails ``PRAGMA quick_check``, is moved aside and rebuilt; a row whose checksum
or size does not match is dropped. A bad vector is never served: the engine makes it
again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guard.closing import Closing
from guard.config import CacheConfig
from guard.engines import EmbeddingEngine, EngineOptions
from guard.hashing import fingerprint_sha256, text_sha256
from guard.logs import get_logger
from guard.paths import guard_home
from guard.records import Vectors

log = get_logger(__name__)

DEFAULT_MAX_BYTES = 1 << 30
BUSY_TIMEOUT_MS = 30_000
# Keys looked up or rows written per statement or transaction: short transactions.
CHUNK = 500
# What else is kept per fingerprint besides vectors: token counts and self-check runs.
TOKENS, RERUN, SINGLE = "tokens", "rerun", "single"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    fingerprint TEXT NOT NULL,
    text TEXT NOT NULL,
    dims INTEGER NOT NULL,
    vector BLOB NOT NULL,
    checksum TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, text)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vectors_last_used ON vectors (last_used);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (1, 0);
"""


def cacheable(fingerprint: Mapping[str, Any]) -> bool:
    """Only a fingerprint that names the model's content (a file or folder sha256) may key
    vectors: a served model name can stand for other weights after a server upgrade, and
    a cached vector would then hide exactly the drift the guard looks for."""
    model = fingerprint.get("model")
    return isinstance(model, Mapping) and bool(model.get("sha256"))


def row_checksum(fingerprint: str, text: str, dims: int, blob: bytes) -> str:
    """Ties a stored vector to its keys and size: a flipped byte or a row moved under
    another key no longer matches."""
    digest = hashlib.sha256(f"{fingerprint}\0{text}\0{dims}\0".encode())
    digest.update(blob)
    return digest.hexdigest()


def default_path() -> Path:
    return guard_home() / "cache" / "embeddings.sqlite"


@dataclass(frozen=True)
class CacheStats:
    """What one run took from the cache: the report's ``cache`` field."""

    enabled: bool
    hits: int = 0
    misses: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EmbeddingCache(Closing):
    """Vectors by (fingerprint key, text key) in one SQLite file."""

    def __init__(self, path: Path | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path or default_path()
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # one connection, used by the re-index's threads too
        self._conn = self._open()

    # -- reading and writing ---------------------------------------------------------------

    def get_many(self, fingerprint: str, texts: Sequence[str]) -> dict[str, Vectors]:
        """The sound vectors among ``texts`` (text keys), marked as just used."""
        found: dict[str, Vectors] = {}
        bad: list[str] = []
        with self._guarded() as conn:
            for start in range(0, len(texts), CHUNK):
                rows = conn.execute(
                    "SELECT text, dims, vector, checksum FROM vectors WHERE fingerprint = ?"
                    " AND text IN (SELECT value FROM json_each(?))",
                    (fingerprint, json.dumps(list(texts[start : start + CHUNK]))),
                ).fetchall()
                for key, dims, blob, checksum in rows:
                    blob = bytes(blob)
                    sound = len(blob) == 4 * dims and checksum == row_checksum(
                        fingerprint, key, dims, blob
                    )
                    if sound:
                        found[key] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
                    else:
                        bad.append(key)
            if bad:
                log.warning("cache.bad_rows", rows=len(bad), path=str(self.path))
                self._delete(conn, fingerprint, bad)
            if found:
                self._touch(conn, fingerprint, list(found))
        return found

    def put_many(self, fingerprint: str, items: Sequence[tuple[str, Vectors]]) -> None:
        """Store vectors under their text keys, then evict down to ``max_bytes``."""
        now = time.time_ns()
        with self._guarded() as conn:
            for start in range(0, len(items), CHUNK):
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    added = 0
                    for key, vector in items[start : start + CHUNK]:
                        blob = np.ascontiguousarray(vector, dtype="<f4").tobytes()
                        dims = len(blob) // 4
                        cursor = conn.execute(
                            "INSERT OR IGNORE INTO vectors VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                fingerprint,
                                key,
                                dims,
                                blob,
                                row_checksum(fingerprint, key, dims, blob),
                                _row_bytes(key, blob),
                                now,
                            ),
                        )
                        added += _row_bytes(key, blob) if cursor.rowcount == 1 else 0
                    conn.execute("UPDATE totals SET bytes = bytes + ? WHERE id = 1", (added,))
            self._evict(conn)

    def size(self) -> int:
        """Bytes of the rows held, as counted against ``max_bytes``."""
        with self._guarded() as conn:
            (total,) = conn.execute("SELECT bytes FROM totals WHERE id = 1").fetchone()
        return int(total)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- internals -------------------------------------------------------------------------

    def _touch(self, conn: sqlite3.Connection, fingerprint: str, keys: list[str]) -> None:
        now = time.time_ns()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "UPDATE vectors SET last_used = ? WHERE fingerprint = ? AND text = ?",
                [(now, fingerprint, key) for key in keys],
            )

    def _delete(self, conn: sqlite3.Connection, fingerprint: str, keys: list[str]) -> None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            freed = 0
            for key in keys:
                row = conn.execute(
                    "DELETE FROM vectors WHERE fingerprint = ? AND text = ? RETURNING bytes",
                    (fingerprint, key),
                ).fetchone()
                freed += row[0] if row else 0
            conn.execute("UPDATE totals SET bytes = bytes - ? WHERE id = 1", (freed,))

    def _evict(self, conn: sqlite3.Connection) -> None:
        """Least recently used rows first, a chunk per transaction, until under the bound."""
        while True:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                (total,) = conn.execute("SELECT bytes FROM totals WHERE id = 1").fetchone()
                if total <= self.max_bytes:
                    return
                oldest = conn.execute(
                    "SELECT fingerprint, text, bytes FROM vectors ORDER BY last_used LIMIT ?",
                    (CHUNK,),
                ).fetchall()
                if not oldest:
                    conn.execute("UPDATE totals SET bytes = 0 WHERE id = 1")
                    return
                freed = 0
                for fingerprint, key, size in oldest:
                    conn.execute(
                        "DELETE FROM vectors WHERE fingerprint = ? AND text = ?", (fingerprint, key)
                    )
                    freed += size
                    if total - freed <= self.max_bytes:
                        break
                conn.execute("UPDATE totals SET bytes = bytes - ? WHERE id = 1", (freed,))

    @contextmanager
    def _guarded(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; a file that turns out unreadable is rebuilt."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise
                self._rebuild(str(exc))
                raise _Rebuilt from None

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            return self._set_aside(str(exc))

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _rebuild(self, why: str) -> None:
        self._conn.close()
        self._conn = self._set_aside(why)

    def _set_aside(self, why: str) -> sqlite3.Connection:
        """Move the unreadable file (and its WAL) aside and start an empty one."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns()}")
        log.warning("cache.corrupt", path=str(self.path), moved_to=str(aside), error=why)
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.replace(Path(f"{aside}{suffix}"))
        return self._connect()


class _Rebuilt(Exception):
    """The cache file was rebuilt mid-operation: the caller embeds afresh."""


def _row_bytes(key: str, blob: bytes) -> int:
    """What a row is counted as against the bound: its vector, keys and checksum."""
    return len(blob) + len(key) + 64 + 64 + 24


@dataclass
class _Counts:
    """Hits and misses of one run, shared by an engine and its ``with_options`` copies
    (the diagnosis's alternatives, the bridge's raw engine)."""

    hits: int = 0
    misses: int = 0


class CachedEngine(Closing):
    """An EmbeddingEngine that serves the vectors its cache holds for the engine's exact
    fingerprint and embeds only the misses through the real engine, in its batches."""

    def __init__(
        self,
        inner: EmbeddingEngine,
        cache: EmbeddingCache,
        counts: _Counts | None = None,
        *,
        kind: str = "",
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.uri = inner.uri
        self.options: EngineOptions = inner.options
        self._counts = counts or _Counts()
        self._kind = kind
        self._key: str | None = None

    @property
    def hits(self) -> int:
        return self._counts.hits

    @property
    def misses(self) -> int:
        return self._counts.misses

    def embed(self, texts: Sequence[str]) -> Vectors:
        if self._kind == SINGLE:
            return self._through(SINGLE, texts, self._one_at_a_time)
        return self._through(self._kind, texts, self.inner.embed, counted=True)

    def again(self, kind: str) -> CachedEngine:
        """The engine's self-check runs (``RERUN``: the same texts embedded again;
        ``SINGLE``: one text per call) kept under keys of their own, so that a rerun
        repeats the self-check's outcome without loading the model."""
        return CachedEngine(self.inner, self.cache, _Counts(), kind=kind)

    def _one_at_a_time(self, texts: Sequence[str]) -> Vectors:
        return np.concatenate([self.inner.embed([text]) for text in texts])

    def _through(
        self,
        kind: str,
        texts: Sequence[str],
        make: Callable[[Sequence[str]], Vectors],
        *,
        counted: bool = False,
    ) -> Vectors:
        """Rows of ``make(texts)``, those the cache holds under ``kind`` taken from it."""
        fingerprint = self._fingerprint_key()
        if not texts or fingerprint is None:
            self._counts.misses += len(texts) if counted else 0
            return make(texts)
        fingerprint = f"{fingerprint}:{kind}" if kind else fingerprint
        keys = [text_sha256(text) for text in texts]
        try:
            found = self.cache.get_many(fingerprint, keys)
        except _Rebuilt:
            found = {}
        missing = [i for i, key in enumerate(keys) if key not in found]
        fresh: Vectors | None = None
        if missing:
            fresh = make([texts[i] for i in missing])
            with suppress(_Rebuilt):  # the next run fills the new file
                self.cache.put_many(
                    fingerprint, [(keys[i], fresh[n]) for n, i in enumerate(missing)]
                )
        if counted:
            self._counts.hits += len(texts) - len(missing)
            self._counts.misses += len(missing)
        dims = fresh.shape[1] if fresh is not None else len(next(iter(found.values())))
        out = np.empty((len(texts), dims), dtype=np.float32)
        for i, key in enumerate(keys):
            if key in found:
                out[i] = found[key]
        if fresh is not None:
            out[missing] = fresh
        return out

    def remember(self, texts: Sequence[str], vectors: Vectors) -> None:
        """Keep vectors the real engine made outside the cache (compare's timed pass, which
        must measure the engine), so that the next run finds them."""
        fingerprint = self._fingerprint_key()
        if fingerprint is None or not texts:
            return
        keys = [text_sha256(text) for text in texts]
        with suppress(_Rebuilt):
            self.cache.put_many(fingerprint, list(zip(keys, vectors, strict=True)))

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Kept like vectors (one float32 per text, exact below 2**24): the check's
        length buckets then need no tokenizer on a rerun."""
        counts = self._through(TOKENS, texts, self._counted)
        return [int(count) for count in counts[:, 0]] if len(texts) else []

    def _counted(self, texts: Sequence[str]) -> Vectors:
        return np.asarray(self.inner.count_tokens(texts), dtype=np.float32).reshape(-1, 1)

    def with_options(self, **changes: Any) -> CachedEngine:
        return CachedEngine(self.inner.with_options(**changes), self.cache, self._counts)

    def close(self) -> None:
        self.inner.close()

    def stats(self) -> CacheStats:
        return CacheStats(True, self.hits, self.misses)

    def _fingerprint_key(self) -> str | None:
        """The key of this engine's vectors; None for an engine whose fingerprint does not
        name its model's content: it is passed through."""
        if self._key is None:
            fingerprint = self.inner.fingerprint()
            self._key = fingerprint_sha256(fingerprint) if cacheable(fingerprint) else ""
        return self._key or None


def open_cache(settings: CacheConfig, *, no_cache: bool = False) -> EmbeddingCache | None:
    """The cache ``[cache]`` asks for; None when it or ``--no-cache`` turns it off."""
    if no_cache or not settings.enabled:
        return None
    path = settings.path.expanduser() if settings.path else None
    return EmbeddingCache(path, max_bytes=settings.max_bytes)


def cached(engine: EmbeddingEngine, cache: EmbeddingCache | None) -> EmbeddingEngine:
    """``engine`` behind ``cache``, or itself when caching is off."""
    return engine if cache is None else CachedEngine(engine, cache)


def again(engine: EmbeddingEngine, kind: str) -> EmbeddingEngine:
    """``engine`` for a self-check run of ``kind`` (CachedEngine.again); the engine
    itself when it has no cache."""
    return engine.again(kind) if isinstance(engine, CachedEngine) else engine


def stats_of(engine: EmbeddingEngine) -> CacheStats:
    return engine.stats() if isinstance(engine, CachedEngine) else CacheStats(False)
