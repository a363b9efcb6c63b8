"""Re-index jobs: batched, resumable, verifiable, with an atomic cutover and rollback.

state     the state database (PostgreSQL) and its migrations
jobs      a job's row, read by id or prefix
plan      plan a job (measured rate, keyset batches, empty target)
status    status, pause and resume
ledger    the batch ledger: leases matched on their token, skipped records
embedding embed a batch, skipping what the engine refuses
worker    lease batches; read, embed and write them in a pipeline
patience  how long a worker waits for a server that went away (a pure policy)
waiting   the waiting itself: retries on a fresh connection, the stop event
verify    prove the target complete and right
catchup   apply source changes made since the job started
switch    cutover, rollback, cleanup (the store's part: guard.stores.ReindexStore)
cli       the ``guard reindex`` commands (mounted by guard.cli)
"""
