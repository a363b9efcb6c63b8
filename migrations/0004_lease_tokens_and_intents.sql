-- 0004: a token for each lease of a batch, so a worker whose lease was taken over can no
-- longer finish, fail or renew it; and the intent of a switch (cutover, rollback,
-- cleanup), recorded before any store is touched, so that a run after a crash finishes
-- or undoes it by what the served name serves then.

ALTER TABLE guard_reindex_batches ADD COLUMN lease_token uuid;

-- {"step": "cutover" | "rollback" | "cleanup", "from": the state before it}; NULL: none.
ALTER TABLE guard_reindex_jobs ADD COLUMN intent jsonb;
