-- 0005: the engine the source's stored vectors were made with (``plan --baseline``), so a
-- rollback can re-embed the writes made since cutover into the kept copy, and
-- ``guard serve --follow`` can serve it until the cutover commits. NULL: not known.

ALTER TABLE guard_reindex_jobs ADD COLUMN baseline_uri text;
