-- 0002: the drift monitor's history (one row per watch run), each watch's alert state
-- and its "written since the last run" watermark.

CREATE TABLE guard_monitor_runs (
    id              bigserial PRIMARY KEY,
    watch           text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    status          text NOT NULL CHECK (status IN ('ok', 'drift', 'error')),
    seed            bigint NOT NULL,
    -- Per-record check of a seeded sample; NULL where the run failed before measuring.
    sample_size     integer,
    cosine_p1       double precision,
    cosine_median   double precision,
    bound_upper     double precision,
    bound_lower     double precision,
    overlap         double precision,
    -- Population check of the records written since the previous run (NULL: not run).
    new_records     integer,
    population      jsonb,
    reasons         jsonb NOT NULL DEFAULT '[]',
    error           text,
    alert           text CHECK (alert IN ('sent', 'failed', 'none'))
);

CREATE INDEX guard_monitor_runs_by_watch ON guard_monitor_runs (watch, started_at DESC);

CREATE TABLE guard_monitor_watches (
    watch           text PRIMARY KEY,
    -- The status the last delivered alert announced ('ok' before any): an alert goes out
    -- when a run's status differs, and a failed delivery is retried by the next run.
    alerted_status  text NOT NULL DEFAULT 'ok' CHECK (alerted_status IN ('ok', 'drift', 'error')),
    -- Integer ids: the largest id seen by the last run; later records are new.
    max_int_id      bigint,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- String ids (UUIDs...) have no order that follows writes: the ids seen so far.
CREATE TABLE guard_monitor_seen_ids (
    watch           text NOT NULL,
    record_id       text NOT NULL,
    PRIMARY KEY (watch, record_id)
);
