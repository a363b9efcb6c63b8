"""Vector-store adapters, one module per store, loaded by scheme from ``guard.stores.STORES``.

Nothing here is imported eagerly: ``adapters.qdrant`` needs qdrant-client and
``adapters.pgvector`` needs psycopg and pgvector, and a URI pays only for its own driver.
"""
