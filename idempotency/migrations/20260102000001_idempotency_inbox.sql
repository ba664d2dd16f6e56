-- The consumer inbox: one row per (consumer, event id) whose effect was applied.
CREATE TABLE idempotency_inbox (
    consumer    text NOT NULL,
    event_id    text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Retention purge, oldest first.
CREATE INDEX idempotency_inbox_received_at ON idempotency_inbox (received_at);
