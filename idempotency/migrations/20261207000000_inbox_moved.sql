-- The consumer inbox moved to the `inbox` crate, as the table `inbox` (created by
-- `inbox::MIGRATOR`); this crate keeps the HTTP layer only. `idempotency_inbox`, created by
-- `20260102000001_idempotency_inbox`, goes, and no record is lost (a lost record would let a
-- redelivered event be applied again):
--
-- - with no `inbox` yet, a table holding records becomes `inbox` (the `inbox` migrator then keeps
--   it), and an empty one is dropped (a database that only serves HTTP ends with no inbox);
-- - with `inbox` there (its migrator ran first), the rows are copied over and the table dropped.
--
-- `inbox`'s own first migration does the same from its side, so the two migrators converge
-- whichever runs first.
DO $$
BEGIN
    IF to_regclass('idempotency_inbox') IS NOT NULL THEN
        IF to_regclass('inbox') IS NULL THEN
            IF EXISTS (SELECT FROM idempotency_inbox) THEN
                ALTER TABLE idempotency_inbox RENAME TO inbox;
                -- Renaming the primary key's index renames the constraint too.
                ALTER INDEX IF EXISTS idempotency_inbox_pkey RENAME TO inbox_pkey;
                ALTER INDEX IF EXISTS idempotency_inbox_received_at RENAME TO inbox_received_at;
            ELSE
                DROP TABLE idempotency_inbox;
            END IF;
        ELSE
            INSERT INTO inbox (consumer, event_id, received_at)
            SELECT consumer, event_id, received_at FROM idempotency_inbox
            ON CONFLICT (consumer, event_id) DO NOTHING;
            DROP TABLE idempotency_inbox;
        END IF;
    END IF;
END
$$;
