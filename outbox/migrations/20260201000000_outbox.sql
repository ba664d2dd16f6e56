-- Events waiting to be published. `seq` is assigned at insert, so per aggregate it follows commit
-- order whenever the aggregate's writers are serialized (as they are by the aggregate's row lock).
CREATE TABLE outbox_events (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               uuid NOT NULL UNIQUE,
    topic            text NOT NULL,
    aggregate_type   text NOT NULL,
    aggregate_id     text NOT NULL,
    event_type       text NOT NULL,
    payload          bytea NOT NULL,
    headers          jsonb NOT NULL DEFAULT '{}',
    dedup_key        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    last_error       text,
    lease_owner      text,
    lease_token      bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz DEFAULT now()
);

-- The claim scans unpublished events in due order.
CREATE INDEX outbox_events_due ON outbox_events (next_attempt_at, seq) WHERE next_attempt_at IS NOT NULL;
-- Per-aggregate order: "is there an older unpublished event of this aggregate?"
CREATE INDEX outbox_events_aggregate ON outbox_events (aggregate_type, aggregate_id, seq)
    WHERE next_attempt_at IS NOT NULL;
-- A business request enqueues its event once per aggregate.
CREATE UNIQUE INDEX outbox_events_dedup ON outbox_events (aggregate_type, aggregate_id, dedup_key)
    WHERE dedup_key IS NOT NULL;
-- Retention purge of kept, published events.
CREATE INDEX outbox_events_published ON outbox_events (published_at) WHERE published_at IS NOT NULL;

-- Events that failed permanently, kept for inspection, replay or discard.
CREATE TABLE outbox_dead_letters (
    id             uuid PRIMARY KEY,
    topic          text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    event_type     text NOT NULL,
    payload        bytea NOT NULL,
    headers        jsonb NOT NULL,
    dedup_key      text,
    created_at     timestamptz NOT NULL,
    attempts       int NOT NULL,
    reason         text NOT NULL,
    last_error     text NOT NULL,
    dead_at        timestamptz NOT NULL DEFAULT now()
);

-- Wake relays within milliseconds of a commit (LISTEN outbox_events); polling is the fallback.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
