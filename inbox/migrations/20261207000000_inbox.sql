-- The consumer inbox: one row per (consumer, event id) whose effect was applied.
--
-- Until this crate existed, the inbox was the `idempotency` crate's table `idempotency_inbox`. A
-- database migrated by it is adopted first, so no record is lost (a lost record would let a
-- redelivered event be applied again): the old table becomes `inbox`, or, when `inbox` already
-- exists, its rows are copied over and it is dropped. `idempotency`'s own migration
-- `20261207000000_inbox_moved` does the same from its side, so the two migrators converge
-- whichever runs first.
DO $$
BEGIN
    IF to_regclass('idempotency_inbox') IS NOT NULL THEN
        IF to_regclass('inbox') IS NULL THEN
            ALTER TABLE idempotency_inbox RENAME TO inbox;
            -- Renaming the primary key's index renames the constraint too.
            ALTER INDEX IF EXISTS idempotency_inbox_pkey RENAME TO inbox_pkey;
            ALTER INDEX IF EXISTS idempotency_inbox_received_at RENAME TO inbox_received_at;
        ELSE
            INSERT INTO inbox (consumer, event_id, received_at)
            SELECT consumer, event_id, received_at FROM idempotency_inbox
            ON CONFLICT (consumer, event_id) DO NOTHING;
            DROP TABLE idempotency_inbox;
        END IF;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS inbox (
    consumer    text NOT NULL,
    event_id    text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Retention purge, oldest first.
CREATE INDEX IF NOT EXISTS inbox_received_at ON inbox (received_at);
