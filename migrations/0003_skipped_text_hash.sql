-- 0003: the hash of the text a skipped record had when it was skipped, so verify can
-- accept a skip only while the source still holds that same text (NULL: no text).

ALTER TABLE guard_reindex_skipped ADD COLUMN text_hash text;
