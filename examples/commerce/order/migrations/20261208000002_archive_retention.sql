-- The archiver deletes archived orders past their retention, oldest first.
CREATE INDEX orders_archive_archived ON orders_archive (archived_at);
