-- 0001: re-index jobs, their batches (keyset ranges of source ids, leased by workers)
-- and the records a job could not embed, each with its reason.

CREATE TABLE IF NOT EXISTS guard_schema_migrations (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE guard_reindex_jobs (
    id                uuid PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- As given to `plan`, so workers can reconnect; never printed unredacted.
    source_uri        text NOT NULL,
    target_uri        text NOT NULL,
    candidate_uri     text NOT NULL,
    fingerprint       jsonb NOT NULL,
    fingerprint_hash  text NOT NULL,
    dims              integer NOT NULL CHECK (dims > 0),
    distance          text NOT NULL,
    total_records     bigint NOT NULL CHECK (total_records >= 0),
    batch_size        integer NOT NULL CHECK (batch_size > 0),
    max_attempts      integer NOT NULL CHECK (max_attempts > 0),
    window_start      time,
    window_end        time,
    max_rate          double precision CHECK (max_rate > 0),
    measured_rate     double precision,
    paused            boolean NOT NULL DEFAULT false,
    -- active: being built; cut_over: the target is live; rolled_back: the source is live
    -- again after a cutover; cleaned: the collection not live has been dropped.
    state             text NOT NULL DEFAULT 'active'
                      CHECK (state IN ('active', 'cut_over', 'rolled_back', 'cleaned')),
    cutover           jsonb,
    started_at        timestamptz,
    finished_at       timestamptz,
    CHECK ((window_start IS NULL) = (window_end IS NULL))
);

CREATE TABLE guard_reindex_batches (
    job_id            uuid NOT NULL REFERENCES guard_reindex_jobs (id) ON DELETE CASCADE,
    seq               integer NOT NULL,
    -- The batch holds the source ids in (after_id, last_id]; after_id is NULL for the
    -- first batch and last_id is NULL for the open-ended last one. jsonb keeps int ids
    -- and string ids apart.
    after_id          jsonb,
    last_id           jsonb,
    planned_records   integer NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'leased', 'done', 'failed')),
    lease_owner       text,
    lease_expires_at  timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_error        text,
    written           integer NOT NULL DEFAULT 0,
    skipped           integer NOT NULL DEFAULT 0,
    done_at           timestamptz,
    PRIMARY KEY (job_id, seq)
);

CREATE INDEX guard_reindex_batches_open ON guard_reindex_batches (job_id, status, seq);

CREATE TABLE guard_reindex_skipped (
    job_id       uuid NOT NULL REFERENCES guard_reindex_jobs (id) ON DELETE CASCADE,
    record_id    jsonb NOT NULL,
    reason       text NOT NULL,
    detail       text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, record_id)
);
