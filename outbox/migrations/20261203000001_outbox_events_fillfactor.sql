-- Every event is updated exactly once before it is deleted or kept: its claim sets the lease
-- columns, none of them indexed. A page filled to half has room for each of its rows' claimed
-- versions, so a claim is a HOT update: no new entries in the table's five indexes, and the
-- claim's cost halves (docs/benchmarks.md). Pages written before this migration keep their fill.
ALTER TABLE outbox_events SET (fillfactor = 50);
