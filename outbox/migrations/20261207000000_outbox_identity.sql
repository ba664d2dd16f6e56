-- This outbox's identity, made once when the outbox is created. The exactly-once relay writes it
-- into every progress record, and settles a record only when it names this outbox: a database
-- recreated under the same relay name gets a new identity, so another database's record never
-- marks its rows. A restored backup keeps the identity (it is the same outbox); its events are
-- then told apart by their ids, which the record lists too.
CREATE TABLE outbox_identity (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    one_row    boolean NOT NULL DEFAULT true UNIQUE CHECK (one_row)
);
INSERT INTO outbox_identity DEFAULT VALUES;
