"""Vector-store adapters, loaded by scheme from ``guard.stores.STORES``; each store's
modules carry its name (``pgvector*``, ``qdrant*``): the store class in ``pgvector`` and
``qdrant``, its re-index in ``*_reindex``, the rest split by job (catalog or collection
facts, point reads, sampling, clients).

The folder is the repository's top-level adapters/; it is importable only as
``guard.adapters`` (guard/adapters is a symlink to it), because a bare ``adapters`` would
clash with the unrelated PyPI package of that name.

Nothing here is imported eagerly: ``guard.adapters.qdrant`` needs qdrant-client and
``guard.adapters.pgvector`` needs psycopg and pgvector, and a URI pays only for its own
driver.
"""
