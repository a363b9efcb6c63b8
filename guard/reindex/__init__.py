"""Re-index jobs: batched, resumable, verifiable, with an atomic cutover and rollback.

state     the state database (PostgreSQL) and its migrations
jobs      plan a job (batches, empty target), status, pause and resume
worker    lease batches; read, embed and write them in a pipeline
verify    prove the target complete and right
catchup   apply source changes made since the job started
switch    cutover, rollback, cleanup (the store's part: guard.stores.ReindexStore)
cli       the ``guard reindex`` commands (mounted by guard.cli)
"""
