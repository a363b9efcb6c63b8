"""The sample contract on a store large enough to be sampled, not read whole: every
prefix of a sample spreads over the whole id range (guard/stores.py, VectorStore.sample).

`guard check` reads the sample round by round as growing prefixes; a sample returned in
id order would let the first rounds, and with them the verdict, see only the oldest
records. Each store kind is filled once per id kind with 20,000 records, and each
sampling method the store has is exercised (the id-list method is switched off by
lowering its size limit, as a store larger than the limit would).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from fixtures_stores import STORE_KINDS, make_batch, qdrant_url_uri
from scipy.stats import kstest

from guard.records import RecordId, StoreInfo
from guard.stores import VectorStore, open_store

RECORDS = 20_000
PREFIXES = (100, 200, 400)


@pytest.fixture(
    scope="module", params=[(kind, ids) for kind in STORE_KINDS for ids in ("int", "uuid")]
)
def big_store(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[VectorStore, str, dict[RecordId, float]]]:
    """(store, its kind, each id's rank in the store's id order as a share of the store)."""
    kind, id_kind = request.param
    name = f"t_{uuid.uuid4().hex[:12]}"
    folder = Path(
        tempfile.mkdtemp(prefix="vmg-big-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    if kind == "qdrant-local":
        uri = f"qdrant+local:{folder}?{urlencode({'collection': name})}"
    elif kind == "qdrant-url":
        uri = qdrant_url_uri(name)
    else:
        dsn: str = request.getfixturevalue("pg_dsn")
        uri = f"{dsn}{'&' if '?' in dsn else '?'}{urlencode({'table': name})}"
    store = open_store(uri)
    batch = make_batch(RECORDS, 4, uuids=id_kind == "uuid")
    like = StoreInfo(
        "src", RECORDS, 4, "cosine", "plain", "text", None, details={"id_type": id_kind}
    )
    store.create(dims=4, distance="cosine", like=like)
    for start in range(0, RECORDS, 2000):
        store.upsert(batch.take(range(start, start + 2000)))
    order = sorted(batch.ids, key=lambda i: (0, i, "") if isinstance(i, int) else (1, 0, str(i)))
    yield store, kind, {record_id: rank / RECORDS for rank, record_id in enumerate(order)}
    store.drop()
    store.close()
    shutil.rmtree(folder, ignore_errors=True)


def expected_method(kind: str, ids: dict[RecordId, float], listed: bool) -> str:
    if listed:
        return "uniform_id_list"
    if isinstance(next(iter(ids)), int):
        return "uniform_ids"
    return "tablesample_system" if kind == "pgvector" else "qdrant_random"


@pytest.mark.parametrize(
    ("listed", "size"),
    [(True, 400), (True, 12_000), (False, 400)],
    ids=["id-list", "id-list-most-of-the-store", "without-id-list"],
)
def test_every_prefix_of_a_sample_spreads_over_the_whole_id_range(
    big_store: tuple[VectorStore, str, dict[RecordId, float]],
    listed: bool,
    size: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first 100, 200 and 400 records of a sample are uniform over the id range: a
    Kolmogorov-Smirnov test of their ranks, and the share among the top 30% of ids."""
    store, kind, rank = big_store
    if not listed:
        monkeypatch.setattr(sys.modules[type(store).__module__], "ID_LIST_MAX", 0)

    np.random.seed(3)  # qdrant_random in local mode draws from numpy's global generator
    drawn = store.sample(size, seed=3)

    assert drawn.method == expected_method(kind, rank, listed)
    assert len(set(drawn.ids)) == len(drawn.ids) == size
    for prefix in PREFIXES:
        ranks = np.array([rank[record_id] for record_id in drawn.ids[:prefix]])
        assert kstest(ranks, "uniform").pvalue > 0.01, (prefix, np.sort(ranks)[[0, -1]])
        assert 0.15 <= float(np.mean(ranks >= 0.7)) <= 0.45, prefix
