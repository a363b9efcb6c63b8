-- 0006: where the job's next free stretch of time under --max-rate begins. Before it
-- embeds a chunk, a worker or Ray actor moves it on by records / max_rate seconds and
-- sleeps until the stretch it took begins, so the limit holds for the whole job, not
-- for each worker. NULL: nothing taken yet (or no limit).

ALTER TABLE guard_reindex_jobs ADD COLUMN rate_next_at timestamptz;
